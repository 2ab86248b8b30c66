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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainer.protocol import (
    HOME_ENV,
    RUN_ID_ENV,
    RunPaths,
    RunStatus,
    process_is,
    process_start_time,
    read_meta,
    record_event,
    update_meta,
    validate_run_id,
)
from trainer.runtime import SUPERVISED_ENV
from twinkle_tui.process.bootstrap import LAUNCH_ENV, SUPERVISOR_ENV
from twinkle_tui.process.exits import failure_reason, record_exit
from twinkle_tui.process.tree import ROLE_ENV, RunIdentity, signal_run

ADOPT_POLL = 0.2


class Stop:
    """The stop protocol, shared by both modes: installed before anything is published, so a stop that arrives
    while the child is starting is remembered and delivered as soon as there is a child."""

    def __init__(self, paths: RunPaths, grace: float) -> None:
        self.paths, self.grace = paths, grace
        self.identity: RunIdentity | None = None
        self.requested = False
        self.killed = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_grace_over)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def attach(self, identity: RunIdentity) -> None:
        self.identity = identity
        if self.requested:
            self._forward()

    def _on_term(self, signum: int, frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self.identity is not None:
            self._forward()

    def _forward(self) -> None:
        assert self.identity is not None
        sent = signal_run(self.identity, signal.SIGTERM)
        signal_run(self.identity, signal.SIGCONT)  # a paused run must wake up to see the stop
        signal.setitimer(signal.ITIMER_REAL, self.grace)
        print(f"twinkle supervisor: stop: SIGTERM to the run's group and {sent} process(es) "
              f"(leader {self.identity.pid}); killed after {self.grace:g}s", file=sys.stderr, flush=True)

    def _on_grace_over(self, signum: int, frame: Any) -> None:
        record_event(self.paths, "warning", message=f"no exit {self.grace:g}s after SIGTERM: killing the run's processes")
        self.killed = True
        if self.identity is not None:
            signal_run(self.identity, signal.SIGKILL)

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _publish(paths: RunPaths, launch: int, **fields: Any) -> bool:
    """Write fields into meta.json if `launch` is still the newest launch; False if a newer one took over."""

    def change(meta: dict[str, Any]) -> None:
        if int(meta.get("launches") or 0) != launch:
            raise _Superseded
        meta.update(fields)
        if meta["status"] == RunStatus.STARTING.value and fields.get("pid"):
            meta["status"] = RunStatus.RUNNING.value

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
    _publish(paths, launch, supervisor_pid=me, supervisor_start_time=process_start_time(me))
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
    _publish(paths, launch, pid=child.pid, pid_start_time=identity.pid_start_time, pgid=child.pid)
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
    if not _publish(paths, launch, supervisor_pid=me, supervisor_start_time=process_start_time(me)):
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
        if RunStatus.parse(read_meta(paths).get("status")) == RunStatus.STOPPING:
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
