"""What issue 23 asks of the service beyond the losses: the memory budget (micro-batches, checkpointing, refusals
that are errors, not deaths), how a client's run ends when its client does (or when the service dies), the API
pieces the SDK calls (sessions, samplers, resumed clients), and the custom loss's metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

tinker = pytest.importorskip("tinker")
from tinker import types  # noqa: E402

from twinkle_trainer.protocol import RunPaths, read_meta  # noqa: E402
from twinkle_trainer.service.errors import MemoryBudgetError  # noqa: E402
from twinkle_trainer.service.memory import GiB, MemoryBudget, ModelShape  # noqa: E402

from conftest import environment, kill_live_runs, wait_for  # noqa: E402
from test_service import BASE, Server, client_env, metrics_of, run_id_of, sft_datum  # noqa: E402

SMOLLM2 = ModelShape(vocab=49152, hidden=576, intermediate=1536, layers=30)


# ---------------------------------------------------------------------- the memory budget
def test_micro_batches_follow_the_room_left_and_checkpointing_only_when_a_row_needs_it() -> None:
    lengths = [500] * 16
    roomy = MemoryBudget(12 * GiB, rss=lambda: 1 * GiB).plan(lengths, SMOLLM2, grad=True)
    tight = MemoryBudget(4 * GiB, rss=lambda: 1 * GiB).plan(lengths, SMOLLM2, grad=True)
    assert not roomy.checkpointing and not tight.checkpointing
    assert sorted(i for b in tight.batches for i in b) == list(range(16))  # every datum, once
    assert len(tight.batches) > len(roomy.batches) > 1
    for plan, limit in ((roomy, 11 * GiB), (tight, 3 * GiB)):  # each micro-batch fits what is free
        assert all(SMOLLM2.need(len(b), 500, True, False) <= limit for b in plan.batches)
    squeezed = MemoryBudget(int(2.6 * GiB), rss=lambda: 1 * GiB).plan([1000], SMOLLM2, grad=True)
    assert squeezed.checkpointing  # 1000 tokens need ~3.5 GB as they are, ~1.4 GB with checkpointing
    with pytest.raises(MemoryBudgetError, match=r"a sequence of 4000 tokens needs about .* GB to train"):
        MemoryBudget(2 * GiB, rss=lambda: 1 * GiB).plan([4000], SMOLLM2, grad=True)
    small = MemoryBudget(2 * GiB, rss=lambda: 1 * GiB)
    forward, train = small.plan([500] * 8, SMOLLM2, grad=False), small.plan([500] * 8, SMOLLM2, grad=True)
    assert len(forward.batches) < len(train.batches)  # a forward keeps no activations: more rows a pass


def test_micro_batches_and_checkpointing_compute_the_same_loss_and_gradients(tmp_path: Path) -> None:
    """One pass, micro-batches of one row, and micro-batches with gradient checkpointing (a 12-layer tiny model,
    where it pays): the same loss and the same gradients."""
    import torch

    from twinkle_trainer.models import make_tiny_model
    from twinkle_trainer.service import losses
    from twinkle_trainer.service.lora import LoraSpec, LoraTrainer
    from twinkle_trainer.service.wire import Datum

    model = make_tiny_model(tmp_path / "deep", layers=12)
    rng = np.random.default_rng(0)
    data = [Datum(rng.integers(3, 200, n).astype(np.int64), {"target_tokens": rng.integers(3, 200, n).astype(np.int64)})
            for n in (40, 25, 60, 33)]
    spec = losses.LossSpec("cross_entropy", {})
    shape = LoraTrainer(str(model), LoraSpec(rank=4, seed=0)).shape
    rooms = [None, (shape.need(1, 60, True, False) + shape.need(2, 33, True, False)) // 2,
             (shape.need(1, 60, True, True) + shape.need(1, 60, True, False)) // 2]
    results = []
    for room in rooms:
        trainer = LoraTrainer(str(model), LoraSpec(rank=4, seed=0))
        trainer.budget = MemoryBudget(None if room is None else 10 * GiB, rss=lambda r=room: 10 * GiB - (r or 0))
        plan = trainer.budget.plan([len(d.tokens) for d in data], shape, True)
        _, out = trainer.forward_backward(data, spec, forward_only=False)
        grads = torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None])
        results.append((plan, out["loss:sum"], grads))
    (whole, loss, grads), (split, loss2, grads2), (ckpt, loss3, grads3) = results
    assert len(whole.batches) == 1 and not whole.checkpointing
    assert len(split.batches) == 4 and not split.checkpointing
    assert len(ckpt.batches) > 1 and ckpt.checkpointing
    assert loss2 == pytest.approx(loss, rel=1e-5) and loss3 == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(grads2, grads, rtol=1e-3, atol=1e-5)  # float32 sums in another order
    torch.testing.assert_close(grads3, grads, rtol=1e-3, atol=1e-5)


def test_a_request_over_the_budget_is_an_error_and_the_service_lives(tmp_path: Path) -> None:
    server = Server(tmp_path, "--memory-budget", "300MB", "--threads", "1").wait_ready()
    try:
        with environment(TINKER_API_KEY="tml-local-tests", TINKER_TELEMETRY="0"):
            sc = tinker.ServiceClient(base_url=server.url)
            with pytest.raises(Exception, match=r"memory budget are free; close other training clients"):
                sc.create_lora_training_client(base_model=BASE, rank=4).result(timeout=60)
            with pytest.raises(Exception, match="memory budget"):
                sc.create_sampling_client(base_model=BASE).result().sample(
                    types.ModelInput.from_ints([5, 6]), 1, types.SamplingParams(max_tokens=4)).result(timeout=60)
            sc.close("success").result(timeout=30)
        assert server.proc.poll() is None
    finally:
        server.stop()
        kill_live_runs(tmp_path)


# ---------------------------------------------------------------------- how a client's run ends
CLIENT = """
import os, sys, signal, numpy as np, tinker
from tinker import types
sc = tinker.ServiceClient()
tc = sc.create_lora_training_client(base_model="builtin:tiny-llama", rank=4).result()
ids = tc.get_tokenizer().encode("hello there")
d = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={"target_tokens": np.array(ids[1:]), "weights": np.ones(len(ids) - 1, np.float32)})
tc.forward_backward([d], "cross_entropy")
tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
print(tc.model_id, flush=True)
how = sys.stdin.readline().strip()
if how == "exit5":
    sys.exit(5)
if how == "interrupt":
    os.kill(os.getpid(), signal.SIGINT)
    signal.pause()
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("api-home")
    server = Server(home, "--threads", "1").wait_ready()
    with environment(TINKER_API_KEY="tml-local-tests", TINKER_TELEMETRY="0"):
        yield server
    server.stop()
    kill_live_runs(home)


def zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.mark.parametrize(("how", "status", "why"), [
    ("exit0", "completed", "the client process exited (code 0)"),
    ("exit5", "failed", "the client process exited with code 5"),
    ("interrupt", "stopped", "stopped by SIGINT"),
    ("sigterm", "stopped", "stopped by SIGTERM"),
    ("sigkill", "failed", "killed by SIGKILL"),
])
def test_a_client_that_ends_without_closing_its_session(service: Server, how: str, status: str, why: str) -> None:
    """Killed, timed out, interrupted or failing clients were all recorded completed. The service sees the exit
    status of a client it can catch before its parent reaps it (here the parent waits until it has)."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT], env=client_env(service), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        model_id = proc.stdout.readline().strip()
        if how in ("sigterm", "sigkill"):
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        else:
            proc.stdin.write(how + "\n")
            proc.stdin.flush()
        wait_for(lambda: zombie(proc.pid), timeout=60, what="the client to end")
        run = service.home / run_id_of(service.home, model_id)
        wait_for(lambda: read_meta(RunPaths(run)).status != "running", timeout=30, what="the end to be recorded")
    finally:
        proc.kill()
        proc.wait()
    meta = read_meta(RunPaths(run))
    assert meta.status == status and why in (run / "output.log").read_text()
    if status == "failed":
        assert why in meta.error


def test_the_runs_of_a_killed_service_are_reconciled(tmp_path: Path) -> None:
    """The service is SIGKILLed with two clients training: the dashboard records the one it looks at, and the
    next service the other, as failed with why; neither stays running."""
    from twinkle_tui.process.controller import ProcessController
    from twinkle_tui.runs.store import RunStore

    first = Server(tmp_path, "--threads", "1").wait_ready()
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT], env=client_env(first), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        runs = [run_id_of(tmp_path, c.stdout.readline().strip()) for c in clients]
        first.proc.kill()
        first.proc.wait()
        assert all(read_meta(RunPaths(tmp_path / r)).status == "running" for r in runs)
        assert RunStore(tmp_path).view(runs[0]).status.value == "failed"  # the dashboard sees no live service
        assert ProcessController(tmp_path).recover(runs[0]) == "recorded as ended"
        second = Server(tmp_path, "--threads", "1").wait_ready()
        second.stop()
    finally:
        for c in clients:
            c.kill()
            c.wait()
        first.log.close()
        kill_live_runs(tmp_path)
    for r in runs:
        meta = read_meta(RunPaths(tmp_path / r))
        assert meta.status == "failed" and "training service that served this client" in meta.error


# ---------------------------------------------------------------------- API pieces
def test_sessions_list_their_samplers_and_are_listed(service: Server) -> None:
    sc = tinker.ServiceClient(base_url=service.url)
    tc = sc.create_lora_training_client(base_model=BASE, rank=4).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    rest = sc.create_rest_client()
    session_id = tc.model_id.split(":")[0]
    session = rest.get_session(session_id).result()
    assert tc.model_id in session.training_run_ids and len(session.sampler_ids) == 1
    assert sampler.sample(types.ModelInput.from_ints([5, 6]), 1, types.SamplingParams(max_tokens=2)).result(
        timeout=60).sequences
    assert session_id in rest.list_sessions().result().sessions
    sc.close("success").result(timeout=30)


def test_the_custom_loss_logs_its_surrogate_by_name_and_no_eval_loss(service: Server) -> None:
    """forward_backward_custom is a forward, then the same data back with the loss's gradient as weights: its
    "loss" was -10 for a DPO loss of 0.68, and its forward an "eval loss". A real forward stays an eval loss."""
    import torch

    sc = tinker.ServiceClient(base_url=service.url)
    tc = sc.create_lora_training_client(base_model=BASE, rank=4).result()
    datum = sft_datum(tc.get_tokenizer())

    def squared(data: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = sum((lp**2).sum() for lp in logprobs)
        return loss, {"squared": float(loss)}  # type: ignore[return-value]

    tc.forward_backward_custom([datum], squared).result(timeout=60)
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
    tc.forward([datum], "cross_entropy").result(timeout=60)  # an evaluation
    tc.forward_backward([datum], "cross_entropy").result(timeout=60)
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
    rows = metrics_of(service.home, run_id_of(service.home, tc.model_id))
    assert "custom loss surrogate" in rows[0] and "loss" not in rows[0] and "eval loss" not in rows[0]
    assert any("eval loss" in r for r in rows[1:]) and "loss" in rows[-1]
    sc.close("success").result(timeout=30)


def test_a_client_made_from_another_runs_state_names_it(service: Server) -> None:
    sc = tinker.ServiceClient(base_url=service.url)
    tc = sc.create_lora_training_client(base_model=BASE, rank=4).result()
    datum = sft_datum(tc.get_tokenizer())
    tc.forward_backward([datum], "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
    path = tc.save_state("one").result(timeout=60).path
    resumed = sc.create_training_client_from_state_with_optimizer(path).result()
    parent, child = run_id_of(service.home, tc.model_id), run_id_of(service.home, resumed.model_id)
    config = read_meta(RunPaths(service.home / child)).config
    assert config["parent_run"] == parent and config["resumed_from"] == path
    events = [json.loads(line) for line in (service.home / parent / "events.jsonl").read_text().splitlines()]
    assert {"kind": "resumed_as", "run": child, "tinker_path": path, "step": 1}.items() <= events[-1].items()
    sc.close("success").result(timeout=30)
