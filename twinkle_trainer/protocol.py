"""The run-directory protocol (v1): where runs live, what their files mean, and safe ways to write them.

Standard library only: training scripts and the dashboard both import this module, and importing it must never
import torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkle_trainer.run_meta import (
    MAX_STEP,
    SCHEMA,
    CheckpointRef,
    Progress,
    RunKind,
    RunMeta,
    RunStatus,
    as_int,
    as_time,
)

__all__ = ["HOME_ENV", "MAX_STEP", "RUN_ID_ENV", "SCHEMA", "CheckpointRef", "InvalidRunId", "MetaError", "Progress", "RunKind",
           "RunMeta", "RunPaths", "RunStatus", "append_jsonl", "as_int", "as_time", "meta_lock", "new_run_id",
           "process_is", "process_start_time", "read_meta", "read_regular_file", "record_event", "run_id_prefix",
           "twinkle_home", "update_meta", "validate_run_id", "write_json_atomic"]

log = logging.getLogger(__name__)

HOME_ENV = "TWINKLE_HOME"
RUN_ID_ENV = "TWINKLE_RUN_ID"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidRunId(ValueError):
    """A run id that could escape $TWINKLE_HOME or is not a plain name."""


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


def run_id_prefix(name: str) -> str:
    """A run id prefix from a recipe or script name: `sft_smollm2.toml` -> `sft-smollm2`."""
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(name).stem.replace("_", "-")).strip("-.")
    return stem[:40].rstrip("-.") or "run"


def new_run_id(prefix: str = "run", clock: Callable[[], float] = time.time) -> str:
    """A fresh run id that says what it is and when it started: sft-smollm2-0431-a3cd (hour, minute, random)."""
    stamp = time.strftime("%H%M", time.localtime(clock()))
    return f"{run_id_prefix(prefix)}-{stamp}-{os.urandom(2).hex()}"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    @classmethod
    def of(cls, run_id: str, base_dir: str | os.PathLike[str] | None = None) -> RunPaths:
        return cls(twinkle_home(base_dir) / validate_run_id(run_id))

    def check_not_symlink(self) -> RunPaths:
        """Refuse a run directory that is a symbolic link: writing through it would leave $TWINKLE_HOME."""
        if self.root.is_symlink():
            raise InvalidRunId(f"run directory {self.root} is a symbolic link; refusing to use it")
        return self

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


META_MAX_BYTES = 1024 * 1024  # a meta.json is a few KB; anything far larger is not one


class MetaError(Exception):
    """meta.json is missing or unreadable; the message is one line a user can act on."""


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes. A FIFO, a device, a directory or a file that is too
    large raises OSError with a reason, without blocking (O_NONBLOCK) and without reading it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if st.st_size > max_bytes:
            raise OSError(f"{path.name} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise OSError(f"{path.name} grew past {max_bytes:,} bytes while being read")
        return data
    finally:
        os.close(fd)


def read_meta(paths: RunPaths) -> RunMeta:
    """Read meta.json, tolerant of missing and unknown fields and of values of the wrong type; raise MetaError
    if it is absent, not a regular file, too large, or not a JSON object."""
    try:
        raw = json.loads(read_regular_file(paths.meta, META_MAX_BYTES))
    except FileNotFoundError:
        raise MetaError(f"run {paths.run_id!r} has no meta.json ({paths.meta})") from None
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise MetaError(f"run {paths.run_id!r}: meta.json is unreadable: {reason.splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise MetaError(f"run {paths.run_id!r}: meta.json does not hold a JSON object")
    return RunMeta.from_json(raw, paths.run_id)


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


def update_meta(paths: RunPaths, change: Callable[[RunMeta], None], repair: bool = False) -> RunMeta:
    """Apply `change` to meta.json under the lock and write it atomically; a missing file starts from defaults.

    `change` may raise to abort: nothing is written then. A corrupt meta.json raises MetaError, unless `repair`
    is set (the training process itself: it rewrites a valid file from what it knows rather than stop training).
    """
    with meta_lock(paths):
        try:
            meta = read_meta(paths)
        except MetaError:
            if paths.meta.exists() and not repair:
                raise
            if paths.meta.exists():
                log.warning("meta.json of run %s was unreadable; rewriting it from what this process knows",
                            paths.run_id)
                with contextlib.suppress(OSError):
                    if not paths.meta.is_file() or paths.meta.is_symlink():
                        paths.meta.unlink()  # a FIFO or link in its place: os.replace needs a plain name
            meta = RunMeta(run_id=paths.run_id)
        change(meta)
        meta.invalid = ()
        write_json_atomic(paths.meta, meta.to_json())
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
    """True if the process `pid` is alive and is the same process that had `start_time`. Without a start time
    the identity cannot be confirmed (the pid may have been reused), so the answer is False."""
    if not pid or start_time is None:
        return False
    return process_start_time(pid) == start_time
