"""Hostile input against the training service (issue 26): every request here is one a user, a bug in a client, or
a web page could send. Nothing may crash the service, exhaust its memory or file handles, hang a client, poison a
model, or reveal which paths exist. Each case answers with a status and a one-line reason."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil
import pytest

pytest.importorskip("tinker")
import tinker  # noqa: E402
from tinker import types  # noqa: E402
from tinker.proto import tinker_public_pb2 as pb  # noqa: E402

from twinkle_trainer.protocol import RunPaths, read_meta  # noqa: E402

from conftest import REPO, environment, kill_live_runs  # noqa: E402
from test_service import BASE, Server, client_env, free_port, run_id_of, sft_datum  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("hostile-home")
    server = Server(home, "--gap-timeout", "2", "--threads", "1").wait_ready()
    yield server
    server.stop()
    kill_live_runs(home)


@pytest.fixture(scope="module")
def client(service: Server) -> Iterator[tinker.ServiceClient]:
    with environment(TINKER_API_KEY="tml-local-tests", TINKER_TELEMETRY="0"):
        sc = tinker.ServiceClient(base_url=service.url)
        yield sc
        sc.close("success").result(timeout=30)


def post(url: str, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"{url}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw[:1] == b"{" else {"bytes": len(raw)}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


SESSION = {"tags": [], "user_metadata": None, "sdk_version": "0.38.0", "type": "create_session"}


def new_session(url: str) -> str:
    status, body = post(url, "/api/v1/create_session", SESSION)
    assert status == 200, body
    return str(body["session_id"])


# ---------------------------------------------------------------------- sizes before memory
def test_sizes_are_checked_before_anything_is_allocated(service: Server) -> None:
    new_session(service.url)
    prompt = {"chunks": [{"tokens": [1, 2, 3], "type": "encoded_text"}]}
    before = rss_mb(service.proc.pid)
    status, body = post(service.url, "/api/v1/asample", {"num_samples": 5_000_000, "prompt": prompt,
                                                         "sampling_params": {"max_tokens": 4}, "base_model": BASE})
    assert status == 400 and "num_samples must be between 1 and 64" in body["error"], body
    status, body = post(service.url, "/api/v1/asample", {"num_samples": 1, "prompt": prompt, "base_model": BASE,
                                                         "sampling_params": {"max_tokens": 4},
                                                         "topk_prompt_logprobs": 10**6, "prompt_logprobs": True})
    assert status == 400 and "topk_prompt_logprobs must be between 0 and 64" in body["error"], body
    assert rss_mb(service.proc.pid) < before + 100  # nothing was made per requested sample


# ---------------------------------------------------------------------- web pages
def test_a_web_page_cannot_reach_the_service(service: Server) -> None:
    """A page the user opens may POST text/plain anywhere, carries an Origin, and with DNS rebinding names its own
    host: each is refused, while the SDK's own requests (JSON, no Origin, the service's host) go through."""
    body = json.dumps(SESSION).encode()
    status, answer = post(service.url, "/api/v1/create_session", body, {"Content-Type": "text/plain"})
    assert status == 415 and "content type 'text/plain' is not accepted" in answer["error"]
    status, answer = post(service.url, "/api/v1/create_session", body, {"Origin": "http://evil.example"})
    assert status == 403 and "web pages" in answer["error"]
    status, answer = post(service.url, "/api/v1/create_session", body, {"Host": f"evil.example:{service.port}"})
    assert status == 421 and "answers only to 127.0.0.1" in answer["error"]
    assert post(service.url, "/api/v1/create_session", body)[0] == 200


# ---------------------------------------------------------------------- refusals keep the order moving
def test_a_refused_request_leaves_the_client_running(client: tinker.ServiceClient) -> None:
    """Each refusal before the ordering step used to leave its seq_id unused: every later call of that client
    answered "try_again" for ever. Now the next call runs."""
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    datum = sft_datum(tc.get_tokenizer())
    short = types.Datum(model_input=datum.model_input,
                        loss_fn_inputs={"target_tokens": np.array([1, 2], dtype=np.int64)})
    refusals = [
        (lambda: tc.forward_backward([datum], "ppo", {"clip_low_threshold": 2.0}), "clip_low_threshold <= 1"),
        (lambda: tc.forward_backward([short], "cross_entropy"), "one value per input token"),
        (lambda: tc.optim_step(types.DimuonParams(learning_rate=1e-3)), "this service uses Adam"),
        (lambda: tc.load_state("tinker://nothing-here/weights/none"), "no checkpoint at"),
    ]
    for call, message in cast(list[tuple[Any, str]], refusals):
        with pytest.raises(Exception, match=message):
            call().result(timeout=30)
        assert tc.forward_backward([datum], "cross_entropy").result(timeout=60).metrics["loss:sum"] > 0


def fb_request(model_id: str, seq_id: int, tokens: list[int]) -> pb.ForwardBackwardRequest:
    msg = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.array(tokens[:-1], dtype=np.int32).tobytes()
    target = d.loss_fn_inputs["target_tokens"]
    target.dense, target.dtype = np.array(tokens[1:], dtype=np.int64).tobytes(), pb.DTYPE_INT64
    target.shape.append(len(tokens) - 1)
    return msg


def result_of(url: str, request_id: str, deadline: float = 60.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status, body = post(url, "/api/v1/retrieve_future", {"request_id": request_id})
        if body.get("type") != "try_again":
            return body
        assert status == 408, (status, body)
    raise AssertionError(f"{request_id} was still waiting after {deadline} s")


def test_an_unreadable_request_does_not_stall_the_ones_after_it(client: tinker.ServiceClient,
                                                                service: Server) -> None:
    """A body that cannot be parsed still uses up its seq_id when its leading fields name it; one whose seq_id
    cannot be read at all holds the order at most --gap-timeout seconds (2 here)."""
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    tokens = list(range(5, 30))
    proto = {"Content-Type": "application/x-protobuf"}
    garbled = fb_request(tc.model_id, 1, tokens).SerializeToString()[:60] + b"\xff\xff\xff"
    status, body = post(service.url, "/api/v1/forward_backward", garbled, proto)
    assert status == 400 and "not a ForwardBackwardRequest" in body["error"]
    status, body = post(service.url, "/api/v1/forward_backward", fb_request(tc.model_id, 2, tokens).SerializeToString(),
                        proto)
    assert status == 200 and "error" not in result_of(service.url, body["request_id"], 10)
    unreadable = b"\x08" + b"\xff" * 20  # not even its model_id can be read: seq_id 3 never arrives
    assert post(service.url, "/api/v1/forward_backward", unreadable, proto)[0] == 400
    status, body = post(service.url, "/api/v1/forward_backward", fb_request(tc.model_id, 4, tokens).SerializeToString(),
                        proto)
    assert status == 200 and "error" not in result_of(service.url, body["request_id"], 60)
    log = (service.home / run_id_of(service.home, tc.model_id) / "output.log").read_text()
    assert "request 3 never arrived" in log


# ---------------------------------------------------------------------- decompression bombs
def test_zstd_bombs_and_zstd_without_the_flag(service: Server, tmp_path: Path) -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * (600 * 2**20))
    assert len(bomb) < 100_000
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"}
    status, body = post(service.url, "/api/v1/forward_backward", bomb, headers)
    assert status == 415 and "start it with --zstd" in body["error"]  # not asked for: not taken
    zstd_server = Server(tmp_path, "--zstd", "--threads", "1").wait_ready()
    try:
        before = rss_mb(zstd_server.proc.pid)
        status, body = post(zstd_server.url, "/api/v1/forward_backward", bomb, headers)
        assert status == 413 and "holds more than" in body["error"]
        streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
        undeclared = streamed.compress(b"\0" * (600 * 2**20)) + streamed.flush()  # no size in the header
        status, body = post(zstd_server.url, "/api/v1/forward_backward", undeclared, headers)
        assert status == 413 and "holds more than" in body["error"]
        assert rss_mb(zstd_server.proc.pid) < before + 700  # read in chunks up to the cap, never the whole bomb
    finally:
        zstd_server.stop()
        kill_live_runs(tmp_path)


# ---------------------------------------------------------------------- malformed bodies: 400 with the reason
def sparse_request(model_id: str, shape: tuple[int, int], crow: list[int], col: list[int]) -> bytes:
    msg = fb_request(model_id, 1, list(range(5, 12)))
    weights = msg.data[0].loss_fn_inputs["weights"]
    weights.dtype = pb.DTYPE_FLOAT32
    weights.shape.extend(shape)
    weights.sparse_csr.crow_indices = np.array(crow, dtype=np.int64).tobytes()
    weights.sparse_csr.col_indices = np.array(col, dtype=np.int64).tobytes()
    weights.sparse_csr.values = np.ones(len(col), dtype=np.float32).tobytes()
    return bytes(msg.SerializeToString())


@pytest.mark.parametrize(("shape", "crow", "col", "reason"), [
    ((10**6, 10**6), [0, 1], [0], "is too large"),
    ((6, 4), [0, 1], [0], "crow_indices do not fit its 6 rows"),
    ((1, 4), [0, 1], [9], "column index is outside 0 to 3"),
])
def test_a_malformed_sparse_tensor_is_a_400(service: Server, client: tinker.ServiceClient,
                                            shape: tuple[int, int], crow: list[int], col: list[int],
                                            reason: str) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    status, body = post(service.url, "/api/v1/forward_backward", sparse_request(tc.model_id, shape, crow, col),
                        {"Content-Type": "application/x-protobuf"})
    assert status == 400 and reason in body["error"], body


def test_nan_and_infinity_are_refused_and_the_model_stays_finite(client: tinker.ServiceClient) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    datum = sft_datum(tc.get_tokenizer())
    n = len(datum.loss_fn_inputs["weights"].to_numpy())
    for bad in (np.nan, np.inf):
        weights = np.ones(n, dtype=np.float32)
        weights[3] = bad
        poisoned = types.Datum(model_input=datum.model_input,
                               loss_fn_inputs={**datum.loss_fn_inputs, "weights": weights})
        with pytest.raises(Exception, match=r"loss_fn_inputs\['weights'\] holds NaN or infinity"):
            tc.forward_backward([poisoned], "cross_entropy").result(timeout=30)
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=30)
    loss = tc.forward([datum], "cross_entropy").result(timeout=30).metrics["loss:sum"]
    assert np.isfinite(loss)


def test_malformed_json_and_model_names_are_400s(service: Server, client: tinker.ServiceClient) -> None:
    nested = b'{"tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = post(service.url, "/api/v1/create_session", nested)
    assert status == 400 and "error" in body
    with pytest.raises(Exception, match="is not a model id"):
        client.create_lora_training_client(base_model="a" * 5000, rank=4).result(timeout=30)
    # a path outside the model roots: one answer whether it exists or not
    answers = []
    for path in ("/etc", "/no/such/folder/here"):
        with pytest.raises(Exception) as err:
            client.create_lora_training_client(base_model=path, rank=4).result(timeout=30)
        answers.append(str(err.value).replace(path, "PATH"))
    assert answers[0] == answers[1] and "not under this service's model roots" in answers[0]


def test_a_checkpoint_name_must_match_whole(client: tinker.ServiceClient) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    with pytest.raises(Exception, match="use 1-128 letters"):
        tc.save_state("abc\n").result(timeout=30)
    assert tc.save_state("abc").result(timeout=30).path.endswith("/weights/abc")


# ---------------------------------------------------------------------- file handles
def test_idle_half_sent_connections_do_not_starve_the_service(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With 256 file handles, 400 connections that send half a request and wait: the service closes the silent
    ones and keeps room, answers health, trains its client, keeps that client's session, and logs a few lines."""
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    server = Server.__new__(Server)
    server.home, server.port = tmp_path, free_port()
    server.url = f"http://127.0.0.1:{server.port}"
    env = {**client_env(server), "TWINKLE_HOME": str(tmp_path)}
    server.log = open(tmp_path / "service.log", "wb")
    server.proc = subprocess.Popen([sys.executable, "-m", "twinkle_trainer.service", "--port", str(server.port),
                                    "--idle-timeout", "2", "--threads", "1"], env=env, stdout=server.log,
                                   stderr=subprocess.STDOUT, preexec_fn=low_limit)
    held: list[socket.socket] = []
    monkeypatch.setenv("TINKER_API_KEY", "tml-local-tests")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    try:
        server.wait_ready()
        sc = tinker.ServiceClient(base_url=server.url)
        tc = sc.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
        datum = sft_datum(tc.get_tokenizer())
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            held.append(s)
        for _ in range(3):
            tc.forward_backward([datum], "cross_entropy")
            tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
        assert tc.save_state("after-the-flood").result(timeout=60).path
        with urllib.request.urlopen(f"{server.url}/api/v1/healthz", timeout=10) as r:
            assert r.status == 200
        run = read_meta(RunPaths(tmp_path / run_id_of(tmp_path, tc.model_id)))
        assert run.status == "running"  # the client lives: its session was never thrown away
        sc.close("success").result(timeout=30)
    finally:
        for s in held:
            s.close()
        server.stop()
        kill_live_runs(tmp_path)
    assert len((tmp_path / "service.log").read_text().splitlines()) < 100


def test_a_failed_liveness_check_is_not_a_dead_client(tmp_path: Path) -> None:
    """When /proc cannot be read (no file handles left), the client is not declared gone: its session stays."""
    script = """
import os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from twinkle_trainer.protocol import process_start_time
from twinkle_trainer.service.sessions import SessionRegistry, TinkerSession
me = os.getpid()
registry = SessionRegistry(Path(sys.argv[2]), clock=lambda: 1e9)
registry.sessions["s"] = TinkerSession("s", me, process_start_time(me), None, None, last_seen=0.0)
handles = []
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
try:
    while True:
        handles.append(open(os.devnull))
except OSError:
    pass
print([s.session_id for s, _ in registry.ended()], registry.sessions["s"].client_alive())
"""
    done = subprocess.run([sys.executable, "-c", script, str(REPO), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] None"
