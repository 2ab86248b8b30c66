"""Incremental reading of metrics.jsonl into one numpy series per metric.

Nothing in a metrics file is fatal: a line that is not a JSON object, or has no integer step in [0, 2^53], is
skipped and counted; a value that is not a number (a string, a list) is kept aside and not charted; a number
too large for a float is skipped and counted. A torn last line waits for the next read.

With a MetricsCache, a table opened again starts from the cached arrays and parses only the bytes appended after
the offset they cover (see twinkle_tui.runs.metrics_cache); it writes the cache again when enough new bytes were
parsed, so reopening a run costs what changed since, not the run's length.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from twinkle_trainer.run_meta import MAX_STEP
from twinkle_tui.runs.metrics_cache import CachedMetrics, CachedSeries, CacheMiss, MetricsCache, mark_source
from twinkle_tui.runs.tail import FileTail

log = logging.getLogger(__name__)

RESERVED = ("step", "ts")
_NUMERIC_KINDS = frozenset("fiu")
READER_VERSION = 1  # bump when parsing rules change: caches written by another version are rebuilt
CACHE_MIN_BYTES = 1024 * 1024  # parsed bytes not in the cache before it is written (smaller files parse at once)


class MetricSeries:
    """All points of one metric in step order, kept in growable numpy buffers.

    A step written again (a relaunch from a checkpoint repeats steps) replaces the earlier value: the newest launch
    wins for repeated steps, and the history of steps not repeated is kept.
    """

    __slots__ = ("name", "_steps", "_values", "_n", "non_numeric", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps = np.empty(0, dtype=np.int64)
        self._values = np.empty(0, dtype=np.float64)
        self._n = 0
        self.non_numeric: list[tuple[int, Any]] = []
        self.version = 0  # bumped when points before the end change, so caches of derived data know

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n]

    @property
    def values(self) -> np.ndarray:
        return self._values[: self._n]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of the same length."""
        n = self._n
        return self._steps[:n], self._values[:n]

    def last(self) -> tuple[int, float] | None:
        if not self._n:
            return None
        return int(self._steps[self._n - 1]), float(self._values[self._n - 1])

    def reserve(self, capacity: int) -> None:
        if capacity > len(self._steps):
            steps = np.empty(capacity, dtype=np.int64)
            values = np.empty(capacity, dtype=np.float64)
            steps[: self._n] = self._steps[: self._n]
            values[: self._n] = self._values[: self._n]
            self._steps, self._values = steps, values

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Add points in file order (a later point for the same step wins)."""
        k = len(steps)
        if not k:
            return
        in_order = k == 1 or not bool(np.any(steps[1:] <= steps[:-1]))
        if in_order and (not self._n or steps[0] > self._steps[self._n - 1]):
            self._append(steps, values)
            return
        self._merge(steps, values)

    def _merge(self, steps: np.ndarray, values: np.ndarray) -> None:
        all_steps = np.concatenate([self._steps[: self._n], steps])
        all_values = np.concatenate([self._values[: self._n], values])
        order = np.argsort(all_steps, kind="stable")  # equal steps keep file order: the last one is the newest
        s, v = all_steps[order], all_values[order]
        keep = np.r_[s[1:] != s[:-1], True]
        s, v = s[keep], v[keep]
        self._steps, self._values, self._n = s.copy(), v.copy(), len(s)
        self.version += 1

    def _append(self, steps: np.ndarray, values: np.ndarray) -> None:
        k = len(steps)
        need = self._n + k
        if need > len(self._steps):
            self.reserve(max(need, len(self._steps) + len(self._steps) // 2, 64))
        self._steps[self._n : need] = steps
        self._values[self._n : need] = values
        self._n = need

    def adopt(self, steps: np.ndarray, values: np.ndarray, non_numeric: list[tuple[int, Any]]) -> None:
        """Take over arrays read from a cache (steps in order, one value each) as this series' points. Several series
        may share one steps array: a series never writes into its first n slots, and a buffer of exactly n slots is
        replaced (copied into a larger one) on the first append."""
        self._steps, self._values, self._n = steps, values, len(steps)
        self.non_numeric = non_numeric
        self.version += 1

    def keep_non_numeric(self, step: int, value: Any) -> None:
        kept = self.non_numeric
        if kept and kept[-1][0] >= step:
            kept[:] = [p for p in kept if p[0] != step]
        kept.append((step, value))
        if len(kept) > 10_000:  # a bound on what is never charted
            del kept[: len(kept) - 10_000]


class MetricsTable:
    """The metrics of one run, read from metrics.jsonl by byte offset (starting from `cache` when it is valid)."""

    def __init__(self, path: Path, cache: MetricsCache | None = None, cache_min_bytes: int = CACHE_MIN_BYTES) -> None:
        self.tail = FileTail(path)
        self.cache = cache
        self.cache_min_bytes = cache_min_bytes
        self.cached_offset = 0  # bytes of the file the cache on disk covers (as far as this table knows)
        self._cache_unread = cache is not None
        self.series: dict[str, MetricSeries] = {}
        self.ts = MetricSeries("ts")
        self.malformed = 0
        self.malformed_example = ""
        self.lines_read = 0
        self.generation = 0  # bumped on every change, so views can cache derived data
        self._capacity_hint = 0

    @property
    def path(self) -> Path:
        return self.tail.path

    @property
    def pending(self) -> bool:
        """More data waits than the last bounded read took."""
        return self.tail.pending

    @property
    def skipped(self) -> int:
        """Lines that were not read: malformed, or longer than the line cap."""
        return self.malformed + self.tail.overlong

    def names(self) -> list[str]:
        """Metric names that have at least one numeric point, in the order they first appeared."""
        return [name for name, s in self.series.items() if len(s)]

    def last_step(self) -> int | None:
        last = self.ts.last()
        return last[0] if last else None

    def read_new(self, max_bytes: int | None = None) -> bool:
        """Read what was appended since the last call (at most max_bytes); True if anything changed."""
        restored = self._cache_unread and self._restore()
        if not self.tail.has_new_data():
            return restored
        changed = restored
        first_block = True
        start = self.tail.offset
        for lines in self.tail.blocks(max_bytes):
            if first_block:
                first_block = False
                if self.tail.reset:
                    self._clear()
                    start, changed = 0, True
                if not self.lines_read:
                    self._capacity_hint = self._estimate_lines(len(lines), start)
                    self.ts.reserve(self._capacity_hint)
            changed |= self._ingest(lines)
        self._capacity_hint = 0
        if first_block and self.tail.reset:  # the file vanished or was emptied
            self._clear()
            changed = True
        if changed:
            self.generation += 1
        if self.cache is not None and not self.tail.pending and \
                self.tail.offset - self.cached_offset >= max(self.cache_min_bytes, self.cached_offset // 4):
            self._save()  # geometric steps: a growing run rewrites its cache O(log length) times
        return changed

    def _restore(self) -> bool:
        """Start from the cache if it is valid for this file; a miss of any kind just means parsing it all."""
        self._cache_unread = False
        assert self.cache is not None
        try:
            cached = self.cache.load(self.tail.path, READER_VERSION)
        except CacheMiss as exc:
            log.debug("metrics cache of %s not used: %s", self.tail.path, exc)
            return False
        self._clear()
        for c in cached.series:
            self.series[c.name] = _adopted(c)
        self.ts = _adopted(cached.ts)
        self.malformed, self.malformed_example = cached.malformed, cached.malformed_example
        self.lines_read = cached.lines_read
        m = cached.mark
        self.tail.resume_at(m.offset, m.ino, m.before, m.skipping, m.overlong)
        self.cached_offset = m.offset
        self.generation += 1
        return True

    def _save(self) -> None:
        """Write the cache of what was read so far (never fatal: without a cache the next open parses again)."""
        assert self.cache is not None
        tail = self.tail
        mark = mark_source(tail.path, tail.offset, tail.history, tail.skipping, tail.overlong)
        if mark is None:
            return  # the file changed under us: the next read notices and starts over
        cached = CachedMetrics(mark, READER_VERSION,
                               [CachedSeries(s.name, *s.snapshot(), list(s.non_numeric)) for s in self.series.values()],
                               CachedSeries("ts", *self.ts.snapshot()), self.malformed, self.malformed_example,
                               self.lines_read)
        try:
            self.cache.save(cached)
        except (OSError, ValueError) as exc:
            log.debug("cannot write the metrics cache %s: %s", self.cache.path, exc)
            self.cache = None  # a read-only or full disk: stop trying for this table
            return
        self.cached_offset = mark.offset

    def _clear(self) -> None:
        self.series.clear()
        self.ts = MetricSeries("ts")
        self.malformed = 0
        self.malformed_example = ""
        self.lines_read = 0
        self.cached_offset = 0

    def _estimate_lines(self, lines_in_block: int, start: int) -> int:
        """On a first read of a large file, size the buffers of dense columns once from the first block."""
        consumed = self.tail.offset - start
        try:
            remaining = self.tail.path.stat().st_size - start
        except OSError:
            return 0
        if consumed <= 0 or remaining < 2 * consumed:
            return 0
        return int(lines_in_block * remaining / consumed * 1.02) + 256

    def _series(self, name: str, dense: bool = False) -> MetricSeries:
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = MetricSeries(name)
            if dense and self._capacity_hint:  # only columns of every line: sparse ones grow as they fill
                s.reserve(self._capacity_hint)
        return s

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        self.malformed_example = line[:120].decode("utf-8", "replace")

    def _ingest(self, lines: list[bytes]) -> bool:
        records: list[dict[str, Any]] = []
        # A block makes ~20k acyclic dicts; letting the cyclic GC scan them on the way costs a third of the time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._parse_lines(lines, records.append)
        finally:
            if gc_was_enabled:
                gc.enable()
        if not records:
            return False
        self.lines_read += len(records)
        try:
            if self._ingest_uniform(records):
                return True
        except (ValueError, TypeError, OverflowError):
            pass  # a ragged or oversized value: the careful path below handles it record by record
        return self._ingest_mixed(records)

    def _parse_lines(self, lines: list[bytes], append: Any) -> None:
        loads = orjson.loads
        for line in lines:
            try:
                rec = loads(line)
            except orjson.JSONDecodeError:
                if not line.strip():
                    continue
                try:  # the standard parser reads the bare NaN/Infinity tokens (and huge integers) orjson refuses
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    self._bad(line)
                    continue
            if type(rec) is not dict:
                self._bad(line)
                continue
            append(rec)

    def _ingest_uniform(self, records: list[dict[str, Any]]) -> bool:
        """Fast path: every record has the same keys and only numbers. One numpy array for the whole block."""
        keys = list(records[0])
        nkeys = len(keys)
        if "step" not in keys or nkeys < 2:
            return False
        if set(map(len, records)) != {nkeys}:
            return False
        try:
            rows = list(map(itemgetter(*keys), records))
        except KeyError:
            return False
        table = np.array(rows)
        if table.ndim != 2 or table.dtype.kind not in _NUMERIC_KINDS:
            return False
        steps_col = table[:, keys.index("step")]
        if steps_col.dtype.kind == "f":
            if not np.all(np.isfinite(steps_col)) or not np.all(steps_col == np.floor(steps_col)):
                return False
        if steps_col.min() < 0 or steps_col.max() > MAX_STEP:
            return False
        steps = steps_col.astype(np.int64)
        for j, key in enumerate(keys):
            if key == "step":
                continue
            series = self.ts if key == "ts" else self._series(key, dense=True)
            series.extend(steps, table[:, j].astype(np.float64))
        return True

    def _ingest_mixed(self, records: list[dict[str, Any]]) -> bool:
        """General path: per-record keys, non-numeric values kept aside, records without a valid step skipped."""
        cols: dict[str, tuple[list[int], list[float]]] = {}
        used = 0
        for rec in records:
            step = _valid_step(rec.get("step"))
            if step is None:
                self._bad(f"(no valid step) {str(rec)[:100]}".encode())
                self.lines_read -= 1
                continue
            used += 1
            for key, value in rec.items():
                if key == "step":
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool):
                    try:
                        number = float(value)
                    except OverflowError:  # an integer beyond any float: one bad value, not a lost line
                        self._bad(f"(value out of range) {key}".encode())
                        continue
                    col = cols.get(key)
                    if col is None:
                        col = cols[key] = ([], [])
                    col[0].append(step)
                    col[1].append(number)
                elif key != "ts":
                    self._series(key).keep_non_numeric(step, value)
        for key, (steps, values) in cols.items():
            series = self.ts if key == "ts" else self._series(key)
            series.extend(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))
        return used > 0


def _adopted(cached: CachedSeries) -> MetricSeries:
    series = MetricSeries(cached.name)
    series.adopt(cached.steps, cached.values, cached.non_numeric)
    return series


def _valid_step(step: Any) -> int | None:
    """An integer step in [0, 2^53] (an integral float counts); None for anything else."""
    if type(step) is float:
        if not math.isfinite(step) or not step.is_integer():
            return None
        step = int(step)
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        return None
    return step
