"""The supervisor: a small process that owns one launch of a run and records how it ended.

    python -m twinkle_tui.process.supervisor --home H --run-id R --launch N --grace 30 -- python -u -m ...
    python -m twinkle_tui.process.supervisor --home H --run-id R --launch N --adopt PID --adopt-start T

It runs in its own session, so it outlives the dashboard. The child gets its own process group, and the
environment names the run, so every process the run starts can be found (see tree.py). When the child exits the
supervisor kills what is left of the run and records exit code or signal and the final status. SIGTERM to the
supervisor means "stop gracefully": it goes to the run's processes, and after the grace period they are killed.

With --adopt it takes over a live run whose supervisor died: it cannot wait() for a process that is not its child,
so it polls, enforces the grace period on a stop, and records the exit unless the run recorded its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from twinkle_trainer.protocol import (
    HOME_ENV,
    RUN_ID_ENV,
    RunMeta,
    RunPaths,
    RunStatus,
    process_is,
    process_start_time,
    read_meta,
    record_event,
    update_meta,
    validate_run_id,
)
from twinkle_trainer.runtime import SUPERVISED_ENV
from twinkle_tui.process.bootstrap import LAUNCH_ENV, SUPERVISOR_ENV
from twinkle_tui.process.exits import failure_reason, record_exit
from twinkle_tui.process.tree import ROLE_ENV, RunIdentity, signal_run

ADOPT_POLL = 0.2


STEPS_OF_GRACE = 3  # a stopping run gets at least this many of its median step times to reach a boundary
SAVE_MARGIN = 1.5  # and its last checkpoint's save time, with room
GRACE_SLACK = 5.0  # seconds for exiting after the save (a torch process takes a few to tear down)
WARN_BEFORE = 10.0  # seconds before the kill the run is told it will not make it


def stop_grace(meta: RunMeta, configured: float) -> float:
    """How long a stopping run gets before it is killed: the configured grace (--grace) at least, and enough for
    a few of its steps plus its last save, so a slow step never turns a graceful stop into a lost checkpoint."""
    step = meta.progress.step_seconds or 0.0
    save = meta.last_checkpoint.seconds if meta.last_checkpoint and meta.last_checkpoint.seconds else 0.0
    if not step and not save:
        return configured
    return max(configured, STEPS_OF_GRACE * step + SAVE_MARGIN * save + GRACE_SLACK)


class Stop:
    """The stop protocol, shared by both modes: installed before anything is published, so a stop that arrives
    while the child is starting is remembered and delivered as soon as there is a child. The grace period fits
    the run (stop_grace); its end is written to meta.json (stop_deadline), and the run's log says it before a
    run that has not finished is killed."""

    def __init__(self, paths: RunPaths, grace: float) -> None:
        self.paths, self.grace = paths, grace
        self.identity: RunIdentity | None = None
        self.requested = False
        self.killed = False
        self.warned = False
        self.effective = grace

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def attach(self, identity: RunIdentity) -> None:
        self.identity = identity
        if self.requested:
            self._forward()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        if self.identity is not None:
            self._forward()

    def _forward(self) -> None:
        assert self.identity is not None
        try:
            self.effective = stop_grace(read_meta(self.paths), self.grace)
        except Exception:  # an unreadable meta.json: the configured grace
            self.effective = self.grace
        deadline = time.time() + self.effective
        sent = signal_run(self.identity, signal.SIGTERM)
        signal_run(self.identity, signal.SIGCONT)  # a paused run must wake up to see the stop
        self._set_deadline(deadline)
        warn = min(WARN_BEFORE, self.effective / 4)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.effective - warn))
        print(f"twinkle supervisor: stop: SIGTERM to the run's group and {sent} process(es) "
              f"(leader {self.identity.pid}); killed after {self.effective:g}s", file=sys.stderr, flush=True)

    def _set_deadline(self, deadline: float) -> None:
        def change(meta: RunMeta) -> None:
            meta.stop_deadline = deadline

        try:
            update_meta(self.paths, change)
        except Exception as exc:  # bookkeeping never blocks a stop
            print(f"twinkle supervisor: cannot record the stop deadline: {exc}", file=sys.stderr, flush=True)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self.warned:  # first alarm: the run is told, then gets the rest of its grace
            self.warned = True
            warn = min(WARN_BEFORE, self.effective / 4)
            try:
                step = read_meta(self.paths).progress.last_step + 1
            except Exception:
                step = None
            message = (f"still finishing step {step} " if step else "still running ") + \
                f"{self.effective - warn:.0f}s after the stop: it is killed in {warn:.0f}s without a checkpoint " \
                f"(give it longer with --grace)"
            with contextlib.suppress(OSError), open(self.paths.log, "ab") as log:
                log.write(f"\n[twinkle] stop: {message}\n".encode())
            record_event(self.paths, "warning", message=message)
            signal.setitimer(signal.ITIMER_REAL, max(0.01, warn))
            return
        record_event(self.paths, "warning",
                     message=f"no exit {self.effective:g}s after SIGTERM: killing the run's processes")
        self.killed = True
        if self.identity is not None:
            signal_run(self.identity, signal.SIGKILL)

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _publish(paths: RunPaths, launch: int, supervisor: int | None = None, child: RunIdentity | None = None) -> bool:
    """Record the supervisor (us) or the run's process in meta.json if `launch` is still the newest launch; False
    if a newer one took over."""

    def change(meta: RunMeta) -> None:
        if meta.launches != launch:
            raise _Superseded
        if supervisor is not None:
            meta.supervisor_pid, meta.supervisor_start_time = supervisor, process_start_time(supervisor)
        if child is not None:
            meta.pid, meta.pid_start_time, meta.pgid = child.pid, child.pid_start_time, child.pgid
            if meta.status == RunStatus.STARTING:
                meta.status = RunStatus.RUNNING

    try:
        update_meta(paths, change)
        return True
    except _Superseded:
        return False


class _Superseded(Exception):
    pass


def supervise(paths: RunPaths, command: list[str], cwd: str | None, grace: float, launch: int) -> int:
    stop = Stop(paths, grace)
    stop.install()  # before our pid is published: a stop from now on is never lost
    me = os.getpid()
    _publish(paths, launch, supervisor=me)
    env = dict(os.environ)
    env.pop(ROLE_ENV, None)
    env.update({SUPERVISED_ENV: "1", RUN_ID_ENV: paths.run_id, HOME_ENV: str(paths.root.parent),
                LAUNCH_ENV: str(launch), SUPERVISOR_ENV: str(me)})
    with open(paths.log, "ab", buffering=0) as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lead = "\n" if _ends_without_newline(paths.log) else ""
        log.write(f"{lead}===== twinkle launch {launch} · {stamp} · {' '.join(command)} =====\n".encode())
        try:
            child = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                process_group=0,
            )
        except OSError as exc:
            log.write(f"twinkle: could not start {command[0]}: {exc}\n".encode())
            record_exit(paths, 127, launch, error=f"could not start: {exc}")
            return 127

    identity = RunIdentity(paths.run_id, str(paths.root.parent), child.pid, process_start_time(child.pid), child.pid,
                           launch)
    _publish(paths, launch, child=identity)
    record_event(paths, "launch", pid=child.pid, launch=launch, command=command)
    stop.attach(identity)
    returncode = child.wait()
    stop.disarm()
    # What the run started (dataloader workers, helpers in their own session) must not outlive it.
    signal_run(RunIdentity(paths.run_id, identity.home, None, None, launch=launch), signal.SIGKILL)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    error = failure_reason(paths.log, returncode) if returncode != 0 else None
    record_exit(paths, returncode, launch, error=error)
    return returncode


def adopt(paths: RunPaths, pid: int, start_time: int, grace: float, launch: int, poll: float = ADOPT_POLL) -> int:
    """Watch a live run that lost its supervisor until it exits; enforce the grace period of a stop."""
    stop = Stop(paths, grace)
    stop.install()
    me = os.getpid()
    if not _publish(paths, launch, supervisor=me):
        return 0
    record_event(paths, "adopt", pid=pid, launch=launch, supervisor=me)
    pgid = None
    try:
        pgid = os.getpgid(pid)
    except OSError:
        pass
    identity = RunIdentity(paths.run_id, str(paths.root.parent), pid, start_time, pgid, launch)
    stop.attach(identity)
    try:
        if read_meta(paths).status == RunStatus.STOPPING:
            stop._on_term(signal.SIGTERM, None)  # the stop that found no supervisor alive
    except Exception:
        pass
    while process_is(pid, start_time):
        time.sleep(poll)
    stop.disarm()
    signal_run(RunIdentity(paths.run_id, identity.home, None, None, launch=launch), signal.SIGKILL)
    time.sleep(poll)  # the run's own exit record (written as it exits) wins over our guess
    code = -signal.SIGKILL if stop.killed else None
    error = None if stop.killed else failure_reason(paths.log)
    record_exit(paths, code, launch, error=error, note="recorded by an adopting supervisor")
    return 0


def _ends_without_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return False
        f.seek(size - 1)
        return f.read(1) != b"\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinkle-supervisor")
    parser.add_argument("--home", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--launch", type=int, default=1)
    parser.add_argument("--adopt", type=int, default=None, help="pid of a live run to take over")
    parser.add_argument("--adopt-start", type=int, default=None, help="its process start time")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    paths = RunPaths(Path(ns.home) / validate_run_id(ns.run_id))
    if ns.adopt is not None:
        return adopt(paths, ns.adopt, ns.adopt_start, ns.grace, ns.launch)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("no command to run")
    return supervise(paths, command, ns.cwd, ns.grace, ns.launch)


if __name__ == "__main__":
    sys.exit(main())
