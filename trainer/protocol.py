"""The run-directory protocol (v1): where runs live, what their files mean, and safe ways to write them.

Standard library only: training scripts and the dashboard both import this module, and importing it must never
import torch.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
HOME_ENV = "TWINKLE_HOME"
RUN_ID_ENV = "TWINKLE_RUN_ID"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidRunId(ValueError):
    """A run id that could escape $TWINKLE_HOME or is not a plain name."""


class RunStatus(str, enum.Enum):
    """Lifecycle of a run as recorded in meta.json."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_active(self) -> bool:
        """True while a process is expected to exist for the run."""
        return self in _ACTIVE

    @classmethod
    def parse(cls, value: object) -> RunStatus:
        """Read a status written by any writer; old writers said "error" for failed."""
        text = str(value or "").strip().lower()
        if text == "error":
            return cls.FAILED
        try:
            return cls(text)
        except ValueError:
            return cls.FAILED if text else cls.STARTING


_ACTIVE = {RunStatus.STARTING, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.STOPPING}


def twinkle_home(base_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory that holds all runs: the argument, else $TWINKLE_HOME, else ~/.cache/twinkle."""
    if base_dir is not None:
        return Path(base_dir).expanduser()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "twinkle"


def validate_run_id(run_id: object) -> str:
    """Return run_id if it is a safe directory name, else raise InvalidRunId with a one-line reason."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRunId("run id must be a non-empty string")
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidRunId(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


def new_run_id(prefix: str = "run", clock: Callable[[], float] = time.time) -> str:
    """A fresh, sortable run id such as run-20261123-145512-3f9a."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    return f"{prefix}-{stamp}-{os.urandom(2).hex()}"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    @classmethod
    def of(cls, run_id: str, base_dir: str | os.PathLike[str] | None = None) -> RunPaths:
        return cls(twinkle_home(base_dir) / validate_run_id(run_id))

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "output.log"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def script(self) -> Path:
        return self.root / "train.py"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.root / ".meta.lock"

    def script_version(self, n: int) -> Path:
        return self.root / f"train_v{n}.py"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so readers see the old file or the new one, never a part (temp + fsync + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append one whole JSON line with a single O_APPEND write, so concurrent readers never see half a record."""
    line = (json.dumps(obj, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


META_DEFAULTS: dict[str, Any] = {
    "schema": SCHEMA,
    "run_id": None,
    "model_id": None,
    "config": {},
    "status": RunStatus.STARTING.value,
    "pid": None,
    "pid_start_time": None,
    "pgid": None,
    "supervisor_pid": None,
    "supervisor_start_time": None,
    "cwd": None,
    "command": None,
    "script_path": None,
    "script_version": 0,
    "start_time": None,
    "end_time": None,
    "exit_code": None,
    "exit_signal": None,
    "error": None,
    "progress": {"last_step": 0, "total_steps": None},
    "last_checkpoint": None,
    "fix_attempts": 0,
    "launches": 0,
}


class MetaError(Exception):
    """meta.json is missing or unreadable; the message is one line a user can act on."""


def normalize_meta(raw: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Fill missing fields with defaults, keep unknown ones, and read old status values."""
    meta = {k: (dict(v) if isinstance(v, dict) else v) for k, v in META_DEFAULTS.items()}
    meta.update(raw)
    progress = dict(META_DEFAULTS["progress"])
    if isinstance(raw.get("progress"), dict):
        progress.update(raw["progress"])
    meta["progress"] = progress
    meta["status"] = RunStatus.parse(raw.get("status")).value
    if run_id and not meta.get("run_id"):
        meta["run_id"] = run_id
    return meta


def read_meta(paths: RunPaths) -> dict[str, Any]:
    """Read meta.json, tolerant of missing and unknown fields; raise MetaError if it is absent or not JSON."""
    try:
        raw = json.loads(paths.meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetaError(f"run {paths.run_id!r} has no meta.json ({paths.meta})") from None
    except (OSError, ValueError) as exc:
        raise MetaError(f"run {paths.run_id!r}: meta.json is unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise MetaError(f"run {paths.run_id!r}: meta.json does not hold a JSON object")
    return normalize_meta(raw, paths.run_id)


@contextlib.contextmanager
def meta_lock(paths: RunPaths, timeout: float = 2.0) -> Iterator[None]:
    """Serialize read-modify-write of meta.json between the trainer, the supervisor and the dashboard.

    A writer frozen by SIGSTOP could hold the lock; after `timeout` we go on without it, since os.replace keeps
    the file whole and the frozen writer only ever rewrites its own fields.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("meta.json lock of %s is held too long; writing without it", paths.run_id)
                    break
                time.sleep(0.01)
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update_meta(paths: RunPaths, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to meta.json under the lock and write it atomically; a missing file starts from defaults."""
    with meta_lock(paths):
        try:
            meta = read_meta(paths)
        except MetaError:
            if paths.meta.exists():
                raise
            meta = normalize_meta({}, paths.run_id)
        change(meta)
        write_json_atomic(paths.meta, meta)
        return meta


def record_event(paths: RunPaths, kind: str, clock: Callable[[], float] = time.time, **fields: Any) -> None:
    """Append one entry to the run's timeline (events.jsonl)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    append_jsonl(paths.events, {"ts": clock(), "kind": kind, **fields})


def process_start_time(pid: int | None) -> int | None:
    """The kernel's start time of `pid` in clock ticks since boot, or None if there is no such live process.

    Together with the pid it names one process for good: a reused pid has a different start time.
    """
    if not pid or pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and ')' itself; the fields we need follow its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: it will never run again
        return None
    return int(fields[19])


def process_is(pid: int | None, start_time: int | None) -> bool:
    """True if the process `pid` is alive and is the same process that had `start_time`."""
    if not pid:
        return False
    current = process_start_time(pid)
    if current is None:
        return False
    return start_time is None or current == start_time
