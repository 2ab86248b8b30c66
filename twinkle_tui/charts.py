"""Chart data without a UI: per-column decimation of the visible window and TensorBoard's debiased EMA.

Charts keep every point; what is drawn is at most four points per column (first, min, max, last of the points
that fall into it), so a one-step spike in a million-step run stays visible and drawing cost does not grow with
run length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decimated:
    """What a chart draws for one series: x/y with NaN where the line breaks, and where values were not finite."""

    x: np.ndarray
    y: np.ndarray
    nonfinite_x: np.ndarray  # steps (bucket starts) where NaN or Inf occurred: drawn as marked gaps

    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Runs of finite points, each drawn as its own line so a gap never becomes a fake zero."""
        finite = np.isfinite(self.y)
        if finite.all():
            return [(self.x, self.y)] if len(self.x) else []
        out = []
        idx = np.flatnonzero(finite)
        if not len(idx):
            return out
        breaks = np.flatnonzero(np.diff(idx) > 1) + 1
        for part in np.split(idx, breaks):
            out.append((self.x[part], self.y[part]))
        return out


def window(steps: np.ndarray, lo: float | None, hi: float | None) -> slice:
    """Index range of the points with lo <= step <= hi (steps are sorted)."""
    a = 0 if lo is None else int(np.searchsorted(steps, lo, side="left"))
    b = len(steps) if hi is None else int(np.searchsorted(steps, hi, side="right"))
    return slice(a, b)


def decimate(steps: np.ndarray, values: np.ndarray, columns: int, lo: float | None = None,
             hi: float | None = None, log_y: bool = False) -> Decimated:
    """First/min/max/last per column of the points in [lo, hi]; non-finite values become gaps.

    With log_y, values <= 0 cannot be drawn and are treated like non-finite ones.
    """
    sl = window(steps, lo, hi)
    s = steps[sl]
    v = values[sl].astype(np.float64, copy=True)
    bad = ~np.isfinite(v)
    if log_y:
        bad |= v <= 0
    v[bad] = np.nan
    n = len(s)
    columns = max(1, columns)
    if n <= 4 * columns:
        return Decimated(s.astype(np.float64), v, s[bad].astype(np.float64))
    x0 = float(s[0] if lo is None else lo)
    x1 = float(s[-1] if hi is None else hi)
    span = max(x1 - x0, 1e-12)
    bucket = np.minimum(((s - x0) * (columns / span)).astype(np.int64), columns - 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], n] - 1
    with np.errstate(all="ignore"):
        vmin = np.fmin.reduceat(v, starts)
        vmax = np.fmax.reduceat(v, starts)
    first = v[starts]
    last = v[ends]
    first = np.where(np.isnan(first), vmin, first)
    last = np.where(np.isnan(last), vmax, last)
    xs, xe = s[starts].astype(np.float64), s[ends].astype(np.float64)
    # Four points per column; a column with no finite value stays NaN and so breaks the line.
    x = np.stack([xs, xs, xs, xe], axis=1).ravel()
    y = np.stack([first, vmin, vmax, last], axis=1).ravel()
    has_bad = np.add.reduceat(bad.astype(np.int64), starts) > 0
    return Decimated(x, y, xs[has_bad])


@dataclass
class EmaState:
    """Carry of a debiased EMA over the finite points seen so far."""

    weight: float
    last: float = 0.0
    count: int = 0


def ema_extend(values: np.ndarray, state: EmaState) -> np.ndarray:
    """Debiased EMA (TensorBoard's smoothing) of `values`, continuing from `state`; NaN/Inf stay gaps and do not
    move the average. Vectorized in chunks short enough that w^-k stays well inside float range."""
    w = state.weight
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    x = values[finite]
    n = len(x)
    if not n:
        return out
    if w <= 0:
        y = x.copy()
        state.last, state.count = float(x[-1]), state.count + n
        out[finite] = y
        return out
    chunk = max(1, int(12 * math.log(10) / -math.log(w)))
    raw = np.empty(n)
    last = state.last
    for a in range(0, n, chunk):
        seg = x[a : a + chunk]
        wpow = w ** np.arange(len(seg))
        acc = np.cumsum(seg / wpow)
        y = w * wpow * last + (1 - w) * wpow * acc
        raw[a : a + len(seg)] = y
        last = float(y[-1])
    k = np.arange(state.count + 1, state.count + n + 1, dtype=np.float64)
    with np.errstate(under="ignore"):
        debias = 1.0 - np.power(w, k)
    out[finite] = raw / debias
    state.last, state.count = last, state.count + n
    return out


class SmoothedSeries:
    """A cached EMA of one metric series, extended as the series grows and rebuilt if its past changed."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.values = np.empty(0)
        self._state = EmaState(weight)
        self._key: tuple[int, int] = (-1, 0)

    def update(self, values: np.ndarray, version: int) -> np.ndarray:
        n = len(values)
        cached_version, cached_n = self._key
        if version != cached_version or n < cached_n:
            self._state = EmaState(self.weight)
            self.values = ema_extend(values, self._state)
        elif n > cached_n:
            self.values = np.concatenate([self.values, ema_extend(values[cached_n:], self._state)])
        self._key = (version, n)
        return self.values
