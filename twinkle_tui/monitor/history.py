"""What the rules keep about a run between checks, so a check reads only the points that arrived since the last one
and still judges the whole run.

Per metric a `SeriesState` folds every point in once: the first NaN/Inf, runs of non-finite, zero or collapsed
values at the end, the early level, the best smoothed level and where the series rose from it, the best 20-point
mean. The windowed rules (spikes against the 100 steps before, streaks) see the points they have not scanned yet
plus enough points before them, and at least the last WINDOW points, so a run shorter than that is judged exactly
as a whole; what a windowed rule found earlier is remembered (by `run_rules`) once its points scroll out of the
window. A check of a run that grew by k points therefore costs O(k + WINDOW), not O(its length).

A run's history lives as long as the monitor's view of it (held weakly): the dashboard's, headless's and doctor's
monitors each keep their own.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from twinkle_tui.monitor.console_metrics import ConsoleMetrics
from twinkle_tui.runs.metrics import MetricSeries

if TYPE_CHECKING:
    from twinkle_tui.runs.store import LogTail, RunCache

WINDOW = 1024  # points the windowed rules see at least: a shorter run is judged whole
CONTEXT = 128  # points before the unscanned ones (the spike rules look 100 steps back)
EARLY_POINTS = 10  # the early level is the median of the first finite values
LEVEL_POINTS = 9  # the smoothed level is a rolling median: one spike never sets it
RISE = 3.0  # a level this many times the best one counts as risen from it
DROP = 1 / 3  # a value below this fraction of the early level counts as collapsed


@dataclass(frozen=True)
class SeriesSummary:
    """One metric's whole history in a few numbers (see SeriesState)."""

    count: int = 0
    finite: int = 0
    first_step: int | None = None
    last_step: int | None = None
    vmin: float | None = None
    vmax: float | None = None
    first_bad: tuple[int, float, tuple[str, ...]] | None = None  # step, value, the points before it
    bad_run: int = 0  # non-finite points at the end, in a row
    bad_run_step: int | None = None
    early: float | None = None
    best: float | None = None  # the lowest smoothed level
    best_step: int | None = None
    rise_step: int | None = None  # where the smoothed level first reached RISE x best after the best
    mean20_max: float | None = None  # the best 20-point mean
    mean20_max_step: int | None = None
    zero_run: int = 0  # exact zeros at the end, in a row
    zero_run_step: int | None = None
    drop_run: int = 0  # values below DROP x the early level at the end, in a row
    drop_run_step: int | None = None


def _trailing(mask: np.ndarray, steps: np.ndarray, run: int, run_step: int | None) -> tuple[int, int | None]:
    """Extend a run of hits at the end of a series by a batch of new points."""
    if not len(mask):
        return run, run_step
    misses = np.flatnonzero(~mask)
    if not len(misses):
        return run + len(mask), run_step if run else int(steps[0])
    first = int(misses[-1]) + 1
    tail = len(mask) - first
    return tail, int(steps[first]) if tail else None


def _rolling(values: np.ndarray, k: int, stat: Any) -> np.ndarray:
    if len(values) < k:
        return np.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(stat(np.lib.stride_tricks.sliding_window_view(values, k), axis=1))


@dataclass
class SeriesState:
    """One metric folded in point by point (each point once)."""

    series: MetricSeries
    version: int
    n: int = 0  # points folded in
    scanned: int = 0  # points the windowed rules have seen
    s: dict[str, Any] = field(default_factory=dict)
    _early: list[float] = field(default_factory=list)
    _tail_steps: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # last points, finite
    _tail_values: np.ndarray = field(default_factory=lambda: np.empty(0))
    _before: list[tuple[int, float]] = field(default_factory=list)  # the last 3 points (for a first NaN)

    def matches(self, series: MetricSeries) -> bool:
        return self.series is series and self.version == series.version and len(series) >= self.n

    def update(self, steps: np.ndarray, values: np.ndarray) -> None:
        if not len(values):
            return
        s = self.s
        s["count"] = s.get("count", 0) + len(values)
        s.setdefault("first_step", int(steps[0]))
        s["last_step"] = int(steps[-1])
        finite = np.isfinite(values)
        if s.get("first_bad") is None and not finite.all():
            i = int(np.argmin(finite))
            before = [*self._before, *zip(steps[:i].tolist(), values[:i].tolist(), strict=True)][-3:]
            s["first_bad"] = (int(steps[i]), float(values[i]),
                              tuple(f"step {int(st)}: {v:.4g}" for st, v in before))
        self._before = [*self._before, *zip(steps[-3:].tolist(), values[-3:].tolist(), strict=True)][-3:]
        s["bad_run"], s["bad_run_step"] = _trailing(~finite, steps, s.get("bad_run", 0), s.get("bad_run_step"))
        s["zero_run"], s["zero_run_step"] = _trailing(values == 0, steps, s.get("zero_run", 0), s.get("zero_run_step"))
        fs, fv = steps[finite], values[finite]
        if not len(fv):
            return
        s["finite"] = s.get("finite", 0) + len(fv)
        s["vmin"] = min(s.get("vmin", np.inf), float(fv.min()))
        s["vmax"] = max(s.get("vmax", -np.inf), float(fv.max()))
        if len(self._early) < EARLY_POINTS:
            self._early.extend(fv[: EARLY_POINTS - len(self._early)].tolist())
            if len(self._early) == EARLY_POINTS:
                s["early"] = float(np.median(self._early))
        if s.get("early") is not None:
            low = fv < DROP * s["early"] if s["early"] > 0 else np.zeros(len(fv), dtype=bool)
            s["drop_run"], s["drop_run_step"] = _trailing(low, fs, s.get("drop_run", 0), s.get("drop_run_step"))
        all_steps = np.concatenate([self._tail_steps, fs])
        all_values = np.concatenate([self._tail_values, fv])
        self._level(all_steps, all_values)
        self._mean20(all_steps, all_values)
        keep = max(LEVEL_POINTS, 20) - 1
        self._tail_steps, self._tail_values = all_steps[-keep:], all_values[-keep:]

    def _level(self, steps: np.ndarray, values: np.ndarray) -> None:
        s = self.s
        levels = _rolling(values, LEVEL_POINTS, np.median)
        if not len(levels):
            return
        level_steps = steps[LEVEL_POINTS - 1 :]
        start = 0
        j = int(np.argmin(levels))
        if s.get("best") is None or levels[j] < s["best"]:
            s["best"], s["best_step"], s["rise_step"] = float(levels[j]), int(level_steps[j]), None
            start = j + 1
        if s.get("rise_step") is None and s["best"] > 0:
            risen = np.flatnonzero(levels[start:] >= RISE * s["best"])
            if len(risen):
                s["rise_step"] = int(level_steps[start + int(risen[0])])

    def _mean20(self, steps: np.ndarray, values: np.ndarray) -> None:
        s = self.s
        means = _rolling(values, 20, np.mean)
        if not len(means):
            return
        j = int(np.argmax(means))
        if s.get("mean20_max") is None or means[j] > s["mean20_max"]:
            s["mean20_max"], s["mean20_max_step"] = float(means[j]), int(steps[19 + j])

    def summary(self) -> SeriesSummary:
        return SeriesSummary(**self.s)


class RunHistory:
    """Everything the rules keep about one run between checks."""

    def __init__(self) -> None:
        self.states: dict[str, SeriesState] = {}
        self.console = ConsoleMetrics()
        self.log_seen = 0
        self.remembered: dict[tuple[str, str], Any] = {}  # (rule, subject) -> the last finding a windowed rule made
        self.lock = threading.RLock()

    def read_log(self, log: LogTail) -> None:
        """Feed the log lines that arrived since the last check to the console-metrics parser."""
        fresh = log.since(self.log_seen)
        self.log_seen = log.total_lines
        if fresh:
            self.console.feed(fresh)

    def sync(self, series: dict[str, MetricSeries]) -> dict[str, SeriesState]:
        """Fold each series' new points into its state (a series rewritten by a relaunch starts over)."""
        out = {}
        for name, ser in series.items():
            state = self.states.get(name)
            if state is None or not state.matches(ser):
                if state is not None:
                    self.remembered.clear()  # what was found in the old points is found again in the new scan
                state = self.states[name] = SeriesState(ser, ser.version)
            if len(ser) > state.n:
                steps, values = ser.snapshot()
                state.update(steps[state.n :], values[state.n :])
                state.n = len(ser)
            out[name] = state
        return out

    def window(self, state: SeriesState) -> tuple[np.ndarray, np.ndarray]:
        """The points a windowed rule must look at: the unscanned ones, CONTEXT before them, at least WINDOW."""
        steps, values = state.series.snapshot()
        size = max(WINDOW, state.n - state.scanned + CONTEXT)
        return steps[-size:].copy(), values[-size:].copy()

    def mark_scanned(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            state = self.states.get(name)
            if state is not None:
                state.scanned = max(state.scanned, n)


_HISTORIES: weakref.WeakKeyDictionary[RunCache, RunHistory] = weakref.WeakKeyDictionary()
_HISTORIES_LOCK = threading.Lock()


def history_for(view: RunCache) -> RunHistory:
    """The history kept for this view of a run (a new view, a new history: doctor reads a run whole, once)."""
    with _HISTORIES_LOCK:
        history = _HISTORIES.get(view)
        if history is None:
            history = _HISTORIES[view] = RunHistory()
        return history
