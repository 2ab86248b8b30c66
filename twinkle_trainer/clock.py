"""Running time: how long this process has actually run, pauses (SIGSTOP) not counted. Standard library only."""

from __future__ import annotations

import threading
import time


class RunningClock:
    """Seconds this process has spent running: time.monotonic() less the time it was stopped (a pause is SIGSTOP,
    which no Python code can observe). A daemon thread ticks; a gap between ticks far longer than a tick is time
    the process did not run. Step times and rates built on it count only running time."""

    TICK = 0.05
    GAP = 1.0  # a tick this late means the process was stopped

    def __init__(self) -> None:
        self.stopped = 0.0
        self._last = time.monotonic()
        threading.Thread(target=self._tick, name="twinkle-running-clock", daemon=True).start()

    def _tick(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            late = now - self._last - self.TICK
            if late > self.GAP:
                self.stopped += late
            self._last = now

    def __call__(self) -> float:
        now = time.monotonic()
        pending = now - self._last - self.TICK  # a stop the ticking thread has not counted yet (after SIGCONT,
        # this thread may run before it does)
        return now - self.stopped - (pending if pending > self.GAP else 0.0)


_CLOCK: RunningClock | None = None


def running_time() -> float:
    """The process's running clock (see RunningClock), started on first use."""
    global _CLOCK
    if _CLOCK is None:
        _CLOCK = RunningClock()
    return _CLOCK()
