"""The training service's parts on their own (no HTTP, no model): request order, result retention, checkpoint
listing, the wire format's salvage of an unreadable request, threads, the log's rate limit, zstd bodies."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tinker")

from trainer.service.checkpoints import CheckpointStore  # noqa: E402
from trainer.service.errors import ServiceError  # noqa: E402
from trainer.service.futures import KEEP_FETCHED, KEEP_UNFETCHED, RESULT_KEEP, Future, FutureStore  # noqa: E402
from trainer.service.ordering import SEEN_KEEP, RequestOrder  # noqa: E402
from trainer.service.startup import choose_threads  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ordered(order: RequestOrder, ran: list[int], seq: int | None) -> Future:
    return order.submit(seq, lambda: Future(f"r{seq}"), lambda f: ran.append(seq or 0))


def test_requests_run_in_seq_order_and_a_retry_gets_the_first_future() -> None:
    order, ran = RequestOrder(), []
    third = ordered(order, ran, 3)
    ordered(order, ran, 2)
    assert ran == []
    first = ordered(order, ran, 1)
    assert ran == [1, 2, 3]
    assert ordered(order, ran, 3) is third and ordered(order, ran, 1) is first and ran == [1, 2, 3]


def test_a_refused_request_uses_up_its_seq_id() -> None:
    order, ran = RequestOrder(), []
    ordered(order, ran, 2)
    order.skip(1)  # refused: 2 runs at once
    assert ran == [2]
    order.skip(4)  # refused before 3 arrived: 3 runs, then the order is at 5
    ordered(order, ran, 3)
    ordered(order, ran, 5)
    assert ran == [2, 3, 5] and order.next_seq == 6


def test_a_request_that_never_arrives_holds_the_order_only_for_the_gap_timeout() -> None:
    clock = Clock()
    order, ran = RequestOrder(clock, gap_timeout=30), []
    ordered(order, ran, 2)
    ordered(order, ran, 3)
    clock.now += 29
    assert order.expire_gaps() == [] and ran == []
    clock.now += 2
    assert order.expire_gaps() == [1] and ran == [2, 3]
    late = ordered(order, ran, 1)  # it arrives after all: too late, and said so
    assert late.error is not None and "comes after 3 already ran" in late.error[0]


def test_a_long_client_keeps_a_bounded_memory_of_its_requests() -> None:
    order, ran = RequestOrder(), []
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

    from trainer.service.wire import salvage_ids

    whole = pb.ForwardBackwardRequest(model_id="s:train:0", seq_id=7, loss_fn="cross_entropy").SerializeToString()
    assert salvage_ids(whole[:-3] + b"\xff\xff") == ("s:train:0", 7)
    assert salvage_ids(b"\x0a\xff\xff\xff") == (None, None)
    assert salvage_ids(b"") == (None, None)


def test_threads_follow_the_free_cores() -> None:
    assert choose_threads("auto", cpus=16, load=0.2) == 16
    assert choose_threads("auto", cpus=2, load=1.7) == 1  # a busy 2-core machine: one thread, not two
    assert choose_threads("auto", cpus=8, load=30.0) == 1
    assert choose_threads("3") == 3
    with pytest.raises(ValueError, match="positive number or auto"):
        choose_threads("0")


def test_a_repeated_log_line_is_rate_limited() -> None:
    from trainer.service.server import RateLimit

    limit = RateLimit(burst=3, window=0.2)
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (),
                               None)
    shown = sum(limit.filter(logging.makeLogRecord(record.__dict__)) for _ in range(1000))
    assert shown == 3
    time.sleep(0.25)
    again = logging.makeLogRecord(record.__dict__)
    assert limit.filter(again) and "997 more like this" in again.getMessage()


def test_a_zstd_body_is_decompressed_up_to_the_cap() -> None:
    import zstandard

    from trainer.service.routers.training import decompress

    payload = np.arange(10_000, dtype=np.int64).tobytes()
    assert decompress(zstandard.ZstdCompressor().compress(payload), len(payload)) == payload
    with pytest.raises(ServiceError, match="holds more than") as err:
        decompress(zstandard.ZstdCompressor().compress(payload), len(payload) - 1)
    assert err.value.status == 413
    with pytest.raises(ServiceError, match="ends after"):
        decompress(zstandard.ZstdCompressor().compress(payload)[:-20], len(payload))
