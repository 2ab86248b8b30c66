"""ProcessController: the only way twinkle-tui changes a run (launch, pause, resume, stop, kill, update script).

Every action checks the run's state and changes it under the meta.json lock, so two dashboards acting at once
see one order of events; a signal is sent inside that critical section. Signals go to the run's whole process
tree (tree.py), and never to a pid whose identity (pid + start time) cannot be confirmed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from twinkle_trainer.protocol import (
    InvalidRunId,
    MetaError,
    RunKind,
    RunMeta,
    RunPaths,
    RunStatus,
    new_run_id,
    process_is,
    process_start_time,
    read_meta,
    record_event,
    twinkle_home,
    update_meta,
    validate_run_id,
    write_json_atomic,
)
from twinkle_tui.process import scripts
from twinkle_tui.process.adopt import find_leader, start_adopter
from twinkle_tui.process.exits import record_exit
from twinkle_tui.process.launching import (
    CONFIG_SUFFIXES,
    SCRIPT_SUFFIXES,
    Launched,
    ResumePlan,
    RunControlError,
    checked_source,
    launchable,
    not_relaunchable,
)
from twinkle_tui.process.tree import ROLE_ENV, RunIdentity, signal_run
from twinkle_tui.runs.store import NoSuchRun, effective_status

log = logging.getLogger(__name__)

CONTROLLABLE = {RunStatus.RUNNING, RunStatus.STARTING, RunStatus.PAUSED, RunStatus.STOPPING}


class ProcessController:
    """Launches runs under a supervisor and signals their processes."""

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
        return RunPaths(self.home / validate_run_id(run_id)).check_not_symlink()

    def existing(self, run_id: str) -> RunPaths:
        paths = self.paths(run_id)
        if not paths.root.is_dir():
            raise NoSuchRun(f"no run {run_id!r} under {self.home}")
        return paths

    def meta(self, run_id: str) -> RunMeta:
        try:
            return read_meta(self.existing(run_id))
        except MetaError as exc:
            raise RunControlError(str(exc)) from None

    # ---------------------------------------------------------------- launching
    def launch(self, spec: str | os.PathLike[str], args: Sequence[str] = (), run_id: str | None = None,
               cwd: str | os.PathLike[str] | None = None) -> Launched:
        """Start a run from a path: a .py script as itself, a .toml/.yaml recipe through the embedded trainer."""
        path = Path(spec).expanduser()
        if launchable(path, str(spec)) in SCRIPT_SUFFIXES:
            return self.launch_script(path, args, run_id, cwd)
        return self.launch_config(path, args, run_id, cwd)

    def launch_script(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        run_id: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
        env: Mapping[str, str] | None = None,
        annotate: Callable[[RunMeta], None] | None = None,
    ) -> Launched:
        """Run a Python script as a new run. It runs as `python script.py` would; the run directory keeps the
        copy that runs (train.py) and the versions fixes make of it. `env` is added to the run's environment;
        `annotate` writes what else the run is into its meta.json at creation (a research experiment's mark)."""
        source_path = Path(script).expanduser().resolve()
        checked_source(source_path)
        run_id = validate_run_id(run_id) if run_id else new_run_id(source_path.name)
        paths = self._new_run(run_id)
        shutil.copyfile(source_path, paths.script)  # the bytes as they are: a coding line stays true

        def init(meta: RunMeta) -> None:
            meta.kind = RunKind.SCRIPT
            meta.script_path = str(source_path)
            meta.script_version = 1
            meta.model_id = model_id
            if annotate is not None:
                annotate(meta)

        return self._launch(paths, self._script_command(paths, str(source_path), args), cwd, init, new=True, env=env)

    def launch_config(self, config: str | os.PathLike[str], args: Sequence[str] = (), run_id: str | None = None,
                      cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                      annotate: Callable[[RunMeta], None] | None = None) -> Launched:
        """Train a recipe (.toml/.yaml) with the embedded trainer: `python -m twinkle_trainer CONFIG args...`."""
        path = Path(config).expanduser().resolve()
        run_id = validate_run_id(run_id) if run_id else new_run_id(path.name)
        return self.launch_module("twinkle_trainer", [str(path), *args], run_id, cwd, kind=RunKind.RECIPE, env=env,
                                  annotate=annotate)

    def launch_module(
        self,
        module: str,
        args: Sequence[str] = (),
        run_id: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
        kind: RunKind = RunKind.MODULE,
        env: Mapping[str, str] | None = None,
        annotate: Callable[[RunMeta], None] | None = None,
    ) -> Launched:
        """Run `python -m module args...` as a new run (the embedded trainer: module='twinkle_trainer')."""
        run_id = validate_run_id(run_id) if run_id else new_run_id(module.split(".")[0])
        paths = self._new_run(run_id)
        command = [self.python, "-P", "-u", "-m", "twinkle_tui.process.bootstrap", "--module", module, "--", *args]

        def init(meta: RunMeta) -> None:
            meta.kind = kind
            meta.model_id = model_id
            if annotate is not None:
                annotate(meta)

        return self._launch(paths, command, cwd, init, new=True, env=env)

    def _script_command(self, paths: RunPaths, original: str, args: Sequence[str]) -> list[str]:
        return [self.python, "-P", "-u", "-m", "twinkle_tui.process.bootstrap", "--script", str(paths.script),
                "--as", original, "--", *args]

    def _new_run(self, run_id: str) -> RunPaths:
        paths = self.paths(run_id)
        if paths.root.exists() and (paths.meta.exists() or any(paths.root.iterdir())):
            raise RunControlError(f"run {run_id!r} already exists; resume it or choose another run id")
        try:
            paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunControlError(f"cannot create the run directory {paths.root}: {exc.strerror or exc}") from None
        return paths

    def _launch(self, paths: RunPaths, command: list[str], cwd: str | os.PathLike[str] | None,
                init: Callable[[RunMeta], None] | None = None, new: bool = False,
                env: Mapping[str, str] | None = None) -> Launched:
        """Mark the run starting and start its supervisor. If the supervisor cannot start, meta.json is rolled
        back (a new run's directory is removed) and the failure is recorded, so nothing is left 'starting'."""
        workdir = Path(cwd or os.getcwd())
        if not workdir.is_dir():
            if new:
                shutil.rmtree(paths.root, ignore_errors=True)
            raise RunControlError(f"cannot launch {paths.run_id!r}: its working directory {workdir} no longer exists")
        now = self.clock()
        before: RunMeta | None = None
        with contextlib.suppress(MetaError):
            before = read_meta(paths) if paths.meta.exists() else None

        def starting(meta: RunMeta) -> None:
            if init is not None:
                init(meta)
            meta.run_id = paths.run_id
            meta.status = RunStatus.STARTING
            meta.command = command
            meta.cwd = str(workdir)
            meta.start_time = meta.start_time or now
            meta.end_launch_time(now)  # an earlier launch's running time is kept; the gap until now is not counted
            meta.launch_time = now
            meta.end_time = meta.exit_code = meta.exit_signal = meta.error = None
            meta.pid = meta.pid_start_time = meta.pgid = meta.supervisor_pid = meta.supervisor_start_time = None
            meta.launches += 1

        meta = update_meta(paths, starting)
        env = {**os.environ, **(env or {})}
        env[ROLE_ENV] = "supervisor"
        env.pop("TWINKLE_RUN_ID", None)  # only the run's own processes carry it (tree.py finds them by it)
        supervisor_cmd = [
            self.python, "-P", "-m", "twinkle_tui.process.supervisor",
            "--home", str(self.home), "--run-id", paths.run_id, "--grace", str(self.grace),
            "--cwd", str(workdir), "--launch", str(meta.launches), "--", *command,
        ]
        try:
            with open(paths.root / "supervisor.log", "ab") as errors:
                proc = subprocess.Popen(
                    supervisor_cmd, env=env, cwd=str(workdir), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=errors,
                    start_new_session=True,  # the run outlives the dashboard and never sees its Ctrl-C
                )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if new or before is None:
                shutil.rmtree(paths.root, ignore_errors=True)
            else:
                write_json_atomic(paths.meta, before.to_json())
                record_event(paths, "launch_failed", self.clock, error=reason)
            raise RunControlError(f"cannot launch {paths.run_id!r}: {reason}") from None
        return Launched(paths.run_id, proc)

    # ---------------------------------------------------------------- state changes
    def status(self, run_id: str) -> RunStatus:
        return effective_status(self.meta(run_id))

    def pause(self, run_id: str) -> None:
        """Freeze the run's processes (SIGSTOP): memory and GPU state stay, no step progresses."""
        paths = self.existing(run_id)
        self.recover(run_id)

        def change(meta: RunMeta) -> None:
            self._check(meta, {RunStatus.RUNNING, RunStatus.STARTING}, "pause")
            self._signal(meta, signal.SIGSTOP)  # under the lock: no other dashboard's resume can come between
            meta.status = RunStatus.PAUSED
            meta.paused_at = self.clock()
            record_event(paths, "pause", self.clock, step=meta.progress.last_step)

        self._locked(paths, change)

    def resume_plan(self, run_id: str) -> ResumePlan:
        """What resume would do now; raises if the run cannot be resumed."""
        meta = self.meta(run_id)
        status = effective_status(meta)
        if status == RunStatus.PAUSED:
            return ResumePlan(False, None)
        if status in (RunStatus.STOPPED, RunStatus.FAILED, RunStatus.KILLED):
            if not meta.kind.relaunchable:
                raise RunControlError(not_relaunchable(meta))
            if not meta.command:
                raise RunControlError(f"run {run_id!r} has no recorded command to relaunch")
            return ResumePlan(True, meta.last_checkpoint.step if meta.last_checkpoint else None)
        raise RunControlError(f"cannot resume run {run_id!r}: it is {status.value}")

    def resume(self, run_id: str) -> Launched | None:
        """Continue a paused run (SIGCONT), or relaunch a stopped/failed/killed run from its last checkpoint."""
        paths = self.existing(run_id)
        self.recover(run_id)
        relaunch: list[RunMeta] = []

        def change(meta: RunMeta) -> None:
            status = effective_status(meta)
            if status == RunStatus.PAUSED:
                self._check(meta, {RunStatus.PAUSED}, "resume")
                self._signal(meta, signal.SIGCONT)
                meta.status = RunStatus.RUNNING
                meta.pause_ended(self.clock())
                record_event(paths, "resume", self.clock, step=meta.progress.last_step)
                return
            if status not in (RunStatus.STOPPED, RunStatus.FAILED, RunStatus.KILLED):
                raise RunControlError(f"cannot resume run {run_id!r}: it is {status.value}")
            if not meta.kind.relaunchable:
                raise RunControlError(not_relaunchable(meta))
            if process_is(meta.pid, meta.pid_start_time) or \
                    process_is(meta.supervisor_pid, meta.supervisor_start_time):
                raise RunControlError(f"run {run_id!r} is still shutting down; resume it in a moment")
            if not meta.command:
                raise RunControlError(f"run {run_id!r} has no recorded command to relaunch")
            relaunch.append(meta)
            raise _NoWrite

        self._locked(paths, change)
        if not relaunch:
            return None
        meta = relaunch[0]
        if meta.script_path and paths.script.exists():
            checked_source(paths.script)
        record_event(paths, "resume", self.clock, relaunch=True,
                     from_checkpoint=meta.last_checkpoint.step if meta.last_checkpoint else None)
        return self._launch(paths, list(meta.command or ()), meta.cwd)

    def stop(self, run_id: str) -> None:
        """Graceful stop: SIGTERM, the runtime checkpoints and exits; SIGKILL after the grace period (enforced by
        the supervisor, or by an adopting one when the supervisor is gone)."""
        paths = self.existing(run_id)
        self.recover(run_id)
        supervisor: list[int] = []

        def change(meta: RunMeta) -> None:
            self._check(meta, {RunStatus.RUNNING, RunStatus.STARTING, RunStatus.PAUSED}, "stop")
            meta.status = RunStatus.STOPPING
            meta.pause_ended(self.clock())  # a paused run wakes up to stop
            record_event(paths, "stop", self.clock, step=meta.progress.last_step)
            if meta.kind == RunKind.SERVICE_CLIENT:
                # The training service watches this run for its client; it serves others too and must not be
                # signalled. The client gets SIGTERM (after SIGCONT if paused); the service records its end.
                self._signal(meta, signal.SIGCONT)
                self._signal(meta, signal.SIGTERM)
                return
            if meta.supervisor_pid and process_is(meta.supervisor_pid, meta.supervisor_start_time):
                supervisor.append(meta.supervisor_pid)

        self._locked(paths, change)
        if supervisor:
            try:
                os.kill(supervisor[0], signal.SIGTERM)  # it signals the run and enforces the grace period
                return
            except OSError:
                pass
        self.recover(run_id, force_adopt=True)  # an adopter reads "stopping" and does the same

    def kill(self, run_id: str) -> None:
        """SIGKILL every process of the run now (no checkpoint); the run is recorded as killed."""
        paths = self.existing(run_id)
        self.recover(run_id)

        def change(meta: RunMeta) -> None:
            self._check(meta, CONTROLLABLE, "kill")
            meta.status = RunStatus.KILLED
            meta.pause_ended(self.clock())
            record_event(paths, "kill", self.clock, step=meta.progress.last_step)
            self._signal(meta, signal.SIGCONT)
            self._signal(meta, signal.SIGKILL)

        self._locked(paths, change)

    def recover(self, run_id: str, force_adopt: bool = False) -> str | None:
        """Give a run whose supervisor is gone a new one: adopt its live process, or record it as failed if
        nothing is left. Returns what was done, or None when the run needed nothing."""
        paths = self.existing(run_id)
        try:
            meta = read_meta(paths)
        except MetaError:
            return None
        status = meta.status
        if not status.is_active:
            return None
        if process_is(meta.supervisor_pid, meta.supervisor_start_time):
            return None
        if not force_adopt and status == RunStatus.STARTING and not meta.supervisor_pid:
            started = meta.start_time or 0
            if self.clock() - float(started) < 10:  # a supervisor that is still starting has not written yet
                return None
        launch = meta.launches
        if meta.kind == RunKind.SERVICE_CLIENT:  # its service kept it, and is gone: the client's session with it
            record_exit(paths, None, launch, error="the training service that served this client ended without "
                        "closing its session (it was killed or crashed)", note="recovered: the service is gone")
            return "recorded as ended"
        pid, start = meta.pid, meta.pid_start_time
        if pid and start is None and process_start_time(pid) is not None:
            return None  # an old writer recorded no start time: that pid may or may not be the run; leave it be
        if not process_is(pid, start):
            found = find_leader(RunIdentity(run_id, str(self.home), None, None, launch=launch))  # a supervisor
            # that died before it recorded its child
            if found is not None:
                pid, start = found

                def record(m: RunMeta) -> None:
                    m.pid, m.pid_start_time = found[0], found[1]

                self._locked(paths, record)
        if pid is not None and start is not None and process_is(pid, start):
            start_adopter(self.python, paths, self.grace, pid, start, launch)
            return "adopted"
        record_exit(paths, None, launch, error="the run's supervisor and process are gone; how it ended was not recorded",
                    note="recovered: nothing of the run was left")
        return "recorded as ended"

    def update_script(self, run_id: str, source: str, reason: str | None = None) -> int:
        """Archive train.py as train_v{N}.py and write the new source in the encoding it declares; refuses source
        that does not compile or that its declared encoding cannot hold."""
        paths = self.existing(run_id)
        try:
            scripts.check_compiles(source, str(paths.script))
            data = scripts.encode_source(source, "the new script")
        except scripts.ScriptError as exc:
            raise RunControlError(str(exc)) from None
        return self._replace_script(run_id, paths, data, reason)

    def restore_script(self, run_id: str) -> int:
        """Put the previous version of the script back, byte for byte, as a new version (nothing is lost)."""
        paths = self.existing(run_id)
        current = self.meta(run_id).script_version
        try:
            data = scripts.previous_version(paths, current)
        except scripts.ScriptError as exc:
            raise RunControlError(str(exc)) from None
        return self._replace_script(run_id, paths, data, f"undo: back to version {current - 1}")

    def _replace_script(self, run_id: str, paths: RunPaths, data: bytes, reason: str | None) -> int:
        try:
            version = scripts.write_version(paths, data)
        except (scripts.ScriptError, MetaError) as exc:
            raise RunControlError(f"cannot write the script of {run_id!r}: {exc}") from None
        record_event(paths, "script", self.clock, version=version, reason=reason)
        return version

    # ---------------------------------------------------------------- managing runs
    def _require_ended(self, run_id: str, action: str) -> RunPaths:
        paths = self.existing(run_id)
        self.recover(run_id)
        try:
            meta = read_meta(paths)
        except MetaError:
            meta = None  # an unreadable run can still be removed
        if meta is not None:
            status = effective_status(meta)
            alive = process_is(meta.pid, meta.pid_start_time) or \
                process_is(meta.supervisor_pid, meta.supervisor_start_time)
            if status.is_active or alive:
                raise RunControlError(f"cannot {action} run {run_id!r}: it is {status.value}; stop it first")
        return paths

    def delete(self, run_id: str) -> None:
        """Remove an ended run's directory (metrics, logs, checkpoints) for good."""
        paths = self._require_ended(run_id, "delete")
        try:
            shutil.rmtree(paths.root)
        except OSError as exc:
            raise RunControlError(f"cannot delete {run_id!r}: {exc.strerror or exc}") from None

    def archive(self, run_id: str) -> Path:
        """Move an ended run to $TWINKLE_HOME/.archive/ (out of the run list; move it back to restore it)."""
        paths = self._require_ended(run_id, "archive")
        target = self.home / ".archive" / run_id
        if target.exists():
            target = target.with_name(f"{run_id}-{int(self.clock())}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(paths.root, target)
        except OSError as exc:
            raise RunControlError(f"cannot archive {run_id!r}: {exc.strerror or exc}") from None
        return target

    def rename(self, run_id: str, display_name: str) -> None:
        """Give a run a display name (its id, and so its directory, stay as they are)."""
        paths = self.existing(run_id)
        name = " ".join(display_name.split())[:80]

        def named(m: RunMeta) -> None:
            m.display_name = name or None

        self._locked(paths, named)
        record_event(paths, "rename", self.clock, display_name=name or None)

    # ---------------------------------------------------------------- helpers
    def _locked(self, paths: RunPaths, change: Callable[[RunMeta], None]) -> None:
        """update_meta with every failure as a RunControlError (a change may raise _NoWrite to write nothing)."""
        try:
            update_meta(paths, change)
        except _NoWrite:
            pass
        except MetaError as exc:
            raise RunControlError(str(exc)) from None
        except OSError as exc:
            raise RunControlError(f"run {paths.run_id!r}: {exc.strerror or exc}") from None

    def _check(self, meta: RunMeta, allowed: set[RunStatus], action: str) -> None:
        status = effective_status(meta)
        run_id = meta.run_id
        if status not in allowed:
            raise RunControlError(f"cannot {action} run {run_id!r}: it is {status.value}")
        if not process_is(meta.pid, meta.pid_start_time):
            if meta.pid and meta.pid_start_time is None:
                raise RunControlError(f"cannot {action} run {run_id!r}: the identity of process {meta.pid} "
                                      "cannot be confirmed (no start time recorded)")
            raise RunControlError(f"cannot {action} run {run_id!r}: its process has not started or is gone")

    def _signal(self, meta: RunMeta, sig: int) -> None:
        identity = RunIdentity(str(meta.run_id), str(self.home), meta.pid, meta.pid_start_time,
                               meta.pgid)
        if not process_is(identity.pid, identity.pid_start_time):
            raise RunControlError(f"run {identity.run_id!r} has no live process")
        signal_run(identity, sig)


class _NoWrite(Exception):
    pass


__all__ = ["CONFIG_SUFFIXES", "SCRIPT_SUFFIXES", "InvalidRunId", "Launched", "NoSuchRun", "ProcessController",
           "ResumePlan", "RunControlError", "checked_source", "launchable"]
