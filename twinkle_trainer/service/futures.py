"""Futures, the store that keeps them until the client has read them, and the one worker thread that computes.

Every request is answered at once with a future; the worker runs the computations one at a time. A finished
result is kept until the client has retrieved it, then a little longer for a retry (RESULT_KEEP seconds, and at
most KEEP_FETCHED per client), so a long-running client does not grow the service's memory step by step.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twinkle_trainer.service.errors import EngineError, ServiceError

log = logging.getLogger(__name__)

RESULT_KEEP = 600.0  # seconds a retrieved result stays retrievable (the SDK retries a failed read)
KEEP_FETCHED = 32  # retrieved results kept per client, newest first (past READ_RETRY after their read)
READ_RETRY = 60.0  # seconds every retrieved result stays, whatever the count: the SDK's read times out after 45 s,
# and one whose answer was lost (a slow, loaded machine) reads again; a result dropped by count then was a 404
KEEP_UNFETCHED = 512  # finished results nobody has asked for yet, per client (an abandoned future is dropped)

Result = dict[str, Any] | bytes
Job = Callable[[], Result]


@dataclass(eq=False)
class Future:
    """One request's answer: JSON, protobuf bytes, or an error with its category (user or server)."""

    request_id: str
    owner: str | None = None  # the model or sampling session it belongs to (its results are bounded per owner)
    model_id: str | None = None  # the training model, for the SDK
    done: threading.Event = field(default_factory=threading.Event)
    json: dict[str, Any] | None = None
    proto: bytes | None = None
    error: tuple[str, str] | None = None
    finished_at: float | None = None
    fetched_at: float | None = None
    on_done: Callable[[Future], None] | None = None  # told once, when it finishes
    cancellable: bool = False  # a sample (the SDK cancels the samples it abandons), never a training step
    cancelled: bool = False  # the worker skips it if it has not started

    def resolve(self, result: Result) -> None:
        if isinstance(result, bytes):
            self.proto = result
        else:
            self.json = result
        self._finish()

    def fail(self, message: str, category: str = "user") -> None:
        self.error = (message, category)
        self._finish()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


class CompletionQueue:
    """The finished and failed samples of one sampling client (a session and its clone number), for the SDK's
    batched retrieve (`/api/v1/retrieve_futures`): each completion gets the next cursor; a poll returns those after
    the cursor it names, and events at or before it are dropped."""

    KEEP = 10_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.cursor = 0

    def push(self, f: Future) -> None:
        event: dict[str, Any] = {"state": "failed" if f.error else "finished", "request_id": f.request_id}
        if f.error is None:
            size = len(f.proto) if f.proto is not None else len(json.dumps(f.json or {}))
            event["response_payload_uncompressed_size"] = size
        with self.lock:
            self.cursor += 1
            self.events.append((self.cursor, event))
            del self.events[: -self.KEEP]  # a client that never polls (an older SDK) cannot grow it without bound

    def after(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            self.events = [(c, e) for c, e in self.events if c > cursor]
            return [e for _, e in self.events], max([cursor] + [c for c, _ in self.events])


class FutureStore:
    """Every future by request id, until its result has been read (and a retry window has passed)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.futures: dict[str, Future] = {}

    def new(self, owner: str | None = None, model_id: str | None = None) -> Future:
        f = Future(f"req-{uuid.uuid4().hex}", owner, model_id)
        with self.lock:
            self.futures[f.request_id] = f
        return f

    def get(self, request_id: str) -> Future:
        with self.lock:
            f = self.futures.get(request_id)
        if f is None:
            raise ServiceError(f"no request {request_id!r} (its result was read more than {READ_RETRY:.0f} s ago, "
                               "or the service restarted)", 404)
        return f

    def fetched(self, f: Future) -> None:
        """The client has read this result; it stays a little longer for a retry of the read."""
        if f.done.is_set() and f.fetched_at is None:
            f.fetched_at = self.clock()

    def mark_fetched(self, request_ids: list[str]) -> None:
        with self.lock:
            found = [self.futures[r] for r in request_ids if r in self.futures]
        for f in found:
            self.fetched(f)

    def cancel(self, request_id: str) -> str:
        """The SDK's cancel of a sample it abandoned (a timeout, or the caller cancelled its future): one not yet
        started never runs, a running one finishes unseen; either way nothing is queued for the client and the
        future is forgotten. Idempotent: a finished or forgotten request is "done". Training requests cannot be
        cancelled (their order is the client's)."""
        with self.lock:
            f = self.futures.get(request_id)
            if f is None:
                return "done"
            if not f.cancellable:
                raise ServiceError("only sampling requests can be cancelled", 400)
            self.futures.pop(request_id)
            f.on_done = None
            f.cancelled = True
        status = "done" if f.done.is_set() else "cancelled"
        log.info("sample %s cancelled by its client (%s)", request_id,
                 "after it finished" if status == "done" else "its work is skipped or its result dropped")
        return status

    def __len__(self) -> int:
        return len(self.futures)

    def prune(self) -> int:
        """Drop results read long enough ago, read results past KEEP_FETCHED per client (once READ_RETRY has
        passed since their read), and unread results past KEEP_UNFETCHED per client (the oldest first). Returns how
        many were dropped."""
        now = self.clock()
        cutoff = now - RESULT_KEEP
        with self.lock:
            by_owner: dict[str | None, list[Future]] = {}
            for f in self.futures.values():
                if f.done.is_set():
                    by_owner.setdefault(f.owner, []).append(f)
            drop = [f for f in self.futures.values() if f.fetched_at is not None and f.fetched_at < cutoff]
            for owned in by_owner.values():
                read = sorted((f for f in owned if f.fetched_at is not None), key=lambda f: f.fetched_at or 0.0)
                unread = sorted((f for f in owned if f.fetched_at is None), key=lambda f: f.finished_at or 0.0)
                drop += [f for f in read[:-KEEP_FETCHED] if (f.fetched_at or 0.0) < now - READ_RETRY]
                drop += unread[:-KEEP_UNFETCHED]
            for f in drop:
                self.futures.pop(f.request_id, None)
        return len(drop)


USER_ERRORS: tuple[type[Exception], ...] = (ServiceError, EngineError)


class Worker:
    """One thread that runs every computation in submission order. A request's failure is its future's error:
    a refusal (bad input, unsupported option, over the memory budget) is a user error, anything else a server
    error with its type."""

    def __init__(self, user_errors: tuple[type[Exception], ...] = USER_ERRORS) -> None:
        self.user_errors = user_errors
        self.queue: queue.Queue[tuple[Job, Future] | None] = queue.Queue()
        self.busy_since: float | None = None
        self.thread = threading.Thread(target=self._run, name="twinkle-service-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job, future: Future) -> None:
        self.queue.put((job, future))

    def close(self, wait: float) -> bool:
        """No more work after what is queued; wait up to `wait` seconds for the thread to finish. True if it did:
        leaving a thread inside torch at interpreter exit aborts the process ("terminate called ...")."""
        self.queue.put(None)
        self.thread.join(wait)
        return not self.thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            job, future = item
            if future.cancelled:  # abandoned by its client before it started: the work is not done
                log.info("sample %s skipped: cancelled before it ran", future.request_id)
                future.fail("cancelled by the client")
                continue
            self.busy_since = time.monotonic()
            try:
                future.resolve(job())
            except self.user_errors as exc:
                future.fail(str(exc), "user")
            except MemoryError:
                future.fail("the service ran out of memory computing this request; lower --memory-budget or send "
                            "smaller batches", "user")
            except Exception as exc:
                log.error("request %s failed:\n%s", future.request_id, traceback.format_exc())
                future.fail(f"{type(exc).__name__}: {exc}".strip(), "server")
            finally:
                self.busy_since = None
