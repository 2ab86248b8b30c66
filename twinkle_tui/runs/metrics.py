"""Incremental reading of metrics.jsonl into one numpy series per metric."""

from __future__ import annotations

import gc
import json
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from twinkle_tui.runs.tail import FileTail

RESERVED = ("step", "ts")
_NUMERIC_KINDS = frozenset("fiub")


class MetricSeries:
    """All points of one metric in step order, kept in growable numpy buffers.

    When a step repeats or goes back (a relaunch resumed from an earlier checkpoint), the points at and after it
    belong to the superseded launch and are dropped, so the newest launch's values win and steps stay sorted.
    """

    __slots__ = ("name", "_steps", "_values", "_n", "non_numeric", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps = np.empty(0, dtype=np.int64)
        self._values = np.empty(0, dtype=np.float64)
        self._n = 0
        self.non_numeric: list[tuple[int, Any]] = []
        self.version = 0  # bumped when points are dropped, so caches of derived data know the past changed

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n]

    @property
    def values(self) -> np.ndarray:
        return self._values[: self._n]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of the same length, safe to use while another thread appends."""
        n = self._n
        steps, values = self._steps, self._values
        return steps[:n], values[:n]

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
        """Append points in file order."""
        k = len(steps)
        if not k:
            return
        regress = k > 1 and bool(np.any(steps[1:] <= steps[:-1]))
        if not regress and (not self._n or steps[0] > self._steps[self._n - 1]):
            self._append(steps, values)
            return
        cuts = [0, *(np.flatnonzero(steps[1:] <= steps[:-1]) + 1).tolist(), k]
        for a, b in zip(cuts, cuts[1:], strict=False):
            self.truncate_from(int(steps[a]))
            self._append(steps[a:b], values[a:b])

    def truncate_from(self, step: int) -> None:
        """Drop the points at `step` and later."""
        if self._n and self._steps[self._n - 1] >= step:
            self._n = int(np.searchsorted(self._steps[: self._n], step, side="left"))
            self.version += 1
        if self.non_numeric and self.non_numeric[-1][0] >= step:
            self.non_numeric = [p for p in self.non_numeric if p[0] < step]

    def _append(self, steps: np.ndarray, values: np.ndarray) -> None:
        k = len(steps)
        need = self._n + k
        if need > len(self._steps):
            self.reserve(max(need, len(self._steps) + len(self._steps) // 2, 256))
        self._steps[self._n : need] = steps
        self._values[self._n : need] = values
        self._n = need


class MetricsTable:
    """The metrics of one run, read from metrics.jsonl by byte offset.

    Malformed lines are skipped and counted, NaN/Infinity are read as such, a torn last line waits for the next
    read, and metric names are free text.
    """

    def __init__(self, path: Path) -> None:
        self.tail = FileTail(path)
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

    def names(self) -> list[str]:
        """Metric names that have at least one numeric point, in the order they first appeared."""
        return [name for name, s in self.series.items() if len(s)]

    def last_step(self) -> int | None:
        last = self.ts.last()
        return last[0] if last else None

    def read_new(self) -> bool:
        """Read whatever was appended since the last call; True if anything changed."""
        if not self.tail.has_new_data():
            return False
        changed = False
        first_block = True
        start = self.tail.offset
        for lines in self.tail.blocks():
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
        return changed

    def _clear(self) -> None:
        self.series.clear()
        self.ts = MetricSeries("ts")
        self.malformed = 0
        self.malformed_example = ""
        self.lines_read = 0

    def _estimate_lines(self, lines_in_block: int, start: int) -> int:
        """On a first read of a large file, size every buffer once from the first block's bytes per line."""
        consumed = self.tail.offset - start
        try:
            remaining = self.tail.path.stat().st_size - start
        except OSError:
            return 0
        if consumed <= 0 or remaining < 2 * consumed:
            return 0
        return int(lines_in_block * remaining / consumed * 1.02) + 256

    def _series(self, name: str) -> MetricSeries:
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = MetricSeries(name)
            if self._capacity_hint:
                s.reserve(self._capacity_hint)
        return s

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        self.malformed_example = line[:120].decode("utf-8", "replace")

    def _ingest(self, lines: list[bytes]) -> bool:
        records: list[dict[str, Any]] = []
        append = records.append
        loads = orjson.loads
        # A block makes ~20k acyclic dicts; letting the cyclic GC scan them on the way costs a third of the time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._parse_lines(lines, append, loads)
        finally:
            if gc_was_enabled:
                gc.enable()
        if not records:
            return False
        self.lines_read += len(records)
        if not self._ingest_uniform(records):
            self._ingest_mixed(records)
        return True

    def _parse_lines(self, lines: list[bytes], append: Any, loads: Any) -> None:
        for line in lines:
            try:
                rec = loads(line)
            except orjson.JSONDecodeError:
                if not line.strip():
                    continue
                try:  # the standard parser reads the bare NaN/Infinity tokens that orjson refuses
                    rec = json.loads(line)
                except ValueError:
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
        lengths = set(map(len, records))
        if lengths != {nkeys}:
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
        steps = steps_col.astype(np.int64)
        for j, key in enumerate(keys):
            if key == "step":
                continue
            series = self.ts if key == "ts" else self._series(key)
            series.extend(steps, table[:, j].astype(np.float64))
        return True

    def _ingest_mixed(self, records: list[dict[str, Any]]) -> None:
        """General path: per-record keys, non-numeric values kept aside, records without an int step skipped."""
        cols: dict[str, tuple[list[int], list[float]]] = {}
        for rec in records:
            step = rec.get("step")
            if type(step) is float and step.is_integer():
                step = int(step)
            if type(step) is not int:
                self._bad(f"(no integer step) {rec!r}".encode())
                self.lines_read -= 1
                continue
            for key, value in rec.items():
                if key == "step":
                    continue
                if isinstance(value, int | float):
                    col = cols.get(key)
                    if col is None:
                        col = cols[key] = ([], [])
                    col[0].append(step)
                    col[1].append(float(value))
                elif key != "ts":
                    kept = self._series(key).non_numeric
                    if kept and kept[-1][0] >= step:  # a relaunch repeats steps: the newest value wins
                        kept[:] = [p for p in kept if p[0] < step]
                    kept.append((step, value))
        for key, (steps, values) in cols.items():
            series = self.ts if key == "ts" else self._series(key)
            series.extend(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))

