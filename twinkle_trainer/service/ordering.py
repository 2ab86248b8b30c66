"""The order of one training model's requests: by seq_id (the SDK numbers them from 1), whatever order they arrive
in; a seq_id sent twice (a retry) gets the first one's future.

A request the service refuses still uses up its seq_id (`skip`), so the client's later requests run instead of
waiting forever for it. A request that never arrives at all (its body could not even be read, so its seq_id is
unknown) holds the queue for at most `gap_timeout` seconds: then the sequence moves on past the gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from twinkle_trainer.service.futures import Future

SEEN_KEEP = 64  # seq_ids remembered behind the current one, to answer a retry with its first future
GAP_TIMEOUT = 30.0


@dataclass
class _Waiting:
    future: Future
    go: Callable[[], None]
    since: float


class RequestOrder:
    """Runs `go` of each request in seq_id order; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, gap_timeout: float = GAP_TIMEOUT) -> None:
        self.clock, self.gap_timeout = clock, gap_timeout
        self.next_seq = 1
        self.lock = threading.Lock()
        self.pending: dict[int, _Waiting] = {}
        self.seen: dict[int, Future] = {}
        self.skipped: list[int] = []  # seq_ids passed over (refused, or never arrived), newest last

    def submit(self, seq_id: int | None, new: Callable[[], Future], go: Callable[[Future], None]) -> Future:
        """The future of this request: a new one whose `go` runs in turn, or a retry's earlier one."""
        with self.lock:
            if seq_id is not None and seq_id in self.seen:
                return self.seen[seq_id]
            f = new()
            if seq_id is None:
                go(f)
                return f
            self.seen[seq_id] = f
            if seq_id < self.next_seq:
                f.fail(f"seq_id {seq_id} comes after {self.next_seq - 1} already ran", "user")
            elif seq_id > self.next_seq:
                self.pending[seq_id] = _Waiting(f, lambda: go(f), self.clock())
            else:
                go(f)
                self._advance(self.next_seq + 1)
            return f

    def skip(self, seq_id: int | None) -> None:
        """A refused request: its seq_id is used up, and the requests after it run."""
        if seq_id is None:
            return
        with self.lock:
            if seq_id in self.seen or seq_id < self.next_seq:
                return
            self.skipped.append(seq_id)
            del self.skipped[:-SEEN_KEEP]
            if seq_id == self.next_seq:
                self._advance(seq_id + 1)
            else:
                self.pending[seq_id] = _Waiting(Future("skipped"), lambda: None, self.clock())

    def expire_gaps(self) -> list[int]:
        """Move past seq_ids that have been missing for gap_timeout while later ones wait; returns them."""
        with self.lock:
            if not self.pending or min(self.pending) == self.next_seq:
                return []
            oldest = min(w.since for w in self.pending.values())
            if self.clock() - oldest < self.gap_timeout:
                return []
            first = min(self.pending)
            missing = list(range(self.next_seq, first))
            self.skipped += missing
            del self.skipped[:-SEEN_KEEP]
            self._advance(first)
            return missing

    def _advance(self, to: int) -> None:
        self.next_seq = to
        while self.next_seq in self.pending:
            self.pending.pop(self.next_seq).go()
            self.next_seq += 1
        for old in [s for s in self.seen if s < self.next_seq - SEEN_KEEP]:
            del self.seen[old]

    @property
    def waiting(self) -> int:
        return len(self.pending)
