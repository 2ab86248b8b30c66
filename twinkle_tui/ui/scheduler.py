"""RedrawScheduler: which parts of the screen need drawing, and when.

A key press redraws at once; data that streams in (a run writing metrics every few milliseconds) redraws at most
once per interval, and only the parts it changed. Workers mark parts from their threads; the UI thread takes
what is due. The clock is injected so tests need no sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ALL_PARTS = frozenset({"list", "status", "charts", "log"})


class RedrawScheduler:
    def __init__(self, clock: Callable[[], float] = time.monotonic, data_interval: float = 1.0) -> None:
        self.clock = clock
        self.data_interval = data_interval
        self._lock = threading.Lock()
        self._now: set[str] = set()  # drawn on the next take()
        self._data: set[str] = set()  # drawn once data_interval has passed since the last data draw
        self._data_drawn_at = float("-inf")

    def now(self, *parts: str) -> None:
        """Parts to draw at the next opportunity (a key changed them); no parts means everything."""
        with self._lock:
            self._now |= set(parts) or ALL_PARTS

    def data(self, *parts: str) -> None:
        """Parts whose data changed (from any thread); drawn at most once per data interval."""
        with self._lock:
            self._data |= set(parts) or ALL_PARTS

    def take(self) -> set[str]:
        """The parts due now; they count as drawn."""
        with self._lock:
            due, self._now = self._now, set()
            if self._data and self.clock() - self._data_drawn_at >= self.data_interval:
                due |= self._data
                self._data = set()
                self._data_drawn_at = self.clock()
            return due

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be drawn."""
        with self._lock:
            return not self._now and not self._data
