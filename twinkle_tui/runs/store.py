"""The run store: every run under $TWINKLE_HOME, read incrementally. The UI reads runs only through it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import (
    InvalidRunId,
    MetaError,
    RunKind,
    RunMeta,
    RunPaths,
    RunStatus,
    as_int,
    as_time,
    process_is,
    process_start_time,
    read_meta,
    twinkle_home,
    validate_run_id,
)
from twinkle_tui.runs.metrics import MetricsTable
from twinkle_tui.runs.metrics_cache import CACHE_DIR, MetricsCache, prune
from twinkle_tui.runs.tail import FileTail, clean_log_line

log = logging.getLogger(__name__)

RESERVED_DIRS = frozenset({"research"})  # $TWINKLE_HOME/research/ holds the auto-research loops, not a run
LOG_TAIL_BYTES = 512 * 1024
LOG_READ_BYTES = 4 * 1024 * 1024  # per refresh: a burst of log output streams in over several redraws
LISTING_SLACK_NS = 1_000_000_000  # a listing is reused only if taken this long after the home last changed
PREFETCH_BYTES = 2 * 1024 * 1024  # metrics parsed before the first frame (beyond a cache); the rest streams in


class LogTail:
    """The last `max_lines` lines of output.log, updated by byte offset (for the dashboard's log panel)."""

    def __init__(self, path: Path, max_lines: int = 5000) -> None:
        self.tail = FileTail(path, keep_head=True)  # a huge line shows its start and says it was cut
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.total_lines = 0
        self._started = False

    def read_new(self, max_bytes: int | None = LOG_READ_BYTES) -> list[str]:
        """Read appended lines; returns the new ones (all of them after a reset)."""
        if not self._started:
            self.tail.seek_to_last(LOG_TAIL_BYTES)
            self._started = True
        if not self.tail.has_new_data():
            return []
        new = [clean_log_line(line) for line in self.tail.read_lines(max_bytes)]
        if self.tail.reset:
            self.lines.clear()
        self.lines.extend(new)
        self.total_lines += len(new)
        return new

    def since(self, seen: int) -> list[str]:
        """The lines read after the first `seen` ones (as many of them as are still kept)."""
        fresh = self.total_lines - seen
        if fresh <= 0:
            return []
        return list(self.lines)[-fresh:]


@dataclass
class RunEvent:
    """One entry of events.jsonl."""

    ts: float
    kind: str
    step: int | None
    data: dict[str, Any]


class EventLog:
    """events.jsonl, read incrementally; malformed lines are skipped and counted."""

    def __init__(self, path: Path) -> None:
        self.tail = FileTail(path)
        self.events: list[RunEvent] = []
        self.malformed = 0

    def read_new(self) -> bool:
        if not self.tail.has_new_data():
            return False
        lines = self.tail.read_lines(LOG_READ_BYTES)
        if self.tail.reset:
            self.events.clear()
        for line in lines:
            try:
                rec = json.loads(line)
                ts = as_time(rec.get("ts", 0.0))
                event = RunEvent(ts or 0.0, str(rec["kind"]), as_int(rec.get("step"), 0), rec)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                if line.strip():
                    self.malformed += 1
                continue
            self.events.append(event)
        return True


@dataclass(frozen=True)
class RunSummary:
    """What the run list shows for one run."""

    run_id: str
    status: RunStatus
    model_id: str | None
    last_step: int
    total_steps: int | None
    start_time: float | None
    end_time: float | None
    problem: str | None = None
    meta: RunMeta = field(default_factory=RunMeta)

    @property
    def sort_key(self) -> float:
        return self.start_time or 0.0


STARTING_GRACE = 10.0  # seconds a launch may stay "starting" before a missing supervisor counts as dead


def effective_status(meta: RunMeta, alive: Callable[[int | None, int | None], bool] = process_is,
                     now: float | None = None) -> RunStatus:
    """The status meta.json claims, corrected when an active run's processes are gone (machine restart, kill -9
    of the supervisor): such a run is reported failed, since nothing will ever finish it."""
    status = meta.status
    if not status.is_active:
        return status
    pid, supervisor = meta.pid, meta.supervisor_pid
    if supervisor and alive(supervisor, meta.supervisor_start_time):
        return status
    if meta.kind == RunKind.SERVICE_CLIENT:  # a training-service client: without its service it has no session
        return RunStatus.FAILED
    if pid and alive(pid, meta.pid_start_time):
        return status
    if pid and meta.pid_start_time is None and process_start_time(pid) is not None:
        return status  # an old writer recorded no start time: the process may be ours, we cannot tell
    if not pid and not supervisor:
        started = meta.start_time
        now = time.time() if now is None else now
        if status == RunStatus.STARTING and isinstance(started, int | float) and now - started < STARTING_GRACE:
            return status  # the supervisor is still starting
        if status != RunStatus.STARTING:
            return status  # no process was ever recorded (a foreign writer): nothing to check
    return RunStatus.FAILED


class RunCache:
    """One run's files, read incrementally: meta, metrics, log tail and events. The readers of metrics, log and
    events are made when first used: listing a thousand runs reads only their meta.json."""

    def __init__(self, paths: RunPaths, metrics_cache: MetricsCache | None = None) -> None:
        self.paths = paths
        self._metrics_cache = metrics_cache
        self.meta = RunMeta(run_id=paths.run_id)
        self.meta_problem: str | None = None
        self._meta_key: tuple[int, int, int] | None = None

    @cached_property
    def metrics(self) -> MetricsTable:
        return MetricsTable(self.paths.metrics, self._metrics_cache)

    @cached_property
    def log(self) -> LogTail:
        return LogTail(self.paths.log)

    @cached_property
    def events(self) -> EventLog:
        return EventLog(self.paths.events)

    def _opened(self) -> list[tuple[str, FileTail]]:
        """The readers made so far, by file name."""
        made = self.__dict__
        return [(name, made[attr].tail) for name, attr in (("metrics.jsonl", "metrics"), ("output.log", "log"),
                                                           ("events.jsonl", "events")) if attr in made]

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    @property
    def status(self) -> RunStatus:
        return effective_status(self.meta)

    @property
    def last_step(self) -> int:
        read = self.metrics.last_step() if "metrics" in self.__dict__ else None
        return max(self.meta.progress.last_step, read or 0)

    @property
    def total_steps(self) -> int | None:
        total = self.meta.progress.total_steps
        return int(total) if isinstance(total, int | float) and total > 0 else None

    @property
    def problem(self) -> str | None:
        """What is wrong with the run's files, in one line (None when nothing is)."""
        found = [self.meta_problem] if self.meta_problem else []
        for name, tail in self._opened():
            if tail.problem:
                found.append(f"{name}: {tail.problem}")
        return " · ".join(found) or None

    @property
    def pending(self) -> bool:
        """A bounded refresh left data to read."""
        return any(tail.pending for _, tail in self._opened())

    def refresh_meta(self) -> bool:
        try:
            st = os.stat(self.paths.meta)
        except FileNotFoundError:
            self.meta_problem = f"run {self.run_id!r} has no meta.json yet"
            return False
        except OSError as exc:
            self.meta_problem = f"meta.json: {exc.strerror or exc}"
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._meta_key:
            return False
        try:
            self.meta = read_meta(self.paths)
            invalid = self.meta.invalid
            self.meta_problem = f"meta.json: ignored bad values of {', '.join(invalid)}" if invalid else None
        except MetaError as exc:
            self.meta_problem = str(exc)  # keep the last good meta; a torn write by a foreign writer heals itself
        self._meta_key = key
        return True

    def refresh(self, max_bytes: int | None = None) -> set[str]:
        """Read what is new (at most about max_bytes of metrics; `pending` says if more is left); returns the
        parts that changed: meta, metrics, log, events."""
        changed = set()
        if self.refresh_meta():
            changed.add("meta")
        if self.metrics.read_new(max_bytes):
            changed.add("metrics")
        if self.log.read_new():
            changed.add("log")
        if self.events.read_new():
            changed.add("events")
        return changed

    def summary(self) -> RunSummary:
        meta = self.meta
        return RunSummary(
            run_id=self.run_id,
            status=self.status,
            model_id=meta.model_id,
            last_step=self.last_step,
            total_steps=self.total_steps,
            start_time=meta.start_time or self._dir_time(),
            end_time=meta.end_time,
            problem=self.problem,
            meta=meta,
        )

    def _dir_time(self) -> float:
        try:
            return self.paths.root.stat().st_mtime
        except OSError:
            return 0.0


class NoSuchRun(LookupError):
    """A run id that names no run under $TWINKLE_HOME; the message is one line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such run"


class RunStore:
    """All runs under one $TWINKLE_HOME. Views are created on demand and cached.

    Views grow as files are read; whoever reads or draws them holds `lock` (readers release it between bounded
    reads, so drawing never waits long). Parsed metrics are cached under $TWINKLE_HOME/.metrics-cache/ (outside
    every run directory: the file watcher ignores it), so a run opened again reads only what was appended since.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, metrics_cache: bool = True) -> None:
        self.home = twinkle_home(home)
        self._views: dict[str, RunCache] = {}
        self.lock = threading.RLock()
        self.metrics_cache = metrics_cache
        self._pruned = not metrics_cache
        self._ids: tuple[tuple[int, int], list[str]] | None = None

    def run_ids(self) -> list[str]:
        """The ids of the run directories. The listing is reused while $TWINKLE_HOME's modification time says no
        entry was added, removed or renamed, provided it was taken clearly after that time (a change within the same
        clock tick as the listing could not be told apart)."""
        try:
            st = os.stat(self.home)
        except OSError:
            return []
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._ids
        if cached is not None and cached[0] == key:
            return list(cached[1])
        listed_at = time.time_ns()
        try:
            entries = list(os.scandir(self.home))
        except FileNotFoundError:
            return []
        ids = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".") and \
                    entry.name not in RESERVED_DIRS:
                try:
                    ids.append(validate_run_id(entry.name))
                except InvalidRunId:
                    continue  # not ours: a stray folder under $TWINKLE_HOME
        self._ids = (key, ids) if listed_at - st.st_mtime_ns > LISTING_SLACK_NS else None
        return list(ids)

    def view(self, run_id: str) -> RunCache:
        """The view of one run; a bad run id raises InvalidRunId, a missing run NoSuchRun."""
        validate_run_id(run_id)
        view = self._views.get(run_id)
        if view is None:
            paths = RunPaths(self.home / run_id)
            if paths.root.is_symlink() or not paths.root.is_dir():
                raise NoSuchRun(f"no run {run_id!r} under {self.home}")
            cache = MetricsCache.for_run(self.home, run_id) if self.metrics_cache else None
            view = self._views[run_id] = RunCache(paths, cache)
            view.refresh_meta()
        return view

    def forget(self, run_id: str) -> None:
        """Drop the cached view (and the metrics cache) of a run that was deleted or archived."""
        self._views.pop(run_id, None)
        if self.metrics_cache:
            MetricsCache.for_run(self.home, run_id).remove()

    def list_runs(self) -> list[RunSummary]:
        """Every run, newest first, from meta.json only (cheap: metrics are read when a run is opened). A run
        whose files cannot be read is listed with its problem; it never hides the others."""
        out = []
        run_ids = self.run_ids()
        if not self._pruned:  # once per store: caches of runs removed while no dashboard was open
            self._pruned = True
            prune(self.home / CACHE_DIR, run_ids)
        for run_id in run_ids:
            try:
                view = self.view(run_id)
                view.refresh_meta()
                out.append(view.summary())
            except NoSuchRun:
                continue  # removed while we listed
            except Exception as exc:  # a bad run marks itself, never the list
                log.warning("cannot read run %s: %s", run_id, exc)
                out.append(RunSummary(run_id, RunStatus.FAILED, None, 0, None, None, None,
                                      problem=f"unreadable: {exc}"))
        out.sort(key=lambda s: s.sort_key, reverse=True)
        return out

    def prefetch(self, run_id: str | None = None, budget: int | None = PREFETCH_BYTES) -> threading.Thread:
        """Read the run list and the run a dashboard shows first (run_id, else the newest) in a background thread
        while the caller goes on: loading the UI's modules takes most of a second, and a run reopened from its
        metrics cache is in memory before the first frame. Whoever reads the store meanwhile waits on `lock`."""

        def read() -> None:
            try:
                with self.lock:
                    runs = self.list_runs()
                    ids = {r.run_id for r in runs}
                    first = run_id if run_id in ids else (runs[0].run_id if runs else None)
                    if first is not None:
                        self.view(first).refresh(budget)
            except Exception:  # the dashboard reads again anyway; a failure here must not stop it
                log.exception("prefetch of %s failed", self.home)

        thread = threading.Thread(target=read, name="twinkle-prefetch", daemon=True)
        thread.start()
        return thread

    def run_ids_for_paths(self, paths: Iterable[str | os.PathLike[str]]) -> set[str]:
        """Which runs a batch of changed file paths (from watchfiles) belongs to."""
        prefixes = {str(self.home) + os.sep, str(self.home.resolve()) + os.sep}  # a symlinked home reads either way
        out = set()
        for p in paths:
            text = str(p)
            for home in prefixes:
                if text.startswith(home):
                    run_id = text[len(home) :].split(os.sep, 1)[0]
                    if run_id and not run_id.startswith(".") and run_id not in RESERVED_DIRS:
                        out.add(run_id)
        return out


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
