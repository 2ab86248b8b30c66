"""meta.json, typed: what a run is (RunKind), where it stands (RunStatus), and every field the protocol defines.

`RunMeta.from_json` reads what any writer left (old field values, missing fields, values of the wrong type, fields
this version does not know) and `to_json` writes it back with the unknown fields kept. Readers and writers use the
attributes; nothing outside this module reads meta.json's keys.

Standard library only: training scripts import it through the protocol.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA = 1
MAX_STEP = 2**53  # steps beyond this are not integers a float (JSON, numpy) can hold exactly


class RunStatus(str, enum.Enum):
    """Lifecycle of a run as recorded in meta.json."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    KILLED = "killed"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_active(self) -> bool:
        """True while a process is expected to exist for the run."""
        return self in _ACTIVE

    @classmethod
    def parse(cls, value: object) -> RunStatus:
        """Read a status written by any writer; old writers said "error" for failed."""
        if isinstance(value, RunStatus):
            return value
        text = str(value or "").strip().lower()
        if text == "error":
            return cls.FAILED
        try:
            return cls(text)
        except ValueError:
            return cls.FAILED if text else cls.STARTING


_ACTIVE = {RunStatus.STARTING, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.STOPPING}


class RunKind(str, enum.Enum):
    """What launched a run and so what stop, resume and fixes mean for it."""

    SCRIPT = "script"  # a Python script run as python would run it; train.py is its versioned copy
    RECIPE = "recipe"  # the embedded trainer on a .toml/.yaml recipe (python -m twinkle_trainer CONFIG)
    MODULE = "module"  # another `python -m module` run
    SERVICE = "service"  # the tinker-compatible training service itself
    SERVICE_CLIENT = "service-client"  # one training client of that service; the service supervises it
    EXPERIMENT = "experiment"  # one experiment of an auto-research loop
    EXTERNAL = "external"  # written by a process twinkle-tui did not start (a plain `python train.py`)

    @property
    def relaunchable(self) -> bool:
        """Whether resume can start it again from its recorded command (a service client resumes from its client)."""
        return self is not RunKind.SERVICE_CLIENT

    @property
    def saves_on_stop(self) -> bool:
        """Whether a graceful stop ends in a checkpoint of ours (the service and its clients save what they choose)."""
        return self not in (RunKind.SERVICE, RunKind.SERVICE_CLIENT)

    @classmethod
    def parse(cls, value: object) -> RunKind | None:
        try:
            return cls(str(value))
        except ValueError:
            return None

    @classmethod
    def infer(cls, raw: Mapping[str, Any]) -> RunKind:
        """The kind of a run written before meta.json said it (schema 1 without `kind`), from the fields it has."""
        if raw.get("supervisor_kind") == "service":
            return cls.SERVICE_CLIENT
        if isinstance(raw.get("service"), dict):
            return cls.SERVICE
        if isinstance(raw.get("research"), dict):
            return cls.EXPERIMENT
        command = raw.get("command")
        if isinstance(command, list) and "--module" in command:
            module = command[command.index("--module") + 1] if command.index("--module") + 1 < len(command) else ""
            return cls.RECIPE if module in ("trainer", "twinkle_trainer") else cls.MODULE
        if isinstance(command, list) and "--script" in command:
            return cls.SCRIPT
        return cls.EXTERNAL


@dataclass
class Progress:
    last_step: int = 0
    total_steps: int | None = None
    step_seconds: float | None = None  # median running seconds of the recent steps (pauses not counted)


@dataclass(frozen=True)
class CheckpointRef:
    """The newest checkpoint a run can resume from."""

    step: int
    path: str
    external: bool = False  # written by the script's own code (a Hugging Face Trainer checkpoint), not by ours
    tinker_path: str | None = None  # a training-service client's name for it (tinker://...)
    seconds: float | None = None  # how long saving it took


def as_int(value: Any, lo: int = -MAX_STEP, hi: int = MAX_STEP) -> int | None:
    """An integer in [lo, hi] from an int or an integral finite float; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and lo <= value <= hi:
        return value
    return None


def as_time(value: Any) -> float | None:
    """A finite, non-negative timestamp, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value < 1e11 else None


@dataclass
class RunMeta:
    """Everything meta.json says about one run."""

    run_id: str | None = None
    kind: RunKind = RunKind.EXTERNAL
    status: RunStatus = RunStatus.STARTING
    model_id: str | None = None
    display_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    cwd: str | None = None
    script_path: str | None = None  # the user's original script (scripts and external runs)
    script_version: int = 0
    pid: int | None = None
    pid_start_time: int | None = None
    pgid: int | None = None
    supervisor_pid: int | None = None
    supervisor_start_time: int | None = None
    start_time: float | None = None  # when the first launch started
    end_time: float | None = None
    launch_time: float | None = None  # when the current launch started
    ran_seconds: float = 0.0  # running time of the earlier launches (pauses not counted)
    paused_seconds: float = 0.0  # time the current launch spent paused so far
    paused_at: float | None = None  # when the current pause began
    stop_deadline: float | None = None  # a stopping run is killed at this time if it has not exited
    exit_code: int | None = None
    exit_signal: str | None = None
    exit_launch: int | None = None  # the launch whose exit is recorded above
    error: str | None = None
    progress: Progress = field(default_factory=Progress)
    last_checkpoint: CheckpointRef | None = None
    fix_attempts: int = 0
    launches: int = 0
    service: dict[str, Any] | None = None  # the training service's own run: its address and open sessions
    research: dict[str, Any] | None = None  # a research experiment's mark: the research, the experiment, the node
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know: kept, written back
    invalid: tuple[str, ...] = ()  # fields a reader had to ignore (bad types); never written

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, raw: Mapping[str, Any], run_id: str | None = None) -> RunMeta:
        """Read any writer's meta.json: defaults for missing fields, old status values, and values of the wrong
        type (a pid that is a string, a step of 1e400) replaced by their defaults and named in `invalid`."""
        invalid: list[str] = []
        meta = cls(extra={k: v for k, v in raw.items() if k not in _KNOWN and k not in _DROPPED})

        def integer(key: str, default: int | None, lo: int = -MAX_STEP) -> Any:
            value = raw.get(key)
            if value is None:
                return default
            number = as_int(value, lo)
            if number is None:
                invalid.append(key)
                return default
            return number

        def text(key: str) -> str | None:
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                invalid.append(key)
                return None
            return value

        def timestamp(key: str) -> float | None:
            value = raw.get(key)
            if value is not None and as_time(value) is None:
                invalid.append(key)
                return None
            return as_time(value)

        for key in ("pid", "pid_start_time", "pgid", "supervisor_pid", "supervisor_start_time", "exit_code",
                    "exit_launch"):
            setattr(meta, key, integer(key, None))
        meta.script_version = integer("script_version", 0)
        meta.fix_attempts = integer("fix_attempts", 0)
        meta.launches = integer("launches", 0)
        meta.schema = integer("schema", SCHEMA)
        for key in ("run_id", "model_id", "display_name", "cwd", "script_path", "exit_signal", "error"):
            setattr(meta, key, text(key))
        meta.start_time, meta.end_time = timestamp("start_time"), timestamp("end_time")
        meta.launch_time, meta.paused_at = timestamp("launch_time"), timestamp("paused_at")
        meta.stop_deadline = timestamp("stop_deadline")
        meta.ran_seconds, meta.paused_seconds = timestamp("ran_seconds") or 0.0, timestamp("paused_seconds") or 0.0
        config = raw.get("config")
        if isinstance(config, dict):
            meta.config = dict(config)
        elif config is not None:
            invalid.append("config")
        command = raw.get("command")
        if command is not None:
            if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
                meta.command = list(command)
            else:
                invalid.append("command")
        for key in ("service", "research"):
            value = raw.get(key)
            if value is not None:
                if isinstance(value, dict):
                    setattr(meta, key, dict(value))
                else:
                    invalid.append(key)
        meta.progress = _progress(raw.get("progress"), invalid)
        meta.last_checkpoint = _checkpoint(raw.get("last_checkpoint"), invalid)
        meta.status = RunStatus.parse(raw.get("status"))
        kind = RunKind.parse(raw.get("kind")) if raw.get("kind") is not None else None
        if kind is None and raw.get("kind") is not None:
            invalid.append("kind")
        meta.kind = kind or RunKind.infer(raw)
        if run_id and not meta.run_id:
            meta.run_id = run_id
        meta.invalid = tuple(invalid)
        return meta

    # ------------------------------------------------------------------ writing
    def to_json(self) -> dict[str, Any]:
        """The JSON object meta.json holds (unknown fields of other writers kept after ours)."""
        out: dict[str, Any] = {"schema": self.schema}
        for f in fields(self):
            if f.name in ("schema", "extra", "invalid"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, Progress):
                value = {"last_step": value.last_step, "total_steps": value.total_steps,
                         **({"step_seconds": value.step_seconds} if value.step_seconds else {})}
            elif isinstance(value, CheckpointRef):
                value = {"step": value.step, "path": value.path, **({"external": True} if value.external else {}),
                         **({"tinker_path": value.tinker_path} if value.tinker_path else {}),
                         **({"seconds": value.seconds} if value.seconds is not None else {})}
            out[f.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    # ------------------------------------------------------------------ what it is
    @property
    def saves_on_stop(self) -> bool:
        return self.kind.saves_on_stop

    def running_seconds(self, now: float) -> float | None:
        """How long the run has trained, over all its launches: paused time and the time between an exit and a
        relaunch are not counted (None when it never started)."""
        began = self.launch_time if self.launch_time is not None else self.start_time
        if began is None:
            return None
        until = self.end_time if not self.status.is_active and self.end_time is not None else now
        current = max(0.0, until - began - self.paused_seconds)
        if self.paused_at is not None and self.status.is_active:
            current = max(0.0, current - max(0.0, until - self.paused_at))
        return self.ran_seconds + current

    def end_launch_time(self, now: float) -> None:
        """Fold the launch that ended into ran_seconds (before a relaunch resets the launch's clock)."""
        if self.launch_time is not None:
            until = self.end_time if self.end_time is not None and self.end_time >= self.launch_time else now
            self.ran_seconds += max(0.0, until - self.launch_time - self.paused_seconds)
        self.launch_time, self.paused_seconds, self.paused_at, self.stop_deadline = None, 0.0, None, None

    def pause_ended(self, now: float) -> None:
        """A pause ended (resume, stop or kill of a paused run): its time is paused time."""
        if self.paused_at is not None:
            self.paused_seconds += max(0.0, now - self.paused_at)
            self.paused_at = None


_KNOWN = {f.name for f in fields(RunMeta)} - {"extra", "invalid"}
_DROPPED = {"_invalid", "supervisor_kind"}  # written by older versions; `kind` says it now


def _progress(raw: Any, invalid: list[str]) -> Progress:
    progress = Progress()
    if raw is None:
        return progress
    if not isinstance(raw, dict):
        invalid.append("progress")
        return progress
    if raw.get("last_step") is not None:
        last = as_int(raw.get("last_step"), 0)
        if last is None:
            invalid.append("progress.last_step")
        else:
            progress.last_step = last
    if raw.get("total_steps") is not None:
        progress.total_steps = as_int(raw.get("total_steps"), 1)
        if progress.total_steps is None:
            invalid.append("progress.total_steps")
    progress.step_seconds = as_time(raw.get("step_seconds"))
    return progress


def _checkpoint(raw: Any, invalid: list[str]) -> CheckpointRef | None:
    if raw is None:
        return None
    if isinstance(raw, dict) and as_int(raw.get("step"), 0) is not None and isinstance(raw.get("path"), str):
        tinker = raw.get("tinker_path")
        return CheckpointRef(as_int(raw["step"], 0) or 0, raw["path"], bool(raw.get("external")),
                             tinker if isinstance(tinker, str) else None, as_time(raw.get("seconds")))
    invalid.append("last_checkpoint")
    return None
