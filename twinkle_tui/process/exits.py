"""How a launch ended, recorded once: by its supervisor, by an adopting supervisor, or by the run itself when its
supervisor was gone. Each exit names its launch and never overwrites a newer launch's state.

Standard library only: the run's own process imports this when it records its exit.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import RunMeta, RunPaths, RunStatus, record_event, update_meta
from twinkle_tui.runs.log_reader import ERROR_LINE_MAX, last_exception_line, read_failure

__all__ = ["LAUNCH_MARK", "failure_reason", "final_status", "last_exception_line", "launch_output", "record_exit",
           "signal_name"]

LOG_TAIL = 64 * 1024
LAUNCH_MARK = "===== twinkle launch"


def launch_output(log_path: Path) -> list[str]:
    """The lines of the newest launch in output.log (from its separator line on), from the last 64 KB."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(LAUNCH_MARK):
            return lines[i + 1 :]
    return lines


def failure_reason(log_path: Path, returncode: int | None = None) -> str | None:
    """Why a launch failed, in one line, from its output (read by the log reader: the root cause across ranks,
    never a launcher's summary or a hint), else the signal that killed it, else the last line that says error
    (`error: unknown key ...`); None otherwise (the exit code is then the reason)."""
    lines = launch_output(log_path)
    reason = read_failure(lines, exit_code=returncode).error_line()
    if reason is None:  # a line is the reason only when it says error; else the exit code says it
        errors = [line for line in lines if "error" in line.lower() and not line.startswith("[twinkle]")]
        reason = errors[-1] if errors else None
    return reason.strip()[:ERROR_LINE_MAX] if reason else None


def signal_name(returncode: int | None) -> str | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def final_status(current: RunStatus, returncode: int | None) -> RunStatus:
    """What the run ended as, given what meta.json said and how the process exited (None: not known)."""
    if current == RunStatus.KILLED:
        return RunStatus.KILLED
    if current == RunStatus.STOPPING:  # the user asked for the stop
        return RunStatus.KILLED if returncode == -signal.SIGKILL else RunStatus.STOPPED
    if current in (RunStatus.STOPPED, RunStatus.COMPLETED, RunStatus.FAILED):
        if returncode in (0, None) or current == RunStatus.FAILED:
            return current  # the runtime already wrote its own verdict
        return RunStatus.FAILED
    return RunStatus.COMPLETED if returncode == 0 else RunStatus.FAILED


def record_exit(paths: RunPaths, returncode: int | None, launch: int, error: str | None = None,
                note: str | None = None) -> str | None:
    """Record how `launch` ended in meta.json and events.jsonl; returns the final status, or None when this
    launch's exit was already recorded (by the run itself or another supervisor)."""
    signame = signal_name(returncode)
    result: dict[str, Any] = {}

    def finished(meta: RunMeta) -> None:
        if meta.exit_launch == launch:
            raise _AlreadyRecorded
        if meta.launches != launch:
            raise _Superseded  # a newer launch owns meta.json now: only the timeline hears of this one
        status = final_status(meta.status, returncode)
        meta.status = status
        meta.exit_code = returncode
        meta.exit_signal = signame
        meta.exit_launch = launch
        meta.end_time = time.time()
        if status == RunStatus.FAILED and not meta.error:
            if signame:  # the log's root cause when it has one (a C++ abort's message), else the signal
                meta.error = error or f"killed by {signame}"
            elif returncode is None:
                meta.error = error or "the process ended while unsupervised; its exit code is unknown"
            else:
                meta.error = error or f"exited with code {returncode}"
        if status == RunStatus.KILLED and not meta.error:
            meta.error = "killed: no checkpoint was saved on the way out"
        result["status"] = status.value

    try:
        update_meta(paths, finished)
    except _AlreadyRecorded:
        return None
    except _Superseded:
        result["status"] = "superseded"
    fields: dict[str, Any] = {"code": returncode, "signal": signame, "status": result["status"], "launch": launch}
    if note:
        fields["note"] = note
    record_event(paths, "exit", **fields)
    return str(result["status"])


class _AlreadyRecorded(Exception):
    pass


class _Superseded(Exception):
    pass
