"""The supervisor: a small process that owns one launch of a run and records how it ended.

    python -m twinkle_tui.process.supervisor --home H --run-id R --grace 30 -- python -u train.py ...

It runs in its own session, so it outlives the dashboard. The child gets its own process group (pause and stop
signal the whole group, dataloader workers included). When the child exits the supervisor writes exit code or
signal and the final status to meta.json and events.jsonl. SIGTERM to the supervisor means "stop gracefully":
it is forwarded to the child's group, and after the grace period the group is killed.
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
    RunPaths,
    RunStatus,
    process_start_time,
    record_event,
    update_meta,
    validate_run_id,
)
from trainer.runtime import SUPERVISED_ENV

EXCEPTION_LINE_TAIL = 64 * 1024


def last_exception_line(log_path: Path) -> str | None:
    """The 'SomeError: message' line that ends the last traceback in the log, if any."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - EXCEPTION_LINE_TAIL))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    seen_traceback = False
    candidate = None
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            seen_traceback, candidate = True, None
        elif seen_traceback and line and not line.startswith((" ", "\t")) and candidate is None:
            candidate = line.strip()
    return candidate


def final_status(current: RunStatus, returncode: int) -> RunStatus:
    """What the run ended as, given what meta.json said and how the process exited."""
    if current == RunStatus.STOPPING:
        return RunStatus.STOPPED  # the user asked for the stop; a kill after the grace period is still a stop
    if current in (RunStatus.STOPPED, RunStatus.COMPLETED, RunStatus.FAILED) and (returncode == 0 or current == RunStatus.FAILED):
        return current  # the runtime already wrote its own verdict
    return RunStatus.COMPLETED if returncode == 0 else RunStatus.FAILED


def supervise(paths: RunPaths, command: list[str], cwd: str | None, grace: float, launch: int) -> int:
    env = dict(os.environ)
    env[SUPERVISED_ENV] = "1"
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
            _record_exit(paths, 127, None, error=f"could not start: {exc}")
            return 127

    pgid = child.pid
    me = os.getpid()

    def started(meta: dict[str, Any]) -> None:
        meta["pid"] = child.pid
        meta["pid_start_time"] = process_start_time(child.pid)
        meta["pgid"] = pgid
        meta["supervisor_pid"] = me
        meta["supervisor_start_time"] = process_start_time(me)
        if meta["status"] == RunStatus.STARTING.value:
            meta["status"] = RunStatus.RUNNING.value

    update_meta(paths, started)
    record_event(paths, "launch", pid=child.pid, launch=launch, command=command)

    def on_stop(signum: int, frame: Any) -> None:
        _signal_group(pgid, signal.SIGTERM)
        _signal_group(pgid, signal.SIGCONT)  # a paused run must wake up to see the stop
        signal.setitimer(signal.ITIMER_REAL, grace)

    def on_grace_over(signum: int, frame: Any) -> None:
        record_event(paths, "warning", message=f"no exit {grace:g}s after SIGTERM: killing the process group")
        _signal_group(pgid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGALRM, on_grace_over)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    returncode = child.wait()
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Children of the script (dataloader workers) must not outlive it.
    _signal_group(pgid, signal.SIGKILL)
    error = last_exception_line(paths.log) if returncode != 0 else None
    _record_exit(paths, returncode, launch, error=error)
    return returncode


def _ends_without_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return False
        f.seek(size - 1)
        return f.read(1) != b"\n"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _record_exit(paths: RunPaths, returncode: int, launch: int | None, error: str | None) -> None:
    signame = None
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
    result: dict[str, Any] = {}

    def finished(meta: dict[str, Any]) -> None:
        status = final_status(RunStatus.parse(meta.get("status")), returncode)
        meta["status"] = status.value
        meta["exit_code"] = returncode
        meta["exit_signal"] = signame
        meta["end_time"] = time.time()
        if status == RunStatus.FAILED and not meta.get("error"):
            meta["error"] = f"killed by {signame}" if signame else (error or f"exited with code {returncode}")
        result["status"] = status.value

    update_meta(paths, finished)
    record_event(paths, "exit", code=returncode, signal=signame, status=result["status"], launch=launch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinkle-supervisor")
    parser.add_argument("--home", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--launch", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("no command to run")
    paths = RunPaths(Path(ns.home) / validate_run_id(ns.run_id))
    return supervise(paths, command, ns.cwd, ns.grace, ns.launch)


if __name__ == "__main__":
    sys.exit(main())
