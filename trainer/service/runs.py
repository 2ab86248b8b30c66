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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.protocol import (
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
from trainer.service.lora import LoraSpec
from trainer.service.sessions import TinkerSession

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
        short = base_model.removeprefix("builtin:").rsplit("/", 1)[-1].split("-")[0] or "model"
        paths = RunPaths(home / new_run_id(f"tinker-{short}"))
        paths.check_not_symlink()
        paths.root.mkdir(parents=True)
        now = time.time()
        service = os.getpid()

        def change(meta: dict[str, Any]) -> None:
            meta.update(run_id=paths.run_id, model_id=base_model, status=RunStatus.RUNNING.value, start_time=now,
                        pid=session.client_pid, pid_start_time=session.client_start, pgid=_pgid(session.client_pid),
                        supervisor_pid=service, supervisor_start_time=process_start_time(service),
                        supervisor_kind="service", launches=1,
                        config={"lora": asdict(lora), "source": SERVICE_SOURCE, "session": session.session_id,
                                "tinker_model_id": model_id,
                                **({"parent_run": session.managed_run} if session.managed_run else {}),
                                **({"parent_run": resumed_from.run_id, "resumed_from": resumed_from.tinker_path}
                                   if resumed_from else {}),
                                **({"session_metadata": session.user_metadata} if session.user_metadata else {}),
                                **({"user_metadata": user_metadata} if user_metadata else {})})

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

        def change(meta: dict[str, Any]) -> None:
            meta["model_id"] = base_model
            meta["config"] = {**(meta.get("config") or {}), "lora": asdict(lora), "source": SERVICE_SOURCE,
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
        quietly(self.paths, lambda m: m["progress"].__setitem__(
            "last_step", max(int(m["progress"].get("last_step") or 0), step)))

    def checkpoint(self, step: int, folder: Path, tinker_path: str) -> None:
        quietly(self.paths, lambda m: m.__setitem__(
            "last_checkpoint", {"step": step, "path": str(folder), "tinker_path": tinker_path, "external": True}))
        record_event(self.paths, "checkpoint", step=step, path=str(folder), tinker_path=tinker_path)

    def end(self, why: str, status: RunStatus | None = None, error: str | None = None) -> None:
        """The client is gone: a run the service made ends (stopped if the dashboard asked, else completed, unless
        told otherwise). A managed client's run is its supervisor's to end."""
        if not self.owned:
            return
        now = time.time()

        def change(meta: dict[str, Any]) -> None:
            current = RunStatus.parse(meta.get("status"))
            if not current.is_active:
                return
            stopping = current == RunStatus.STOPPING  # the dashboard's stop: whatever the client did, it was stopped
            final = RunStatus.STOPPED if stopping else (status or RunStatus.COMPLETED)
            meta["status"] = final.value
            meta["end_time"] = now
            if error or (final == RunStatus.FAILED and not meta.get("error")):
                meta["error"] = error or why

        quietly(self.paths, change)
        self.log(why)
        try:
            record_event(self.paths, "finish", status=read_meta(self.paths).get("status"), note=why)
        except Exception as exc:
            log.warning("cannot record the end of %s: %s", self.paths.run_id, exc)


def _pgid(pid: int | None) -> int | None:
    try:
        return os.getpgid(pid) if pid else None
    except OSError:
        return None


def quietly(paths: RunPaths, change: Callable[[dict[str, Any]], None]) -> None:
    try:
        update_meta(paths, change, repair=True)
    except Exception as exc:  # bookkeeping never fails a training request
        log.warning("cannot update %s: %s", paths.meta, exc)
