"""Chart data without a UI: per-column decimation of the visible window and TensorBoard's debiased EMA.

Charts keep every point; what is drawn is at most four points per column (first, min, max, last of the points
that fall into it), so a one-step spike in a million-step run stays visible and drawing cost does not grow with
run length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BLOCK = 256  # points per block summary
BLOCKS_PER_COLUMN = 8


MAX_DRAWABLE = 1e250  # larger magnitudes overflow the plotting arithmetic: shown as off-scale marks, not drawn


@dataclass(frozen=True)
class Decimated:
    """What a chart draws for one series: x/y with NaN where the line breaks, and where values were not drawn.

    Two kinds of gap are kept apart: NaN/Inf values (a diverged run) and finite values that cannot be drawn (zero or
    negative on a log axis, or beyond MAX_DRAWABLE); a user must never read the second kind as a NaN.
    """

    x: np.ndarray
    y: np.ndarray
    nonfinite_x: np.ndarray  # steps (bucket starts) where NaN or Inf occurred: drawn as marked gaps
    first_bad_step: int | None = None  # the exact first step in the window with a NaN/Inf
    unplottable_x: np.ndarray = field(default_factory=lambda: np.empty(0))  # finite values that were not drawn
    first_unplottable_step: int | None = None

    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Runs of finite points, each drawn as its own line so a gap never becomes a fake zero."""
        finite = np.isfinite(self.y)
        if finite.all():
            return [(self.x, self.y)] if len(self.x) else []
        idx = np.flatnonzero(finite)
        if not len(idx):
            return []
        breaks = np.flatnonzero(np.diff(idx) > 1) + 1
        return [(self.x[part], self.y[part]) for part in np.split(idx, breaks)]


class BlockSummary:
    """First/min/max/last and the count of non-finite values of every complete block of BLOCK points.

    Kept up to date as the series grows (only new complete blocks are summarized), and rebuilt when the series'
    past changed. Decimating a wide window from blocks costs O(blocks), not O(points), and keeps every spike.
    """

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self.version = -1
        self.n = 0  # points covered by complete blocks
        self.first = self.mins = self.maxs = self.last = np.empty(0)
        self.bad = np.empty(0, dtype=np.int64)

    def update(self, values: np.ndarray, version: int) -> BlockSummary:
        if version != self.version or len(values) < self.n:
            self.__init__(self.block)  # type: ignore[misc]
            self.version = version
        done, total = self.n // self.block, len(values) // self.block
        if total > done:
            chunk = values[done * self.block : total * self.block].reshape(-1, self.block)
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(chunk) | (np.abs(chunk) > MAX_DRAWABLE)
            clean = np.where(bad, np.nan, chunk)
            self.first = np.concatenate([self.first, clean[:, 0]])
            self.last = np.concatenate([self.last, clean[:, -1]])
            self.mins = np.concatenate([self.mins, np.fmin.reduce(clean, axis=1)])
            self.maxs = np.concatenate([self.maxs, np.fmax.reduce(clean, axis=1)])
            self.bad = np.concatenate([self.bad, bad.sum(axis=1)])
            self.n = total * self.block
        return self


def window(steps: np.ndarray, lo: float | None, hi: float | None) -> slice:
    """Index range of the points with lo <= step <= hi (steps are sorted)."""
    a = 0 if lo is None else int(np.searchsorted(steps, lo, side="left"))
    b = len(steps) if hi is None else int(np.searchsorted(steps, hi, side="right"))
    return slice(a, b)


def _raw(steps: np.ndarray, values: np.ndarray, log_y: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y with every undrawable value as NaN, and the masks of NaN/Inf and of finite-but-undrawable values."""
    v = values.astype(np.float64, copy=True)
    nonfinite = ~np.isfinite(v)
    with np.errstate(invalid="ignore"):
        unplottable = ~nonfinite & (np.abs(v) > MAX_DRAWABLE)
        if log_y:
            unplottable |= ~nonfinite & (v <= 0)
    v[nonfinite | unplottable] = np.nan
    return steps.astype(np.float64), v, nonfinite, unplottable


def _first(x: np.ndarray, mask: np.ndarray) -> int | None:
    return int(x[mask][0]) if mask.any() else None


def decimate(steps: np.ndarray, values: np.ndarray, columns: int, lo: float | None = None,
             hi: float | None = None, log_y: bool = False, summary: BlockSummary | None = None) -> Decimated:
    """First/min/max/last per column of the points in [lo, hi]; undrawable values become marked gaps.

    With a BlockSummary of the same series, windows much wider than the chart are decimated from blocks.
    """
    sl = window(steps, lo, hi)
    a, b = sl.start, sl.stop
    columns = max(1, columns)
    # Blocks only when every column covers many of them: a block straddling a column edge then shifts at most
    # an eighth of a column, while a block wider than a column would draw its extremes at the wrong steps.
    if summary is not None and not log_y and b - a >= BLOCKS_PER_COLUMN * summary.block * columns:
        B = summary.block
        ba, bb = -(-a // B), min(b // B, summary.n // B)
        if bb - ba >= 2:
            return _decimate_blocks(steps, values, columns, lo, hi, summary, a, b, ba, bb)
    x, v, nonfinite, unplottable = _raw(steps[sl], values[sl], log_y)
    first_bad, first_off = _first(x, nonfinite), _first(x, unplottable)
    if len(x) <= 4 * columns:
        return Decimated(x, v, x[nonfinite], first_bad, x[unplottable], first_off)
    return _bucketize(x, v, nonfinite, unplottable, columns, lo, hi, first_bad, first_off)


def _decimate_blocks(steps: np.ndarray, values: np.ndarray, columns: int, lo: float | None, hi: float | None,
                     summary: BlockSummary, a: int, b: int, ba: int, bb: int) -> Decimated:
    B = summary.block
    hx, hv, hbad, hoff = _raw(steps[a : ba * B], values[a : ba * B], False)
    tx, tv, tbad, toff = _raw(steps[bb * B : b], values[bb * B : b], False)
    xs = steps[ba * B : bb * B : B].astype(np.float64)
    xe = steps[ba * B + B - 1 : bb * B : B].astype(np.float64)
    blocks = slice(ba, bb)
    bx = np.stack([xs, xs, xs, xe], axis=1).ravel()
    bv = np.stack([summary.first[blocks], summary.mins[blocks], summary.maxs[blocks], summary.last[blocks]], axis=1).ravel()
    marked = np.repeat(summary.bad[blocks] > 0, 4)
    # A block with marks: which kind, and the exact first step of each (read from the raw values of that block).
    block_bad = np.zeros_like(marked)
    block_off = np.zeros_like(marked)
    first_bad, first_off = _first(hx, hbad), _first(hx, hoff)
    for k in (ba + np.flatnonzero(summary.bad[blocks] > 0)).tolist():
        raw = values[k * B : (k + 1) * B]
        nonfinite = ~np.isfinite(raw)
        with np.errstate(invalid="ignore"):
            off = ~nonfinite & (np.abs(raw) > MAX_DRAWABLE)
        row = slice((k - ba) * 4, (k - ba + 1) * 4)
        block_bad[row], block_off[row] = nonfinite.any(), off.any()
        if first_bad is None and nonfinite.any():
            first_bad = int(steps[k * B + int(np.flatnonzero(nonfinite)[0])])
        if first_off is None and off.any():
            first_off = int(steps[k * B + int(np.flatnonzero(off)[0])])
        if first_bad is not None and first_off is not None:
            break
    if first_bad is None:
        first_bad = _first(tx, tbad)
    if first_off is None:
        first_off = _first(tx, toff)
    bv = np.where(np.isfinite(bv) & (np.abs(np.nan_to_num(bv)) <= MAX_DRAWABLE), bv, np.nan)
    x = np.concatenate([hx, bx, tx])
    v = np.concatenate([hv, bv, tv])
    bad = np.concatenate([hbad, block_bad, tbad])
    off = np.concatenate([hoff, block_off, toff])
    return _bucketize(x, v, bad, off, columns, lo, hi, first_bad, first_off)


def _bucketize(x: np.ndarray, v: np.ndarray, bad: np.ndarray, off: np.ndarray, columns: int, lo: float | None,
               hi: float | None, first_bad: int | None, first_off: int | None) -> Decimated:
    n = len(x)
    x0 = float(x[0] if lo is None else lo)
    x1 = float(x[-1] if hi is None else hi)
    span = max(x1 - x0, 1e-12)
    bucket = np.clip(((x - x0) * (columns / span)).astype(np.int64), 0, columns - 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], n] - 1
    with np.errstate(all="ignore"):
        vmin = np.fmin.reduceat(v, starts)
        vmax = np.fmax.reduceat(v, starts)
    first = v[starts]
    last = v[ends]
    first = np.where(np.isnan(first), vmin, first)
    last = np.where(np.isnan(last), vmax, last)
    xs, xe = x[starts], x[ends]
    # Four points per column; a column with no drawable value stays NaN and so breaks the line.
    out_x = np.stack([xs, xs, xs, xe], axis=1).ravel()
    out_y = np.stack([first, vmin, vmax, last], axis=1).ravel()
    has_bad = np.add.reduceat(bad.astype(np.int64), starts) > 0
    has_off = np.add.reduceat(off.astype(np.int64), starts) > 0
    return Decimated(out_x, out_y, xs[has_bad], first_bad, xs[has_off], first_off)


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
