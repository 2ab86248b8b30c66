"""A compact cache of a run's parsed metrics, so reopening a run costs what changed, not the run's length.

One file per run under $TWINKLE_HOME/.metrics-cache/ (outside every run directory, so writing it never looks like a
change of the run to the dashboard's file watcher): the columnar arrays of every series and the byte offset of
metrics.jsonl they cover, with what identifies that file (device, inode, a checksum of its first bytes and the bytes
just before the offset). A cache is used only when all of these still hold and its own checksums match; anything
else (a replaced, truncated or rewritten file, a damaged or foreign cache, another reader version) makes the reader
parse the JSONL again and write a fresh cache. The JSONL stays the source of truth and the format others read.

Layout: MAGIC, then the header's length and CRC-32 (little-endian u32), the header (JSON), then the arrays (raw
little-endian int64/float64, each at an 8-byte boundary). Steps shared by several series are stored once, and
steps that are a plain range (the usual case) as two numbers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = ".metrics-cache"
MAGIC = b"TWMC\x01\n"
PREFIX = struct.Struct("<6sII")  # magic, header length, header CRC-32
HEAD_BYTES = 4096  # the start of metrics.jsonl, checksummed: a different file with the same inode is noticed
MAX_HEADER = 64 * 1024 * 1024  # non-numeric values (at most 10,000 per series) live in the header
SUFFIX = ".metrics"
STALE_TEMP = 3600.0  # seconds after which a temp file no process renamed is removed


@dataclass
class CachedSeries:
    """One series as stored: steps and values of the same length, and the non-numeric values kept aside."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    non_numeric: list[tuple[int, Any]] = field(default_factory=list)


@dataclass
class SourceMark:
    """What identifies the part of metrics.jsonl a cache covers: the file, its first bytes, the bytes just before
    `offset`, and the reader's state at that offset."""

    offset: int
    dev: int
    ino: int
    head_crc: int
    before: bytes  # the bytes just before offset (the tail reader checks the same ones on its next read)
    skipping: bool = False  # the offset is inside an overlong line being skipped
    overlong: int = 0


@dataclass
class CachedMetrics:
    """Everything a MetricsTable needs to go on reading at `mark.offset` as if it had parsed the file up to there."""

    mark: SourceMark
    reader_version: int
    series: list[CachedSeries]
    ts: CachedSeries
    malformed: int = 0
    malformed_example: str = ""
    lines_read: int = 0


class CacheMiss(Exception):
    """The cache cannot be used (missing, damaged, stale or foreign); the message says why, for the debug log."""


def open_regular(path: Path) -> tuple[io.BufferedReader, os.stat_result]:
    """Open a regular file for reading (never blocking on a FIFO); anything else raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path.name} is not a regular file")
        return open(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def mark_source(path: Path, offset: int, before: bytes, skipping: bool, overlong: int) -> SourceMark | None:
    """The mark of metrics.jsonl read up to `offset` (None if the file is gone or changed under us)."""
    try:
        f, st = open_regular(path)
    except OSError:
        return None
    with f:
        if st.st_size < offset:
            return None
        head = f.read(min(HEAD_BYTES, offset))
        f.seek(offset - len(before))
        if f.read(len(before)) != before:
            return None
    return SourceMark(offset, st.st_dev, st.st_ino, zlib.crc32(head), before, skipping, overlong)


def check_source(path: Path, mark: SourceMark) -> None:
    """Raise CacheMiss unless metrics.jsonl is still the file the mark was taken of, at least as long, and with the
    same first bytes and the same bytes before the offset (an append changes neither)."""
    try:
        f, st = open_regular(path)
    except OSError as exc:
        raise CacheMiss(f"metrics file: {exc.strerror or exc}") from None
    with f:
        if (st.st_dev, st.st_ino) != (mark.dev, mark.ino):
            raise CacheMiss("metrics file was replaced")
        if st.st_size < mark.offset:
            raise CacheMiss("metrics file is shorter than the cached part")
        if zlib.crc32(f.read(min(HEAD_BYTES, mark.offset))) != mark.head_crc:
            raise CacheMiss("metrics file starts differently")
        f.seek(mark.offset - len(mark.before))
        if f.read(len(mark.before)) != mark.before:
            raise CacheMiss("metrics file was rewritten before the cached offset")


class MetricsCache:
    """The cache file of one run's metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_run(cls, home: Path, run_id: str) -> MetricsCache:
        return cls(home / CACHE_DIR / f"{run_id}{SUFFIX}")

    # ---------------------------------------------------------------- reading
    def load(self, source: Path, reader_version: int) -> CachedMetrics:
        """The cached metrics, checked against the cache's checksums and against `source`; CacheMiss otherwise."""
        try:
            f, st = open_regular(self.path)
        except FileNotFoundError:
            raise CacheMiss("no cache yet") from None
        except OSError as exc:
            raise CacheMiss(f"cache: {exc.strerror or exc}") from None
        with f:
            header, data_start = _read_header(f, st.st_size)
            if header.get("reader") != reader_version:
                raise CacheMiss("cache was written by another reader version")
            try:
                mark = _mark_from(header["source"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CacheMiss(f"cache header: {exc!r}") from None
            check_source(source, mark)
            try:
                return _read_body(f, header, data_start, st.st_size, mark, reader_version)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise CacheMiss(f"cache body: {exc!r}") from None

    # ---------------------------------------------------------------- writing
    def save(self, cached: CachedMetrics) -> None:
        """Write the cache atomically (temp file + os.replace): a reader sees the old cache or the new one."""
        blobs: list[np.ndarray] = []
        at = 0

        def blob(array: np.ndarray) -> dict[str, int]:
            nonlocal at
            data = np.ascontiguousarray(array)
            ref = {"at": at, "n": len(data), "crc": zlib.crc32(data.data.cast("B"))}
            blobs.append(data)
            at += data.nbytes + (-data.nbytes % 8)
            return ref

        unique: list[np.ndarray] = []
        layout: list[dict[str, Any]] = []  # the unique step arrays: a range, or a blob

        def steps_index(steps: np.ndarray) -> int:
            for i, known in enumerate(unique):
                if len(known) == len(steps) and np.array_equal(known, steps):
                    return i
            unique.append(steps)
            n = len(steps)
            if n and int(steps[-1]) - int(steps[0]) == n - 1 and (n == 1 or bool(np.all(np.diff(steps) == 1))):
                layout.append({"range": [int(steps[0]), n]})
            else:
                layout.append(blob(steps.astype("<i8", copy=False)))
            return len(layout) - 1

        def entry(s: CachedSeries) -> dict[str, Any]:
            return {"name": s.name, "steps": steps_index(s.steps), "values": blob(s.values.astype("<f8", copy=False)),
                    "non_numeric": [[step, value] for step, value in s.non_numeric]}

        series = [entry(s) for s in cached.series]
        ts = entry(cached.ts)
        m = cached.mark
        header = {
            "reader": cached.reader_version,
            "source": {"offset": m.offset, "dev": m.dev, "ino": m.ino, "head_crc": m.head_crc,
                       "before": m.before.hex(), "skipping": m.skipping, "overlong": m.overlong},
            "table": {"malformed": cached.malformed, "malformed_example": cached.malformed_example,
                      "lines_read": cached.lines_read},
            "steps": layout, "series": series, "ts": ts, "data_bytes": at,
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        prefix = PREFIX.pack(MAGIC, len(raw), zlib.crc32(raw))
        pad = -(len(prefix) + len(raw)) % 8
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(prefix + raw + b"\0" * pad)
                for data in blobs:
                    f.write(data.data.cast("B"))
                    f.write(b"\0" * (-data.nbytes % 8))
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def prune(folder: Path, run_ids: Iterable[str]) -> int:
    """Remove the caches of runs that are no longer there (deleted or moved outside the dashboard); returns how
    many were removed."""
    keep = {f"{r}{SUFFIX}" for r in run_ids}
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            # A temp file is another process's write in progress, unless it was left behind by a crash long ago.
            stale = entry.name.endswith(".tmp") and time.time() - entry.stat().st_mtime > STALE_TEMP
            if stale or entry.name.endswith(SUFFIX) and entry.name not in keep:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


def _read_header(f: io.BufferedReader, size: int) -> tuple[dict[str, Any], int]:
    prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise CacheMiss("cache is truncated")
    magic, length, crc = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CacheMiss("not a metrics cache")
    if length > min(MAX_HEADER, size - PREFIX.size):
        raise CacheMiss("cache header is truncated")
    raw = f.read(length)
    if zlib.crc32(raw) != crc:
        raise CacheMiss("cache header is damaged")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CacheMiss("cache header is not JSON") from None
    if not isinstance(header, dict):
        raise CacheMiss("cache header is not an object")
    start = PREFIX.size + length
    return header, start + (-start % 8)


def _mark_from(src: dict[str, Any]) -> SourceMark:
    return SourceMark(int(src["offset"]), int(src["dev"]), int(src["ino"]), int(src["head_crc"]),
                      bytes.fromhex(src["before"]), bool(src["skipping"]), int(src["overlong"]))


def _read_body(f: io.BufferedReader, header: dict[str, Any], data_start: int, size: int, mark: SourceMark,
               reader_version: int) -> CachedMetrics:
    if data_start + int(header["data_bytes"]) != size:
        raise CacheMiss("cache data is truncated")

    def read(ref: dict[str, Any], dtype: str) -> np.ndarray:
        """A blob into a fresh array; its checksum must match."""
        out = np.empty(int(ref["n"]), dtype=dtype)
        view = out.data.cast("B")
        f.seek(data_start + int(ref["at"]))
        if f.readinto(view) != len(view):
            raise CacheMiss("cache data is truncated")
        if zlib.crc32(view) != int(ref["crc"]):
            raise CacheMiss("cache data is damaged")
        return out

    steps: list[np.ndarray] = []
    for s in header["steps"]:
        if "range" in s:
            first, n = (int(x) for x in s["range"])
            steps.append(np.arange(first, first + n, dtype=np.int64))
        else:
            steps.append(read(s, "<i8"))

    def series(e: dict[str, Any]) -> CachedSeries:
        values = read(e["values"], "<f8")
        shared = steps[int(e["steps"])]
        if len(shared) != len(values):
            raise CacheMiss("cache series lengths disagree")
        # Series may share one steps array: each holds exactly its points, so its first append reallocates.
        return CachedSeries(str(e["name"]), shared, values, [(int(p[0]), p[1]) for p in e["non_numeric"]])

    table = header["table"]
    return CachedMetrics(mark, reader_version, [series(e) for e in header["series"]], series(header["ts"]),
                         int(table["malformed"]), str(table["malformed_example"]), int(table["lines_read"]))
