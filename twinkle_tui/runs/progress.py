"""Step rate, ETA and elapsed time of a run, derived from its metrics timestamps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from twinkle_tui.runs.store import RunCache, RunEvent

RATE_WINDOW = 50  # points: long enough to smooth step-time noise, short enough to follow a slowdown


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: step/total, steps per second over the recent window, ETA and elapsed seconds."""

    step: int
    total: int | None
    rate: float | None
    eta: float | None
    elapsed: float | None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)

    @classmethod
    def of(cls, view: RunCache, now: float | None = None) -> RunProgress:
        now = time.time() if now is None else now
        step, total = view.last_step, view.total_steps
        steps, ts = view.metrics.ts.steps, view.metrics.ts.values
        rate = None
        if len(ts) >= 2:
            k = min(RATE_WINDOW, len(ts))
            t0, t1 = float(ts[-k]), float(ts[-1])
            # Running time only: a pause (or the gap before a relaunch) inside the window is not step time.
            dt = (t1 - t0) - idle_seconds(not_running(view.events.events, now), t0, t1)
            ds = float(steps[-1] - steps[-k])
            if dt > 0 and ds > 0:
                rate = ds / dt
        active = view.status.is_active
        eta = (total - step) / rate if rate and total and total > step and active else None
        return cls(step, total, rate, eta, view.meta.running_seconds(now))  # pauses and gaps between launches not counted


def not_running(events: list[RunEvent], now: float) -> list[tuple[float, float]]:
    """Intervals in which the run's process did no steps: paused (pause -> resume), or ended and not yet
    relaunched (exit -> the next launch)."""
    out: list[tuple[float, float]] = []
    since: float | None = None
    for ev in sorted(events, key=lambda e: e.ts):
        if ev.kind == "pause" or (ev.kind == "exit" and since is None):
            since = ev.ts
        elif ev.kind in ("resume", "launch") and since is not None and not ev.data.get("relaunch"):
            out.append((since, ev.ts))
            since = None
    if since is not None:
        out.append((since, now))
    return out


def idle_seconds(intervals: list[tuple[float, float]], t0: float, t1: float) -> float:
    """How much of [t0, t1] the intervals cover."""
    return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in intervals)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "--"
    return f"{rate:.2f} step/s" if rate >= 1 else f"{1 / rate:.1f} s/step"


def format_value(value: float) -> str:
    if not np.isfinite(value):
        return "NaN" if np.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    magnitude = abs(value)
    if magnitude and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"
