"""The run store: every run under $TWINKLE_HOME, read incrementally. The UI reads runs only through it."""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.protocol import (
    InvalidRunId,
    MetaError,
    RunPaths,
    RunStatus,
    normalize_meta,
    process_is,
    read_meta,
    twinkle_home,
    validate_run_id,
)
from twinkle_tui.runs.metrics import MetricsTable
from twinkle_tui.runs.tail import FileTail

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
LOG_TAIL_BYTES = 512 * 1024


def clean_log_line(raw: bytes) -> str:
    """Decode a log line, keep what a terminal would finally show after carriage returns, drop ANSI codes."""
    text = raw.decode("utf-8", "replace").rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    return ANSI_RE.sub("", text).replace("\t", "    ")


class LogTail:
    """The last `max_lines` lines of output.log, updated by byte offset."""

    def __init__(self, path: Path, max_lines: int = 5000) -> None:
        self.tail = FileTail(path)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.total_lines = 0
        self._started = False

    def read_new(self) -> list[str]:
        """Read appended lines; returns the new ones (all of them after a reset)."""
        if not self._started:
            self.tail.seek_to_last(LOG_TAIL_BYTES)
            self._started = True
        if not self.tail.has_new_data():
            return []
        new = [clean_log_line(line) for line in self.tail.read_lines()]
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
        lines = self.tail.read_lines()
        if self.tail.reset:
            self.events.clear()
        for line in lines:
            try:
                rec = json.loads(line)
                event = RunEvent(float(rec.get("ts", 0.0)), str(rec["kind"]), _int_or_none(rec.get("step")), rec)
            except (ValueError, KeyError, TypeError, AttributeError):
                if line.strip():
                    self.malformed += 1
                continue
            self.events.append(event)
        return True


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
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
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sort_key(self) -> float:
        return self.start_time or 0.0


def effective_status(meta: dict[str, Any], alive: Callable[[int | None, int | None], bool] = process_is) -> RunStatus:
    """The status meta.json claims, corrected when an active run's process is gone (machine restart, kill -9
    of the supervisor): such a run is reported failed, since nothing will ever finish it."""
    status = RunStatus.parse(meta.get("status"))
    if status.is_active and meta.get("pid") and not alive(meta.get("pid"), meta.get("pid_start_time")):
        supervisor = meta.get("supervisor_pid")
        if not (supervisor and alive(supervisor, meta.get("supervisor_start_time"))):
            return RunStatus.FAILED
    return status


class RunView:
    """One run's files, read incrementally: meta, metrics, log tail and events."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.metrics = MetricsTable(paths.metrics)
        self.log = LogTail(paths.log)
        self.events = EventLog(paths.events)
        self.meta: dict[str, Any] = normalize_meta({}, paths.run_id)
        self.problem: str | None = None
        self._meta_mtime: int | None = None

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    @property
    def status(self) -> RunStatus:
        return effective_status(self.meta)

    @property
    def last_step(self) -> int:
        return max(int(self.meta["progress"].get("last_step") or 0), self.metrics.last_step() or 0)

    @property
    def total_steps(self) -> int | None:
        total = self.meta["progress"].get("total_steps")
        return int(total) if isinstance(total, int | float) and total > 0 else None

    def refresh_meta(self) -> bool:
        try:
            mtime = os.stat(self.paths.meta).st_mtime_ns
        except FileNotFoundError:
            self.problem = f"run {self.run_id!r} has no meta.json yet"
            return False
        if mtime == self._meta_mtime:
            return False
        try:
            self.meta = read_meta(self.paths)
            self.problem = None
        except MetaError as exc:
            self.problem = str(exc)  # keep the last good meta; a torn write by a foreign writer heals itself
        self._meta_mtime = mtime
        return True

    def refresh(self) -> set[str]:
        """Read everything new; returns the parts that changed: meta, metrics, log, events."""
        changed = set()
        if self.refresh_meta():
            changed.add("meta")
        if self.metrics.read_new():
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
            model_id=meta.get("model_id"),
            last_step=self.last_step,
            total_steps=self.total_steps,
            start_time=meta.get("start_time") or self._dir_time(),
            end_time=meta.get("end_time"),
            problem=self.problem,
            meta=meta,
        )

    def _dir_time(self) -> float:
        try:
            return self.paths.root.stat().st_mtime
        except OSError:
            return 0.0


class RunStore:
    """All runs under one $TWINKLE_HOME. Views are created on demand and cached."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = twinkle_home(home)
        self._views: dict[str, RunView] = {}

    def run_ids(self) -> list[str]:
        try:
            entries = list(os.scandir(self.home))
        except FileNotFoundError:
            return []
        ids = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                try:
                    ids.append(validate_run_id(entry.name))
                except InvalidRunId:
                    continue  # not ours: a stray folder under $TWINKLE_HOME
        return ids

    def view(self, run_id: str) -> RunView:
        """The view of one run; a bad run id raises InvalidRunId, a missing run KeyError."""
        validate_run_id(run_id)
        view = self._views.get(run_id)
        if view is None:
            paths = RunPaths(self.home / run_id)
            if not paths.root.is_dir():
                raise KeyError(f"no run {run_id!r} under {self.home}")
            view = self._views[run_id] = RunView(paths)
            view.refresh_meta()
        return view

    def list_runs(self) -> list[RunSummary]:
        """Every run, newest first, from meta.json only (cheap: metrics are read when a run is opened)."""
        out = []
        for run_id in self.run_ids():
            view = self.view(run_id)
            view.refresh_meta()
            out.append(view.summary())
        out.sort(key=lambda s: s.sort_key, reverse=True)
        return out

    def run_ids_for_paths(self, paths: Iterable[str | os.PathLike[str]]) -> set[str]:
        """Which runs a batch of changed file paths (from watchfiles) belongs to."""
        prefixes = {str(self.home) + os.sep, str(self.home.resolve()) + os.sep}  # a symlinked home reads either way
        out = set()
        for p in paths:
            text = str(p)
            for home in prefixes:
                if text.startswith(home):
                    run_id = text[len(home) :].split(os.sep, 1)[0]
                    if run_id and not run_id.startswith("."):
                        out.add(run_id)
        return out


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
