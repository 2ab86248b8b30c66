"""A training client's run in $TWINKLE_HOME.

When the client was started as a managed run (`twinkle-tui --run client.py`), the service finds that out from the
client process's environment (its TWINKLE_RUN_ID) and writes into that run; the dashboard's pause, resume and stop
then act on the client, as with any script. Otherwise the service makes a run whose process is the client (found
from the TCP connection on this machine) and whose supervisor is the service: pausing it pauses the client,
stopping it stops the client, and when the client process ends the run ends.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import (
    CheckpointRef,
    RunKind,
    RunMeta,
    RunPaths,
    RunStatus,
    append_jsonl,
    new_run_id,
    process_start_time,
    read_meta,
    record_event,
    update_meta,
    validate_run_id,
)
from twinkle_trainer.service.lora import LoraSpec
from twinkle_trainer.service.sessions import TinkerSession

log = logging.getLogger(__name__)

SERVICE_SOURCE = "tinker service"  # meta config.source of every run this service writes


@dataclass(frozen=True)
class Resumed:
    """Where a client created from a checkpoint comes from."""

    run_id: str
    tinker_path: str
    step: int


class ServiceRun:
    """A training client's run: meta.json, metrics.jsonl, events, output.log (for runs the service made)."""

    def __init__(self, paths: RunPaths, owned: bool) -> None:
        self.paths, self.owned = paths, owned

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    @classmethod
    def create(cls, home: Path, base_model: str, lora: LoraSpec, session: TinkerSession, model_id: str,
               user_metadata: dict[str, Any] | None = None, resumed_from: Resumed | None = None) -> ServiceRun:
        label = client_label(user_metadata, session.user_metadata)
        short = base_model.removeprefix("builtin:").rsplit("/", 1)[-1].split("-")[0] or "model"
        paths = RunPaths(home / new_run_id(f"tinker-{slug(label) or short}"))
        paths.check_not_symlink()
        paths.root.mkdir(parents=True)
        now = time.time()
        service = os.getpid()

        def change(meta: RunMeta) -> None:
            meta.run_id, meta.kind, meta.model_id = paths.run_id, RunKind.SERVICE_CLIENT, base_model
            meta.status, meta.start_time, meta.launches = RunStatus.RUNNING, now, 1
            meta.pid, meta.pid_start_time, meta.pgid = session.client_pid, session.client_start, _pgid(session.client_pid)
            meta.supervisor_pid, meta.supervisor_start_time = service, process_start_time(service)
            meta.display_name = client_run_name(label, base_model, lora)
            meta.config = {"lora": asdict(lora), "source": SERVICE_SOURCE, "session": session.session_id,
                           "tinker_model_id": model_id,
                           **({"parent_run": session.managed_run} if session.managed_run else {}),
                           **({"parent_run": resumed_from.run_id, "resumed_from": resumed_from.tinker_path}
                              if resumed_from else {}),
                           **({"session_metadata": session.user_metadata} if session.user_metadata else {}),
                           **({"user_metadata": user_metadata} if user_metadata else {})}

        update_meta(paths, change, repair=True)
        origin: dict[str, Any] = {"from_run": resumed_from.run_id, "from_checkpoint": resumed_from.step,
                                  "tinker_path": resumed_from.tinker_path} if resumed_from else {}
        record_event(paths, "launch", pid=session.client_pid, launch=1, source=SERVICE_SOURCE, **origin)
        if resumed_from:  # the run it continues hears of it too: one line of descent, in both timelines
            try:
                record_event(RunPaths(home / resumed_from.run_id), "resumed_as", run=paths.run_id,
                             tinker_path=resumed_from.tinker_path, step=resumed_from.step)
            except OSError as exc:
                log.warning("cannot record the resume in %s: %s", resumed_from.run_id, exc)
        run = cls(paths, owned=True)
        run.log(f"training client of session {session.session_id}: LoRA rank {lora.rank} on {base_model}"
                + (f" (client process {session.client_pid})" if session.client_pid else ""))
        return run

    @classmethod
    def attach(cls, home: Path, run_id: str, base_model: str, lora: LoraSpec, model_id: str,
               user_metadata: dict[str, Any] | None = None) -> ServiceRun:
        paths = RunPaths(home / validate_run_id(run_id))

        def change(meta: RunMeta) -> None:
            meta.model_id = base_model
            meta.config = {**(meta.config or {}), "lora": asdict(lora), "source": SERVICE_SOURCE,
                           "tinker_model_id": model_id,
                           **({"user_metadata": user_metadata} if user_metadata else {})}

        update_meta(paths, change, repair=True)
        return cls(paths, owned=False)

    def log(self, message: str) -> None:
        """A line in the run's log; a managed client's log is its own output, so only runs the service made."""
        if self.owned:
            stamp = time.strftime("%H:%M:%S")
            try:
                with open(self.paths.log, "a", encoding="utf-8") as f:
                    f.write(f"[service {stamp}] {message}\n")
            except OSError as exc:  # bookkeeping never fails a training request
                log.warning("cannot write %s: %s", self.paths.log, exc)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        try:
            append_jsonl(self.paths.metrics, {"step": step, "ts": time.time(), **values})
        except OSError as exc:
            log.warning("cannot write %s: %s", self.paths.metrics, exc)
        def change(meta: RunMeta) -> None:
            meta.progress.last_step = max(meta.progress.last_step, step)

        quietly(self.paths, change)

    def checkpoint(self, step: int, folder: Path, tinker_path: str) -> None:
        def change(meta: RunMeta) -> None:
            meta.last_checkpoint = CheckpointRef(step, str(folder), external=True, tinker_path=tinker_path)

        quietly(self.paths, change)
        record_event(self.paths, "checkpoint", step=step, path=str(folder), tinker_path=tinker_path)

    def end(self, why: str, status: RunStatus | None = None, error: str | None = None) -> None:
        """The client is gone: a run the service made ends (stopped if the dashboard asked, else completed, unless
        told otherwise). A managed client's run is its supervisor's to end."""
        if not self.owned:
            return
        now = time.time()

        def change(meta: RunMeta) -> None:
            current = meta.status
            if not current.is_active:
                return
            stopping = current == RunStatus.STOPPING  # the dashboard's stop: whatever the client did, it was stopped
            final = RunStatus.STOPPED if stopping else (status or RunStatus.COMPLETED)
            meta.status = final
            meta.end_time = now
            if error or (final == RunStatus.FAILED and not meta.error):
                meta.error = error or why

        quietly(self.paths, change)
        self.log(why)
        try:
            record_event(self.paths, "finish", status=read_meta(self.paths).status.value, note=why)
        except Exception as exc:
            log.warning("cannot record the end of %s: %s", self.paths.run_id, exc)


LABEL_KEYS = ("name", "run_name", "role", "experiment", "description")  # the keys a client's metadata names it by


def client_label(*metadata: dict[str, Any] | None) -> str | None:
    """What a client says it is: the first of LABEL_KEYS in the training client's user metadata, then in its
    session's (ServiceClient(user_metadata=...)); None when it says nothing."""
    for found in metadata:
        for key in LABEL_KEYS:
            value = (found or {}).get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
                return " ".join(str(value).split())[:40]
    return None


def client_run_name(label: str | None, base_model: str, lora: LoraSpec) -> str:
    """The name a client's run shows in the run list: its label, its base model and LoRA rank (and seed), e.g.
    `teacher · SmolLM2-135M-Instruct r8`; runs of clients that say nothing apart differ at least by seed."""
    model = base_model.removeprefix("builtin:").rsplit("/", 1)[-1] or base_model
    shape = f"{model} r{lora.rank}" + (f" seed {lora.seed}" if lora.seed is not None and not label else "")
    return f"{label} · {shape}" if label else shape


def slug(label: str | None) -> str:
    """A label's run-id form: lower-case letters, digits and dashes, at most 24 characters."""
    out = re.sub(r"[^a-z0-9]+", "-", (label or "").lower()).strip("-")
    return out[:24].rstrip("-")


def _pgid(pid: int | None) -> int | None:
    try:
        return os.getpgid(pid) if pid else None
    except OSError:
        return None


def quietly(paths: RunPaths, change: Callable[[RunMeta], None]) -> None:
    try:
        update_meta(paths, change, repair=True)
    except Exception as exc:  # bookkeeping never fails a training request
        log.warning("cannot update %s: %s", paths.meta, exc)
