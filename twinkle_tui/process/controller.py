"""ProcessController: the only way twinkle-tui changes a run (launch, pause, resume, stop, kill, update script)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.protocol import (
    RUN_ID_ENV,
    HOME_ENV,
    MetaError,
    RunPaths,
    RunStatus,
    new_run_id,
    process_is,
    read_meta,
    record_event,
    twinkle_home,
    update_meta,
    validate_run_id,
)
from twinkle_tui.runs.store import effective_status


class RunControlError(Exception):
    """An action that cannot be done on a run; the message is one line a user can act on."""


@dataclass(frozen=True)
class Launched:
    """A launch that has started: the run and its supervisor process."""

    run_id: str
    supervisor: subprocess.Popen[bytes]


class ProcessController:
    """Launches runs under a supervisor and signals their process groups."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        grace: float = 30.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = twinkle_home(home)
        self.grace = grace
        self.python = python
        self.clock = clock

    def paths(self, run_id: str) -> RunPaths:
        return RunPaths(self.home / validate_run_id(run_id))

    def meta(self, run_id: str) -> dict[str, Any]:
        try:
            return read_meta(self.paths(run_id))
        except MetaError as exc:
            raise RunControlError(str(exc)) from None

    # ---------------------------------------------------------------- launching
    def launch_script(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        run_id: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
    ) -> Launched:
        """Run a Python script as a new run. The script is copied to the run's train.py (the version fixes edit)."""
        source_path = Path(script).expanduser().resolve()
        try:
            source = source_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunControlError(f"cannot read script {script}: {exc.strerror or exc}") from None
        check_compiles(source, str(source_path))
        run_id = validate_run_id(run_id) if run_id else new_run_id(source_path.stem.replace("_", "-")[:40] or "run")
        paths = self.paths(run_id)
        if paths.root.exists() and paths.meta.exists():
            raise RunControlError(f"run {run_id!r} already exists; resume it or choose another --run-id")
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.script.write_text(source, encoding="utf-8")
        command = [self.python, "-u", str(paths.script), *args]

        def init(meta: dict[str, Any]) -> None:
            meta["script_path"] = str(source_path)
            meta["script_version"] = 1
            meta["model_id"] = model_id
            # Sibling modules of the original script stay importable from the copy.
            meta["extra_pythonpath"] = str(source_path.parent)

        return self._launch(paths, command, Path(cwd or os.getcwd()), init)

    def launch_module(
        self,
        module: str,
        args: Sequence[str] = (),
        run_id: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
    ) -> Launched:
        """Run `python -m module args...` as a new run (the embedded trainer: module='trainer')."""
        run_id = validate_run_id(run_id) if run_id else new_run_id(module.split(".")[0])
        paths = self.paths(run_id)
        if paths.meta.exists():
            raise RunControlError(f"run {run_id!r} already exists; resume it or choose another --run-id")
        command = [self.python, "-u", "-m", module, *args]

        def init(meta: dict[str, Any]) -> None:
            meta["model_id"] = model_id

        return self._launch(paths, command, Path(cwd or os.getcwd()), init)

    def _launch(
        self, paths: RunPaths, command: list[str], cwd: Path, init: Callable[[dict[str, Any]], None] | None = None
    ) -> Launched:
        now = self.clock()

        def starting(meta: dict[str, Any]) -> None:
            if init is not None:
                init(meta)
            meta["run_id"] = paths.run_id
            meta["status"] = RunStatus.STARTING.value
            meta["command"] = command
            meta["cwd"] = str(cwd)
            meta["start_time"] = meta.get("start_time") or now
            meta["end_time"] = None
            meta["exit_code"] = None
            meta["exit_signal"] = None
            meta["error"] = None
            meta["launches"] = int(meta.get("launches") or 0) + 1

        meta = update_meta(paths, starting)
        env = dict(os.environ)
        env[RUN_ID_ENV] = paths.run_id
        env[HOME_ENV] = str(self.home)
        extra = meta.get("extra_pythonpath")
        if extra:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
        supervisor_cmd = [
            self.python, "-m", "twinkle_tui.process.supervisor",
            "--home", str(self.home), "--run-id", paths.run_id, "--grace", str(self.grace),
            "--cwd", str(cwd), "--launch", str(meta["launches"]), "--", *command,
        ]
        proc = subprocess.Popen(
            supervisor_cmd, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(paths.root / "supervisor.log", "ab"),
            start_new_session=True,  # the run outlives the dashboard and never sees its Ctrl-C
        )
        return Launched(paths.run_id, proc)

    # ---------------------------------------------------------------- state changes
    def status(self, run_id: str) -> RunStatus:
        return effective_status(self.meta(run_id))

    def is_alive(self, run_id: str) -> bool:
        meta = self.meta(run_id)
        return process_is(meta.get("pid"), meta.get("pid_start_time"))

    def pause(self, run_id: str) -> None:
        """Freeze the run's process group (SIGSTOP): memory and GPU state stay, no step progresses."""
        meta = self._require(run_id, {RunStatus.RUNNING, RunStatus.STARTING}, "pause")
        paths = self.paths(run_id)
        # Write first, then stop: the child may be frozen holding the meta lock only after we no longer need it.
        update_meta(paths, lambda m: m.__setitem__("status", RunStatus.PAUSED.value))
        self._signal(meta, signal.SIGSTOP)
        record_event(paths, "pause", self.clock, step=meta["progress"].get("last_step"))

    def resume(self, run_id: str) -> Launched | None:
        """Continue a paused run (SIGCONT), or relaunch a stopped/failed run from its last checkpoint."""
        meta = self.meta(run_id)
        status = effective_status(meta)
        paths = self.paths(run_id)
        if status == RunStatus.PAUSED:
            self._signal(meta, signal.SIGCONT)
            update_meta(paths, lambda m: m.__setitem__("status", RunStatus.RUNNING.value))
            record_event(paths, "resume", self.clock, step=meta["progress"].get("last_step"))
            return None
        if status in (RunStatus.STOPPED, RunStatus.FAILED):
            command = meta.get("command")
            if not command:
                raise RunControlError(f"run {run_id!r} has no recorded command to relaunch")
            if meta.get("script_path") and paths.script.exists():
                check_compiles(paths.script.read_text(encoding="utf-8"), str(paths.script))
            checkpoint = (meta.get("last_checkpoint") or {}).get("step")
            record_event(paths, "resume", self.clock, relaunch=True, from_checkpoint=checkpoint)
            return self._launch(paths, list(command), Path(meta.get("cwd") or os.getcwd()))
        raise RunControlError(f"cannot resume run {run_id!r}: it is {status.value}")

    def stop(self, run_id: str) -> None:
        """Graceful stop: SIGTERM, the runtime checkpoints and exits; SIGKILL after the grace period."""
        meta = self._require(
            run_id, {RunStatus.RUNNING, RunStatus.STARTING, RunStatus.PAUSED, RunStatus.STOPPING}, "stop"
        )
        paths = self.paths(run_id)
        update_meta(paths, lambda m: m.__setitem__("status", RunStatus.STOPPING.value))
        record_event(paths, "stop", self.clock, step=meta["progress"].get("last_step"))
        supervisor = meta.get("supervisor_pid")
        if supervisor and process_is(supervisor, meta.get("supervisor_start_time")):
            os.kill(supervisor, signal.SIGTERM)  # it forwards to the group and enforces the grace period
        else:
            self._signal(meta, signal.SIGTERM)
            self._signal(meta, signal.SIGCONT)

    def kill(self, run_id: str) -> None:
        """SIGKILL the run's process group now (no checkpoint)."""
        meta = self._require(
            run_id, {RunStatus.RUNNING, RunStatus.STARTING, RunStatus.PAUSED, RunStatus.STOPPING}, "kill"
        )
        record_event(self.paths(run_id), "kill", self.clock, step=meta["progress"].get("last_step"))
        self._signal(meta, signal.SIGKILL)

    def update_script(self, run_id: str, source: str, reason: str | None = None) -> int:
        """Archive train.py as train_v{N}.py and write the new source; refuses source that does not compile."""
        paths = self.paths(run_id)
        check_compiles(source, str(paths.script))
        current = int(self.meta(run_id).get("script_version") or 0)
        if paths.script.exists():
            current = max(current, 1)
            shutil.copy2(paths.script, paths.script_version(current))
        tmp = paths.script.with_name(".train.py.tmp")
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, paths.script)
        new_version = current + 1
        update_meta(paths, lambda m: m.__setitem__("script_version", new_version))
        record_event(paths, "script", self.clock, version=new_version, reason=reason)
        return new_version

    # ---------------------------------------------------------------- helpers
    def _require(self, run_id: str, allowed: set[RunStatus], action: str) -> dict[str, Any]:
        meta = self.meta(run_id)
        status = effective_status(meta)
        if status not in allowed:
            raise RunControlError(f"cannot {action} run {run_id!r}: it is {status.value}")
        if not process_is(meta.get("pid"), meta.get("pid_start_time")):
            raise RunControlError(f"cannot {action} run {run_id!r}: its process has not started or is gone")
        return meta

    def _signal(self, meta: dict[str, Any], sig: int) -> None:
        pid = meta.get("pid")
        if not process_is(pid, meta.get("pid_start_time")):
            raise RunControlError(f"run {meta.get('run_id')!r} has no live process")
        pgid = meta.get("pgid")
        try:
            if pgid and pgid == pid:
                os.killpg(pgid, sig)
            else:  # a script started by hand shares its shell's group: signal only the process itself
                os.kill(pid, sig)
        except ProcessLookupError:
            raise RunControlError(f"run {meta.get('run_id')!r}: process {pid} is gone") from None


def check_compiles(source: str, filename: str) -> None:
    """Refuse a script that does not compile, with the compiler's one-line reason."""
    try:
        compile(source, filename, "exec")
    except SyntaxError as exc:
        raise RunControlError(f"{Path(filename).name} does not compile: {exc.msg} (line {exc.lineno})") from None
