"""The tinker-compatible training service, driven by the official tinker SDK over the loopback address, on the
tiny built-in model: SFT, RL with importance sampling, sampling from saved weights, save and load of state,
refusals that come back as errors (never a hang), runs in $TWINKLE_HOME the dashboard shows, API keys, zstd bodies,
and a client run as a managed run that pause and stop act on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tinker")
import tinker  # noqa: E402
from tinker import types  # noqa: E402

from twinkle_trainer.protocol import RunMeta, RunPaths, read_meta  # noqa: E402

from conftest import REPO, environment, kill_live_runs, wait_for  # noqa: E402

BASE = "builtin:tiny-llama"
TEXT = "the quick brown fox jumps over the lazy dog. " * 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, home: Path, *extra: str, key: str | None = None, host: str = "127.0.0.1") -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://{host}:{self.port}"
        env = {**os.environ, "TWINKLE_HOME": str(home), "PYTHONPATH": str(REPO)}
        env.pop("TWINKLE_RUN_ID", None)
        if key:
            env["TWINKLE_SERVICE_API_KEY"] = key
        self.log = open(home / f"service-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "twinkle_trainer.service", "--host", host, "--port",
                                      str(self.port), *extra], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> Server:
        def up() -> bool:
            assert self.proc.poll() is None, (self.home / f"service-{self.port}.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, timeout=60, what="the service to answer")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("service-home")
    server = Server(home, "--threads", "1").wait_ready()  # one thread: the same numbers on every run
    with environment(TINKER_BASE_URL=server.url, TINKER_API_KEY="tml-local-tests", TINKER_TELEMETRY="0",
                     TWINKLE_HOME=str(home)):
        yield server
    server.stop()
    kill_live_runs(home)


@pytest.fixture(scope="module")
def client(service: Server) -> Iterator[tinker.ServiceClient]:
    sc = tinker.ServiceClient(base_url=service.url)
    yield sc
    sc.close("success").result(timeout=30)  # its heartbeats stop before the service does (else they complain)


def client_home() -> Path:
    return Path(os.environ["TWINKLE_HOME"])


def sft_datum(tokenizer: object, text: str = TEXT) -> types.Datum:
    ids = tokenizer.encode(text)  # type: ignore[attr-defined]
    return types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                       loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64),
                                       "weights": np.ones(len(ids) - 1, dtype=np.float32)})


def mean_loss(result: types.ForwardBackwardOutput, datum: types.Datum) -> float:
    return result.metrics["loss:sum"] / float(np.sum(datum.loss_fn_inputs["weights"].to_numpy()))


def run_id_of(home: Path, model_id: str) -> str:
    """The run a training client writes into (its meta names the SDK's model id)."""
    for meta_path in home.glob("*/meta.json"):
        if json.loads(meta_path.read_text()).get("config", {}).get("tinker_model_id") == model_id:
            return meta_path.parent.name
    raise AssertionError(f"no run for {model_id}")


def run_of(home: Path, model_id: str) -> RunMeta:
    return read_meta(RunPaths(home / run_id_of(home, model_id)))


def metrics_of(home: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (home / run_id / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------- training
def test_sft_loss_falls_and_the_run_records_it(client: tinker.ServiceClient, service: Server) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=8, seed=0,
                                            user_metadata={"experiment": "sft"}).result()
    datum = sft_datum(tc.get_tokenizer())
    losses = []
    for _ in range(25):
        fb = tc.forward_backward([datum], "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=3e-3))
        losses.append(mean_loss(fb.result(timeout=60), datum))
        opt.result(timeout=60)
    assert losses[-1] < 0.6 * losses[0], losses
    meta = run_of(service.home, tc.model_id)
    assert meta.status == "running" and meta.model_id == BASE
    assert meta.config["lora"]["rank"] == 8 and meta.config["user_metadata"] == {"experiment": "sft"}
    assert meta.display_name == f"sft · {BASE.removeprefix('builtin:')} r8"  # named from what the client says of itself
    assert meta.run_id.startswith("tinker-sft-")
    assert meta.supervisor_pid == service.proc.pid and meta.pid == os.getpid()  # the client is the process
    lines = metrics_of(service.home, run_id_of(service.home, tc.model_id))
    assert [m["step"] for m in lines] == list(range(1, 26))
    assert lines[0]["loss"] == pytest.approx(losses[0], rel=1e-5) and lines[-1]["loss"] == pytest.approx(losses[-1],
                                                                                                       rel=1e-5)
    assert all(m["tokens/s"] > 0 and m["step time"] > 0 and m["learning rate"] == 3e-3 for m in lines)
    info = tc.get_info()
    assert info.lora_rank == 8 and info.model_data.model_name == BASE


def test_an_rl_loop_with_importance_sampling_changes_the_adapter(client: tinker.ServiceClient,
                                                                 service: Server) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=1).result()
    tok = tc.get_tokenizer()
    prompt = tok.encode("say a: ")
    first_path = tc.save_weights_for_sampler(name="rl-0").result(timeout=60).path
    sampler = client.create_sampling_client(model_path=first_path).result()
    rewards = []
    for step in range(4):
        out = sampler.sample(types.ModelInput.from_ints(prompt), num_samples=8,
                             sampling_params=types.SamplingParams(max_tokens=6, temperature=1.0, seed=step,
                                                                  stop=[])).result(timeout=120)
        texts = [tok.decode(s.tokens) for s in out.sequences]  # reward: the share of lowercase letters
        scores = np.array([sum(c.islower() for c in text) / max(1, len(text)) for text in texts])
        assert scores.std() > 0  # a learning signal: the group's rewards differ
        rewards.append(float(scores.mean()))
        advantages = scores - scores.mean()
        data = []
        for seq, adv in zip(out.sequences, advantages, strict=True):
            assert len(seq.tokens) == 6 and seq.stop_reason == "length" and seq.logprobs is not None
            full = prompt + list(seq.tokens)
            n = len(full) - 1
            sampled_lp = np.zeros(n, dtype=np.float32)
            sampled_lp[len(prompt) - 1 :] = seq.logprobs
            adv_tok = np.zeros(n, dtype=np.float32)
            adv_tok[len(prompt) - 1 :] = adv
            data.append(types.Datum(model_input=types.ModelInput.from_ints(full[:-1]),
                                    loss_fn_inputs={"target_tokens": np.array(full[1:], dtype=np.int64),
                                                    "logprobs": sampled_lp, "advantages": adv_tok}))
        result = tc.forward_backward(data, "importance_sampling").result(timeout=120)
        if step == 0:  # on-policy: the trainer's log-probabilities are the sampler's (same weights)
            for datum, output in zip(data, result.loss_fn_outputs, strict=True):
                trained = output["logprobs"].to_numpy()[len(prompt) - 1 :]
                sampled = datum.loss_fn_inputs["logprobs"].to_numpy()[len(prompt) - 1 :]
                np.testing.assert_allclose(trained, sampled, atol=2e-4)
            assert result.metrics["loss:sum"] == pytest.approx(0.0, abs=1e-4)  # advantages sum to 0, ratio 1
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result(timeout=60)
        sampler = tc.save_weights_and_get_sampling_client().result()  # ephemeral weights: not listed, gone with the session
    tc.save_weights_for_sampler(name="rl-4").result(timeout=60)
    assert all(".ephemeral" not in c.tinker_path for c in tinker.RestClient(base_url=service.url).list_checkpoints(
        tc.model_id).result().checkpoints)
    from safetensors.numpy import load_file

    run = service.home / run_id_of(service.home, tc.model_id)
    before = load_file(str(run / "checkpoints/tinker/sampler_weights/rl-0/adapter_model.safetensors"))
    after = load_file(str(run / "checkpoints/tinker/sampler_weights/rl-4/adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[k], after[k]) for k in before)
    assert all(0.0 <= r <= 1.0 for r in rewards)


def test_ppo_clips_the_ratio(client: tinker.ServiceClient) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=2).result()
    ids = tc.get_tokenizer().encode("abcdefgh")
    n = len(ids) - 1
    current = tc.forward([types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                                      loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64)})],
                         "cross_entropy").result(timeout=60).loss_fn_outputs[0]["logprobs"].to_numpy()
    old = current - 1.0  # the ratio is e (2.72) on every token: far above 1.2
    datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64),
                                        "logprobs": old.astype(np.float32), "advantages": np.ones(n, np.float32)})
    ppo = tc.forward([datum], "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).result(timeout=60)
    plain = tc.forward([datum], "importance_sampling").result(timeout=60)
    assert ppo.metrics["loss:sum"] == pytest.approx(-1.2 * n, rel=1e-4)
    assert plain.metrics["loss:sum"] == pytest.approx(-np.e * n, rel=1e-3)


# ---------------------------------------------------------------------- sampling and state
def test_a_sample_the_caller_cancels_is_cancelled_on_the_service(client: tinker.ServiceClient,
                                                                   service: Server) -> None:
    """The SDK cancels an abandoned sample on the service (/cancel_future), not when its heartbeats stop."""
    sampler = client.create_sampling_client(base_model=BASE).result()
    prompt = types.ModelInput.from_ints([1, 2, 3])
    # about 3 s of work each here: after a second the first runs and the others wait behind it
    slow = [sampler.sample(prompt, 64, types.SamplingParams(max_tokens=400, temperature=1.0)) for _ in range(3)]
    time.sleep(1.0)  # sent and polled (a cancel before the request leaves the client needs no word to the service)
    for f in slow:
        f.future().cancel()
    log = service.home / f"service-{service.port}.log"
    wait_for(lambda: "skipped: cancelled before it ran" in log.read_text(), timeout=60, what="a queued one skipped")
    assert log.read_text().count("cancelled by its client") >= 2
    # the service goes on serving this client
    assert len(sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2)).result(timeout=60).sequences) == 1


def test_sampling_from_saved_weights(client: tinker.ServiceClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinker.resources.futures import AsyncFuturesResource

    polls: list[object] = []
    batched = AsyncFuturesResource.retrieve_multi

    async def counted(self: object, **kw: object) -> object:
        response = await batched(self, **kw)  # type: ignore[arg-type]
        polls.append(response)
        return response

    monkeypatch.setattr(AsyncFuturesResource, "retrieve_multi", counted)
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=3).result()
    tok = tc.get_tokenizer()
    datum = sft_datum(tok)
    for _ in range(5):
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-2))
    path = tc.save_weights_for_sampler(name="after-5").result(timeout=60).path
    assert path == f"tinker://{run_id_of(client_home(), tc.model_id)}/sampler_weights/after-5"
    sampler = client.create_sampling_client(model_path=path).result()
    prompt = types.ModelInput.from_ints(tok.encode("the quick"))
    greedy = types.SamplingParams(max_tokens=8, temperature=0.0)
    a = sampler.sample(prompt, 1, greedy).result(timeout=60).sequences[0]
    b = sampler.sample(prompt, 1, greedy).result(timeout=60).sequences[0]
    assert a.tokens == b.tokens and len(a.tokens) <= 8
    seeded = types.SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    assert sampler.sample(prompt, 3, seeded).result(timeout=60).sequences[0].tokens == \
        sampler.sample(prompt, 3, seeded).result(timeout=60).sequences[0].tokens
    # compute_logprobs is the prompt's log-probabilities under the saved weights: the trainer's, token by token
    full = datum.model_input.to_ints()
    lp = sampler.compute_logprobs(types.ModelInput.from_ints(full)).result(timeout=60)
    trained = tc.forward([datum], "cross_entropy").result(timeout=60).loss_fn_outputs[0]["logprobs"].to_numpy()
    assert lp[0] is None
    np.testing.assert_allclose(np.array(lp[1:], dtype=np.float32), trained[:-1], atol=2e-4)
    # stop strings end a completion and say so
    stopped = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=30, temperature=1.0, seed=1,
                                                             stop=[" "])).result(timeout=60)
    for seq in stopped.sequences:
        text = str(tok.decode(seq.tokens))
        assert (seq.stop_reason == "stop" and text.endswith(" ")) or (seq.stop_reason == "length"
                                                                        and len(seq.tokens) == 30)
    # the SDK learned of finished samples from the batched retrieve (retrieve_futures), not one poll per sample
    assert sum(len(p.completions) for p in polls) >= 6  # type: ignore[attr-defined,misc]


def test_save_and_load_state_resume_to_the_same_loss(client: tinker.ServiceClient, service: Server) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=8, seed=4).result()
    datum = sft_datum(tc.get_tokenizer())
    adam = types.AdamParams(learning_rate=5e-3)
    for _ in range(3):
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(adam)
    path = tc.save_state("three").result(timeout=60).path
    assert path == f"tinker://{run_id_of(service.home, tc.model_id)}/weights/three"
    assert run_of(service.home, tc.model_id).last_checkpoint.tinker_path == path
    # one more step on the original
    tc.forward_backward([datum], "cross_entropy")
    tc.optim_step(adam).result(timeout=60)
    expected = mean_loss(tc.forward([datum], "cross_entropy").result(timeout=60), datum)
    # a new client from the state, with the optimizer: the same step gives the same loss
    resumed = client.create_training_client_from_state_with_optimizer(path).result()
    resumed.forward_backward([datum], "cross_entropy")
    resumed.optim_step(adam).result(timeout=60)
    assert mean_loss(resumed.forward([datum], "cross_entropy").result(timeout=60), datum) == \
        pytest.approx(expected, rel=1e-5)
    # load_state into an existing client: weights only, then the optimizer too
    other = client.create_lora_training_client(base_model=BASE, rank=8, seed=99).result()
    with pytest.warns(FutureWarning):  # deprecated in the SDK, still used by scripts
        other.load_state(path).result(timeout=60)
    weights_only = mean_loss(other.forward([datum], "cross_entropy").result(timeout=60), datum)
    at_save = mean_loss(resumed.forward([datum], "cross_entropy").result(timeout=60), datum)
    assert weights_only != pytest.approx(at_save)  # `resumed` has taken a step since
    fresh = client.create_training_client_from_state(path).result()
    assert mean_loss(fresh.forward([datum], "cross_entropy").result(timeout=60), datum) == \
        pytest.approx(weights_only, rel=1e-6)
    listed = tinker.RestClient(base_url=service.url).list_checkpoints(tc.model_id).result()
    assert {c.tinker_path for c in listed.checkpoints} == {path}


# ---------------------------------------------------------------------- refusals
def test_refusals_are_errors_not_hangs(client: tinker.ServiceClient) -> None:
    started = time.monotonic()
    with pytest.raises(Exception, match="rank 1024 is not supported"):  # tinker's ranks go up to 128 (issue 23)
        client.create_lora_training_client(base_model=BASE, rank=1024).result(timeout=30)
    with pytest.raises(Exception, match="unknown base model 'builtin:nope'"):
        client.create_lora_training_client(base_model="builtin:nope", rank=8).result(timeout=30)
    with pytest.raises(Exception, match="not available offline"):
        client.create_lora_training_client(base_model="Org/DoesNotExist", rank=8).result(timeout=30)
    tc = client.create_lora_training_client(base_model=BASE, rank=4).result()
    datum = sft_datum(tc.get_tokenizer())
    with pytest.raises(Exception, match="unknown loss function 'dpo'"):  # dro is one of the SDK's losses now
        tc.forward_backward([datum], "dpo").result(timeout=30)  # type: ignore[arg-type]
    bad = types.Datum(model_input=datum.model_input, loss_fn_inputs={**datum.loss_fn_inputs,
                                                                      "mask": np.ones(3, np.float32)})
    with pytest.raises(Exception, match=r"does not take loss_fn_inputs \['mask'\]"):
        tc.forward_backward([bad], "cross_entropy").result(timeout=30)
    assert time.monotonic() - started < 60


def test_a_zstd_body_and_a_garbled_one(service: Server, tmp_path: Path) -> None:
    """The SDK compresses forward_backward when the service asks (--zstd); a body that is neither protobuf nor
    zstd gets a clear 400."""
    zstd_server = Server(tmp_path, "--zstd").wait_ready()
    try:
        sc = tinker.ServiceClient(base_url=zstd_server.url)
        tc = sc.create_lora_training_client(base_model=BASE, rank=4).result()
        datum = sft_datum(tc.get_tokenizer())
        assert tc.forward_backward([datum], "cross_entropy").result(timeout=60).metrics["loss:sum"] > 0
        request = urllib.request.Request(f"{zstd_server.url}/api/v1/forward_backward", data=b"\x28\xb5\x2f\xfdjunk",
                                         headers={"Content-Type": "application/x-protobuf",
                                                  "Content-Encoding": "zstd"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 400 and "zstd" in json.loads(err.value.read())["error"]
        sc.close("success").result(timeout=30)  # no heartbeats left to a stopped service
    finally:
        zstd_server.stop()
        kill_live_runs(tmp_path)


def test_api_keys(tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "twinkle_trainer.service", "--host", "0.0.0.0", "--port",
                              str(free_port())], env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "set an API key" in refused.stderr
    keyed = Server(tmp_path, key="tml-secret-key-1234").wait_ready()
    try:
        with pytest.raises(tinker.AuthenticationError):
            tinker.RestClient(base_url=keyed.url, api_key="tml-wrong-key-0000").get_server_capabilities().result()
        rest = tinker.RestClient(base_url=keyed.url, api_key="tml-secret-key-1234")
        assert rest.get_server_capabilities().result().supported_models
    finally:
        keyed.stop()
    assert "tml-secret-key-1234" not in (tmp_path / f"service-{keyed.port}.log").read_text()


# ---------------------------------------------------------------------- runs
CLIENT = """
import os, numpy as np, tinker
from tinker import types
sc = tinker.ServiceClient()
tc = sc.create_lora_training_client(base_model="builtin:tiny-llama", rank=4).result()
ids = tc.get_tokenizer().encode("hello hello hello hello")
d = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={"target_tokens": np.array(ids[1:]), "weights": np.ones(len(ids) - 1, np.float32)})
print("model", tc.model_id, flush=True)
for step in range(int(os.environ.get("STEPS", "100000"))):
    tc.forward_backward([d], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
sc.close("success").result()  # a finished client says so (issue 23: an unclosed session is not a success)
print("done", flush=True)
"""


def client_env(service: Server) -> dict[str, str]:
    env = {**os.environ, "TINKER_BASE_URL": service.url, "TINKER_API_KEY": "tml-local-tests",
           "TINKER_TELEMETRY": "0", "TWINKLE_HOME": str(service.home), "PYTHONPATH": str(REPO)}
    env.pop("TWINKLE_RUN_ID", None)
    return env


def steps_of(home: Path, run_id: str) -> int:
    path = home / run_id / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_pause_resume_and_stop_act_on_the_client(service: Server, tmp_path: Path) -> None:
    from twinkle_tui.process.controller import ProcessController

    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.Popen([sys.executable, str(script)], env=client_env(service), stdout=subprocess.PIPE,
                            text=True)
    try:
        run_id = run_id_of(service.home, proc.stdout.readline().split()[1])
        wait_for(lambda: steps_of(service.home, run_id) > 3, timeout=60, what="steps")
        ctl = ProcessController(service.home, grace=5)
        ctl.pause(run_id)
        assert read_meta(RunPaths(service.home / run_id)).status == "paused"
        time.sleep(0.5)
        paused_at = steps_of(service.home, run_id)
        time.sleep(1.5)
        assert steps_of(service.home, run_id) <= paused_at + 1  # one request may have been in flight
        ctl.resume(run_id)
        wait_for(lambda: steps_of(service.home, run_id) > paused_at + 3, timeout=60, what="steps after resume")
        from twinkle_tui.commands import Session
        from twinkle_tui.commands.runs import _stop_confirm
        from twinkle_tui.runs.store import RunStore

        asked = _stop_confirm(Session(RunStore(service.home), ctl), {"run_id": run_id})  # says what stop does here
        assert "client of the training service" in asked.detail and "checkpoint" not in asked.detail
        ctl.stop(run_id)
        proc.wait(timeout=30)
        wait_for(lambda: read_meta(RunPaths(service.home / run_id)).status == "stopped", timeout=30, what="the run to stop")
        assert read_meta(RunPaths(service.home / run_id)).end_time
    finally:
        proc.kill()


def test_a_managed_client_writes_into_its_own_run(service: Server, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**client_env(service), "STEPS": "5"}
    done = subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(script), "--run-id", "cookbook-run"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    meta = read_meta(RunPaths(service.home / "cookbook-run"))  # the training client wrote into the managed run
    assert meta.config["tinker_model_id"] in done.stdout
    assert meta.status == "completed" and meta.model_id == BASE and meta.config["source"] == "tinker service"
    assert [m["step"] for m in metrics_of(service.home, "cookbook-run")] == [1, 2, 3, 4, 5]


async def test_the_dashboard_shows_a_service_run(client: tinker.ServiceClient, service: Server) -> None:
    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp
    from twinkle_tui.ui.widgets.charts import ChartGrid
    from twinkle_tui.ui.widgets.status_bar import RunStatusBar

    tc = client.create_lora_training_client(base_model=BASE, rank=4).result()
    datum = sft_datum(tc.get_tokenizer())
    for _ in range(4):
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
    run_id = run_id_of(service.home, tc.model_id)
    app = TwinkleApp(home=service.home, run_id=run_id, watch=False, data_interval=0.0,
                     gpu_probe=lambda: GpuSnapshot(error="no GPU"), monitor_interval=None)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not app.chart_grid.charts():
            await pilot.pause(0.1)
        status = str(app.query_one(RunStatusBar).render())
        assert "running" in status and "step 4" in status and run_id in status
        metrics = [c.metric for c in app.query_one(ChartGrid).charts()]
        assert "loss" in metrics and "grad_norm" in metrics


async def test_the_agent_starts_and_stops_the_service_as_a_run(tmp_path: Path) -> None:
    import twinkle_tui.agent.tools  # noqa: F401  (registers the agent's tools)
    from twinkle_tui.commands import Confirmation, Session
    from twinkle_tui.commands.runner import CommandRunner
    from twinkle_tui.process.controller import ProcessController
    from twinkle_tui.runs.store import RunStore

    asked: list[Confirmation] = []

    async def yes(c: Confirmation) -> bool:
        asked.append(c)
        return True

    home = tmp_path / "home"
    session = Session(RunStore(home), ProcessController(home))
    runner = CommandRunner(session, yes)
    refused = await runner.run("start_server", {"kind": "training", "model": "x"})
    assert not refused.ok and "takes no model" in refused.text and not asked
    port = free_port()
    started = await runner.run("start_server", {"port": port})
    assert started.ok and asked and asked[0].title == "Start the training service?", started.text
    run_id = next(p.name for p in home.iterdir() if p.name.startswith(f"service-{port}"))
    url = f"http://127.0.0.1:{port}/api/v1/healthz"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="the agent's service to answer")
        meta = read_meta(RunPaths(home / run_id))
        assert meta.status == "running" and meta.service == {"url": f"http://127.0.0.1:{port}", "sampler": "hf",
                                                             "sessions": 0, "clients": 0, "requests_per_minute": 0}
        from twinkle_tui.gpu import GpuSnapshot
        from twinkle_tui.ui.app import TwinkleApp

        app = TwinkleApp(home=home, run_id=run_id, watch=False, data_interval=0.0,
                         gpu_probe=lambda: GpuSnapshot(error="no GPU"), monitor_interval=None)
        async with app.run_test(size=(160, 48)) as pilot:  # the service serves: no "waiting for the first step"
            await pilot.pause(0.5)
            shown = str(app.waiting.render())
        assert f"tinker training service: serving at http://127.0.0.1:{port} · 0 open sessions · 0 clients" in shown, shown
        stopped = await runner.run("shutdown_server", {"name": "training"})
        assert stopped.ok, stopped.text
        wait_for(lambda: read_meta(RunPaths(home / run_id)).status == "stopped", timeout=30,
                 what="the service run to be stopped")
        assert not up()
        from twinkle_tui.commands.runs import _resume_confirm

        again = _resume_confirm(session, {"run_id": run_id})  # r on a stopped service: start it again, said so
        assert again is not None and again.title == f"Start the training service {run_id} again?"
    finally:
        kill_live_runs(home)


def test_twinkle_tui_serve_follows_the_service_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "TWINKLE_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TWINKLE_RUN_ID", None)
    env.pop("TWINKLE_SERVICE_API_KEY", None)
    env.pop("TINKER_API_KEY", None)  # serve takes a key from there too (issue 26); this one has none
    refused = subprocess.run([sys.executable, "-m", "twinkle_tui", "serve", "--host", "0.0.0.0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "set an API key" in refused.stderr
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "twinkle_tui", "serve", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        service = Server.__new__(Server)
        service.home, service.port, service.url = home, port, f"http://127.0.0.1:{port}"
        service.proc = serve  # type: ignore[assignment]
        service.wait_ready()
        done = subprocess.run([sys.executable, "-c", CLIENT], env={**client_env(service), "STEPS": "2"},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        model_id = done.stdout.split()[1]
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
            kill_live_runs(home)
    assert serve.returncode == 130, out  # headless: interrupted by the user (README, exit codes)
    assert "Traceback" not in out
    service_run = next(p for p in home.iterdir() if p.name.startswith(f"service-{port}"))
    assert read_meta(RunPaths(service_run)).status == "stopped"
    client_run = run_of(home, model_id)
    assert client_run.status == "completed" and steps_of(home, run_id_of(home, model_id)) == 2


def test_on_policy_distillation_through_the_service(service: Server) -> None:
    """examples/tinker_distill.py: the student samples, the teacher's compute_logprobs scores the tokens, and an
    importance-sampling step with advantages = -(reverse KL) brings the student to the teacher."""
    # The sampled KL of a near-uniform student first rises (its few samples push mass onto tokens the teacher
    # likes even less), then falls; 8 samples a prompt make the fall come by step 6 here (it came after step 12
    # in a failing run), and the service's single thread makes the numbers the same on every run.
    done = subprocess.run([sys.executable, str(REPO / "examples" / "tinker_distill.py"), "--base", BASE,
                           "--teacher-lr", "5e-2", "--lr", "5e-2", "--teacher-steps", "20", "--steps", "12",
                           "--group", "8"],
                          env=client_env(service), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    teacher = [r["loss"] for r in rows if r["phase"] == "teacher"]
    kl = [r["kl/teacher"] for r in rows if r["phase"] == "student"]
    assert len(teacher) == 20 and teacher[-1] < teacher[0] / 2
    assert len(kl) == 12 and np.mean(kl[-4:]) < np.mean(kl[:4]) / 2, kl
    assert "FutureWarning" not in done.stderr
    unreachable = subprocess.run([sys.executable, str(REPO / "examples" / "tinker_distill.py")],
                                 env={**client_env(service), "TINKER_BASE_URL": f"http://127.0.0.1:{free_port()}"},
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: no tinker service answers at")


# ---------------------------------------------------------------------- the vLLM sampler's translation (GPU path)
def test_vllm_sampling_follows_the_tinker_semantics_of_the_hf_path() -> None:
    from dataclasses import dataclass

    from twinkle_trainer.samplers import SamplerError, choose_sampler
    from twinkle_trainer.service.sampler_engine import (
        SampleParams,
        vllm_prompt_logprobs,
        vllm_sampling_kwargs,
        vllm_sequences,
    )

    def service_choice(kind: str, cuda: bool, vllm_installed: bool) -> str:  # as the service asks it
        return choose_sampler(kind, True, "auto", 1, cuda, vllm_installed, option="--sampler")

    assert service_choice("auto", cuda=False, vllm_installed=True) == "hf"
    assert service_choice("auto", cuda=True, vllm_installed=True) == "vllm"
    assert service_choice("auto", cuda=True, vllm_installed=False) == "hf"
    with pytest.raises(SamplerError, match="needs an NVIDIA GPU"):
        service_choice("vllm", cuda=False, vllm_installed=True)

    def params(stop: object) -> SampleParams:
        return SampleParams(max_tokens=8, seed=3, stop=stop, temperature=0.7, top_k=-1, top_p=0.9)  # type: ignore[arg-type]

    kw = vllm_sampling_kwargs(params(None), 4, 8, [2], topk_sample=0, prompt_k=1)
    assert kw["stop_token_ids"] == [2] and "ignore_eos" not in kw and kw["logprobs"] == 0 and kw["seed"] == 3
    assert kw["prompt_logprobs"] == 1 and kw["top_k"] == -1 and kw["n"] == 4
    kw = vllm_sampling_kwargs(params(["\n"]), 1, 8, [2], 0, 0)
    assert kw["stop"] == ["\n"] and kw["ignore_eos"] and kw["include_stop_str_in_output"] and kw["prompt_logprobs"] is None
    assert vllm_sampling_kwargs(params([5, 6]), 1, 8, [2], 0, 0)["stop_token_ids"] == [5, 6]
    assert vllm_sampling_kwargs(params([]), 1, 8, [2], 0, 0)["ignore_eos"] is True

    @dataclass
    class Logprob:  # vllm.logprobs.Logprob
        logprob: float
        rank: int | None = None

    @dataclass
    class Completion:  # vllm.outputs.CompletionOutput
        token_ids: list[int]
        logprobs: list[dict[int, Logprob]] | None
        finish_reason: str

    done = Completion([7, 9], [{7: Logprob(-0.5), 3: Logprob(-0.1)}, {9: Logprob(-2.0), 4: Logprob(-0.2),
                                                                      5: Logprob(-3.0)}], "stop")
    cut = Completion([1], [{1: Logprob(-1.0)}], "length")
    seqs = vllm_sequences([done, cut], topk_sample=2)
    assert seqs[0].tokens == [7, 9] and seqs[0].logprobs == [-0.5, -2.0] and seqs[0].stop and not seqs[1].stop
    assert seqs[0].topk is not None and seqs[0].topk[0].tolist() == [[3, 7], [4, 9]]
    assert seqs[1].topk is not None and seqs[1].topk[0].tolist() == [[1, 0]]  # fewer than k: the SDK's empty mark
    assert seqs[1].topk[1][0, 1] == -99999.0

    prompt = [11, 12, 13, 14]
    per_position = [None, {12: Logprob(-1.5), 8: Logprob(-0.4)}, {13: Logprob(-0.25)}, {14: Logprob(-3.0)}]
    values, topk = vllm_prompt_logprobs(prompt, per_position, None, True, 0)
    assert values is not None and np.isnan(values[0]) and values[1:].tolist() == [-1.5, -0.25, -3.0] and topk is None
    values, topk = vllm_prompt_logprobs(prompt, per_position, 2, True, 1)  # only the last 2 positions
    assert values is not None and np.isnan(values[:2]).all() and values[2:].tolist() == [-0.25, -3.0]
    assert topk is not None and topk[0][:, 0].tolist() == [0, 0, 13, 14]


def test_a_body_over_the_cap_is_refused_before_it_is_read(service: Server) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.putrequest("POST", "/api/v1/forward_backward")
    conn.putheader("Content-Type", "application/x-protobuf")
    conn.putheader("Content-Length", str(600 * 1024 * 1024))  # announced, never sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]
    conn.close()


def test_closing_the_service_client_ends_its_runs_with_its_reason(service: Server) -> None:
    ended = {}
    for reason in ("success", "errored"):
        sc = tinker.ServiceClient(base_url=service.url)
        tc = sc.create_lora_training_client(base_model=BASE, rank=4).result()
        datum = sft_datum(tc.get_tokenizer())
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
        sc.close(reason, detail=f"{reason} from the test").result(timeout=30)
        ended[reason] = run_of(service.home, tc.model_id)
    assert ended["success"].status == "completed" and ended["errored"].status == "failed"
    events = (service.home / run_id_of(service.home, tc.model_id) / "events.jsonl").read_text()
    assert "errored from the test" in events
