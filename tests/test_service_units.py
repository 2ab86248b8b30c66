"""The training service's parts on their own (no HTTP, no model): request order, result retention, checkpoint
listing, the wire format's salvage of an unreadable request, threads, the log's rate limit, zstd bodies."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import pytest

pytest.importorskip("tinker")

from twinkle_trainer.service.checkpoints import CheckpointStore  # noqa: E402
from twinkle_trainer.service.errors import ServiceError  # noqa: E402
from twinkle_trainer.service.futures import (  # noqa: E402
    KEEP_FETCHED,
    KEEP_UNFETCHED,
    READ_RETRY,
    RESULT_KEEP,
    Future,
    FutureStore,
)
from twinkle_trainer.service.lora import LoraSpec  # noqa: E402
from twinkle_trainer.service.ordering import SEEN_KEEP, RequestOrder  # noqa: E402
from twinkle_trainer.service.runs import client_label, client_run_name, slug  # noqa: E402
from twinkle_trainer.service.startup import choose_threads  # noqa: E402
from twinkle_trainer.threads import env_threads  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ordered(order: RequestOrder, ran: list[int], seq: int | None) -> Future:
    return order.submit(seq, lambda: Future(f"r{seq}"), lambda f: ran.append(seq or 0))


def test_requests_run_in_seq_order_and_a_retry_gets_the_first_future() -> None:
    order, ran = RequestOrder(), cast(list[int], [])
    third = ordered(order, ran, 3)
    ordered(order, ran, 2)
    assert ran == []
    first = ordered(order, ran, 1)
    assert ran == [1, 2, 3]
    assert ordered(order, ran, 3) is third and ordered(order, ran, 1) is first and ran == [1, 2, 3]


def test_a_refused_request_uses_up_its_seq_id() -> None:
    order, ran = RequestOrder(), cast(list[int], [])
    ordered(order, ran, 2)
    order.skip(1)  # refused: 2 runs at once
    assert ran == [2]
    order.skip(4)  # refused before 3 arrived: 3 runs, then the order is at 5
    ordered(order, ran, 3)
    ordered(order, ran, 5)
    assert ran == [2, 3, 5] and order.next_seq == 6


def test_a_request_that_never_arrives_holds_the_order_only_for_the_gap_timeout() -> None:
    clock = Clock()
    order, ran = RequestOrder(clock, gap_timeout=30), cast(list[int], [])
    ordered(order, ran, 2)
    ordered(order, ran, 3)
    clock.now += 29
    assert order.expire_gaps() == [] and ran == []
    clock.now += 2
    assert order.expire_gaps() == [1] and ran == [2, 3]
    late = ordered(order, ran, 1)  # it arrives after all: too late, and said so
    assert late.error is not None and "comes after 3 already ran" in late.error[0]


def test_a_long_client_keeps_a_bounded_memory_of_its_requests() -> None:
    order, ran = RequestOrder(), cast(list[int], [])
    for seq in range(1, 1001):
        ordered(order, ran, seq)
    assert len(ran) == 1000 and len(order.seen) <= SEEN_KEEP + 1 and not order.pending


def test_results_are_released_once_read_and_bounded_per_client() -> None:
    clock = Clock()
    store = FutureStore(clock)
    read = []
    for i in range(200):
        f = store.new("model-a")
        f.resolve({"i": i})
        store.fetched(f)
        read.append(f)
        clock.now += 0.01
    unread = [store.new("model-b") for _ in range(KEEP_UNFETCHED + 50)]
    for f in unread:
        f.resolve(b"x")
    waiting = store.new("model-b")  # not finished: never dropped
    store.prune()
    assert len(store) == 200 + KEEP_UNFETCHED + 1  # each read result stays a while, for a read that is retried
    assert store.get(read[0].request_id) is read[0]
    clock.now += READ_RETRY
    store.prune()
    assert len(store) == KEEP_FETCHED + KEEP_UNFETCHED + 1
    assert store.get(read[-1].request_id) is read[-1]  # the newest read results stay for a retry
    with pytest.raises(ServiceError, match="no request"):
        store.get(read[0].request_id)
    assert store.get(waiting.request_id) is waiting and store.get(unread[-1].request_id) is unread[-1]
    clock.now += RESULT_KEEP + 1
    store.prune()
    assert len(store) == KEEP_UNFETCHED + 1


def write_checkpoint(folder: Path, expires_at: float | None) -> None:
    folder.mkdir(parents=True)
    (folder / "tinker.json").write_text(json.dumps({"base_model": "builtin:tiny-llama", "lora": {"rank": 4},
                                                    "step": 1, "kind": "training", "created": 1.0,
                                                    "expires_at": expires_at}))


def test_listing_checkpoints_does_not_delete_the_expired_ones(tmp_path: Path) -> None:
    """Listing is a read: an expired checkpoint is left out and refused, and only housekeeping deletes it."""
    clock = Clock()
    store = CheckpointStore(tmp_path, clock=lambda: clock.now)
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-a" / "meta.json").write_text(json.dumps({"run_id": "run-a", "config": {"source": "tinker service"}}))
    write_checkpoint(store.folder("run-a", "weights", "old"), expires_at=clock.now - 1)
    write_checkpoint(store.folder("run-a", "weights", "new"), expires_at=None)
    assert [c.name for c in store.of_run("run-a")] == ["new"]
    assert (store.folder("run-a", "weights", "old") / "tinker.json").exists()
    with pytest.raises(ServiceError, match="expired"):
        store.resolve("tinker://run-a/weights/old")
    assert store.prune_expired() == 1 and not store.folder("run-a", "weights", "old").exists()
    assert [c.name for c in store.of_run("run-a")] == ["new"]


@pytest.mark.parametrize("name", ["abc\n", "a/b", "..", "", "x" * 129, "-lead"])
def test_a_checkpoint_name_is_matched_whole(tmp_path: Path, name: str) -> None:
    with pytest.raises(ServiceError, match="checkpoint name"):
        CheckpointStore(tmp_path).folder("run-a", "weights", name)


def test_the_ids_of_an_unreadable_forward_backward_are_salvaged() -> None:
    from tinker.proto import tinker_public_pb2 as pb

    from twinkle_trainer.service.wire import salvage_ids

    whole = pb.ForwardBackwardRequest(model_id="s:train:0", seq_id=7, loss_fn="cross_entropy").SerializeToString()
    assert salvage_ids(whole[:-3] + b"\xff\xff") == ("s:train:0", 7)
    assert salvage_ids(b"\x0a\xff\xff\xff") == (None, None)
    assert salvage_ids(b"") == (None, None)


def test_threads_follow_the_free_cores() -> None:
    assert choose_threads("auto", cpus=16, load=0.2, environ={}) == 16
    assert choose_threads("auto", cpus=2, load=1.7, environ={}) == 1  # a busy 2-core machine: one thread, not two
    assert choose_threads("auto", cpus=8, load=30.0, environ={}) == 1
    assert choose_threads("auto", cpus=16, load=0.2, environ={"OMP_NUM_THREADS": "4"}) == 4  # the user's ceiling
    assert choose_threads("auto", cpus=16, load=14.0, environ={"OMP_NUM_THREADS": "4"}) == 2
    assert choose_threads("auto", cpus=16, load=0.2, environ={"OMP_NUM_THREADS": "many"}) == 16
    assert choose_threads("3") == 3
    assert [env_threads(e) for e in ({}, {"OMP_NUM_THREADS": " 3 "}, {"OMP_NUM_THREADS": "0"},
                                     {"OMP_NUM_THREADS": "-2"}, {"OMP_NUM_THREADS": "x"})] == [None, 3, None, None, None]
    with pytest.raises(ValueError, match="positive number or auto"):
        choose_threads("0")


def test_a_repeated_log_line_is_rate_limited() -> None:
    from twinkle_trainer.service.server import RateLimit

    limit = RateLimit(burst=3, window=0.2)
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (),
                               None)
    shown = sum(limit.filter(logging.makeLogRecord(record.__dict__)) for _ in range(1000))
    assert shown == 3
    time.sleep(0.25)
    again = logging.makeLogRecord(record.__dict__)
    assert limit.filter(again) and "997 more like this" in again.getMessage()


def test_tracebacks_of_one_exception_are_rate_limited_whatever_their_message() -> None:
    """asyncio names each callback in its message: 400 closing sockets logged 39,459 lines of 'Invalid file
    descriptor: -1' tracebacks, each message different."""
    from twinkle_trainer.service.server import RateLimit

    limit = RateLimit(burst=3, window=60)
    try:
        raise ValueError("Invalid file descriptor: -1")
    except ValueError:
        info = sys.exc_info()
    shown = sum(limit.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                               f"Exception in callback <Handle fd={fd}>", (), info))
                for fd in range(400))
    assert shown == 3


def test_a_zstd_body_is_decompressed_up_to_the_cap() -> None:
    import zstandard

    from twinkle_trainer.service.routers.training import decompress

    payload = np.arange(10_000, dtype=np.int64).tobytes()
    assert decompress(zstandard.ZstdCompressor().compress(payload), len(payload)) == payload
    with pytest.raises(ServiceError, match="holds more than") as err:
        decompress(zstandard.ZstdCompressor().compress(payload), len(payload) - 1)
    assert err.value.status == 413
    with pytest.raises(ServiceError, match="ends after"):
        decompress(zstandard.ZstdCompressor().compress(payload)[:-20], len(payload))


def test_a_client_run_is_named_from_what_the_client_says_of_itself() -> None:
    """Teacher and student of a distillation look alike (same base model, same rank) until their metadata names
    them; a client that says nothing is told apart by its seed."""
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    teacher = client_run_name(client_label({"name": "teacher"}, None), base, LoraSpec(8, 0))
    student = client_run_name(client_label({"name": "student"}, None), base, LoraSpec(8, 1))
    assert (teacher, student) == ("teacher · SmolLM2-135M-Instruct r8", "student · SmolLM2-135M-Instruct r8")
    assert client_label(None, {"role": "judge"}) == "judge"  # the session's metadata when the client's says nothing
    assert client_label({"name": "  a\nb  ", "role": "x"}, None) == "a b"
    assert client_label({"name": True, "seed": "1"}, {}) is None  # neither a name nor a bool
    assert client_run_name(None, "builtin:tiny", LoraSpec(4, 3)) == "tiny r4 seed 3"
    assert slug("Teacher v1.2 / A") == "teacher-v1-2-a" and slug(None) == ""


def test_the_service_run_says_what_it_serves(tmp_path: Path) -> None:
    """`twinkle-tui serve`'s progress line and the dashboard show sessions, clients and requests per minute (work
    requests only: the SDK's heartbeats and long polls are not work) instead of `step 0 · --`."""
    from twinkle_trainer.protocol import RunKind, RunPaths, read_meta, update_meta
    from twinkle_trainer.service.service import Service
    from twinkle_tui.headless import status_line
    from twinkle_tui.runs.store import RunStore

    home = tmp_path / "home"
    paths = RunPaths(home / "service-8000-0101-abcd")
    paths.root.mkdir(parents=True)

    def launched(meta: object) -> None:
        meta.kind, meta.status = RunKind.SERVICE, "running"  # type: ignore[attr-defined]

    update_meta(paths, launched, repair=True)
    service = Service(home)
    try:
        service.announce(paths, "http://127.0.0.1:8000", "hf")
        session = service.create_session(None, None, None)
        session.models.append("m1")
        session.samplers.append("s1")
        for path in ("/api/v1/forward_backward", "/api/v1/optim_step", "/api/v1/session_heartbeat",
                     "/api/v1/retrieve_future", "/api/v1/asample"):
            service.count_request(path)
        service.publish()
        assert read_meta(paths).service == {"url": "http://127.0.0.1:8000", "sampler": "hf", "sessions": 1,
                                            "clients": 2, "requests_per_minute": 3}
        view = RunStore(home).view(paths.run_id)
        assert status_line(view, time.time()) == ("serving at http://127.0.0.1:8000 · 1 open session · 2 clients · "
                                                  "3 requests/min")
        service.requests[0] -= 61  # a minute on, the first no longer counts
        service.publish()
        assert read_meta(paths).service["requests_per_minute"] == 2
    finally:
        service.shutdown(wait=1)


def test_a_result_not_ready_after_the_long_poll_is_a_quiet_retry_for_the_sdk(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 try_again makes the SDK log a warning ("Retrying request ... because of try_again") on every poll of
    a slow step; a 408 with the same body is polled again in silence (the SDK's own mapping of the reply)."""
    import httpx
    import tinker
    from starlette.testclient import TestClient
    from tinker.lib import api_future_impl as sdk

    from twinkle_trainer.service.app import create_app
    from twinkle_trainer.service.routers import futures as futures_router
    from twinkle_trainer.service.service import Service

    monkeypatch.setattr(futures_router, "LONG_POLL", 0.05)
    service = Service(tmp_path)
    try:
        pending = service.futures.new(None)
        with TestClient(create_app(service), base_url="http://127.0.0.1:8000") as http:
            reply = http.post("/api/v1/retrieve_future", json={"request_id": pending.request_id})
        assert reply.status_code == 408
        assert reply.json() == {"type": "try_again", "request_id": pending.request_id, "queue_state": "active"}
        error = tinker.APIStatusError("try again", response=httpx.Response(408, json=reply.json(),
                                                                            request=httpx.Request("POST", "http://x")),
                                      body=reply.json())
        mapped = sdk._rest_status_error_to_transport_error(error)
        assert mapped.kind == sdk._TransportErrorKind.RETRY and mapped.try_again_body == reply.json()
    finally:
        service.shutdown(wait=1)


def test_the_readme_names_every_flag_of_serve() -> None:
    from twinkle_tui.serve import parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## The training service"):readme.index("## Auto-research")]
    flags = [o for a in parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert flags and [f for f in flags if f"`{f}" not in section] == []


def test_a_sample_its_client_abandons_is_cancelled_and_never_runs(tmp_path: Path) -> None:
    """The SDK sends /cancel_future for a sample it stopped waiting for (when /client/dynamic_config offers it):
    one still queued behind other work never runs and nothing is queued for its client; a training request is
    never cancelled (its order is the client's), and cancelling twice or too late is harmless."""
    import threading

    from starlette.testclient import TestClient

    from twinkle_trainer.service.app import create_app
    from twinkle_trainer.service.service import Service

    service = Service(tmp_path)
    try:
        gate, ran = threading.Event(), []
        busy = service.futures.new(None)
        service.worker.submit(lambda: (gate.wait(30), {})[1], busy)  # holds the worker, as a long sample would
        sample = service.futures.new("sampler-1")
        sample.cancellable = True
        pushed: list[object] = []
        sample.on_done = pushed.append

        def sample_job() -> dict[str, object]:
            ran.append(1)
            return {}

        service.worker.submit(sample_job, sample)
        step = service.futures.new("model-1")
        with TestClient(create_app(service), base_url="http://127.0.0.1:8000") as http:
            assert http.post("/api/v1/client/dynamic_config", json={}).json()["sample_cancel_enabled"] is True
            assert http.post("/api/v1/cancel_future", json={"request_id": sample.request_id}).json() == \
                {"status": "cancelled"}
            assert http.post("/api/v1/cancel_future", json={"request_id": sample.request_id}).json() == \
                {"status": "done"}
            refused = http.post("/api/v1/cancel_future", json={"request_id": step.request_id})
            assert refused.status_code == 400 and "only sampling requests" in refused.text
            gate.set()
            assert sample.done.wait(10) and busy.done.wait(10)
            assert ran == [] and pushed == [] and sample.error == ("cancelled by the client", "user")
            assert http.post("/api/v1/retrieve_future", json={"request_id": sample.request_id}).status_code == 404
    finally:
        service.shutdown(wait=1)


def test_a_recipes_log_folder_is_found_when_its_model_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's folder (ml_log holds logs.log open beside config.json) is looked for when the client creates its
    model and at each optim_step, not only on the once-a-second housekeeping: a client that ended between two
    rounds once lost every metric of its recipe (the distillation test failed about once in seven runs)."""
    import subprocess

    from starlette.testclient import TestClient

    from twinkle_trainer.protocol import process_start_time
    from twinkle_trainer.service import service as service_module
    from twinkle_trainer.service import sessions as sessions_module
    from twinkle_trainer.service.app import create_app
    from twinkle_trainer.service.service import Service

    from conftest import wait_for

    logs = tmp_path / "recipe-logs"
    logs.mkdir()
    (logs / "config.json").write_text("{}")
    client = subprocess.Popen([sys.executable, "-c", f"f = open({str(logs / 'logs.log')!r}, 'a'); "
                               "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    monkeypatch.setattr(service_module, "HOUSEKEEPING", 3600.0)  # no housekeeping round during the test
    monkeypatch.setattr(sessions_module, "client_of", lambda peer, local: (client.pid, process_start_time(client.pid)))
    service = Service(tmp_path / "home")
    try:
        time.sleep(0.5)  # the child has opened logs.log
        with TestClient(create_app(service), base_url="http://127.0.0.1:8000") as http:
            session = http.post("/api/v1/create_session", json={"tags": [], "user_metadata": None,
                                                                "sdk_version": "0.38.0", "type": "create_session"})
            session_id = session.json()["session_id"]
            made = http.post("/api/v1/create_model", json={
                "session_id": session_id, "model_seq_id": 0, "base_model": "builtin:tiny-llama",
                "lora_config": {"rank": 4}, "type": "create_model"})
            assert made.status_code == 200, made.text
            wait_for(lambda: session_id in service.recipes and service.recipes[session_id].path is not None,
                     timeout=10, what="the recipe's folder")
        assert service.recipes[session_id].path == logs / "metrics.jsonl"
    finally:
        client.kill()
        client.wait()
        service.shutdown(wait=5)
