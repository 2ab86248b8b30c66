"""The client process behind a session: found from the TCP connection on this machine, its managed run (from its
environment), and whether it is still alive, gone, or cannot be told right now."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

from twinkle_trainer.protocol import HOME_ENV, RUN_ID_ENV, process_start_time, validate_run_id

log = logging.getLogger(__name__)


def client_of(peer: tuple[str, int] | None, local: tuple[str, int] | None) -> tuple[int | None, int | None]:
    """The local process at the other end of a TCP connection (pid, start time), if it is on this machine."""
    if peer is None or local is None or peer[0] not in ("127.0.0.1", "::1", "localhost"):
        return None, None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.pid and conn.laddr and conn.raddr and conn.laddr.port == peer[1] \
                    and conn.raddr.port == local[1] and conn.pid != os.getpid():
                return conn.pid, process_start_time(conn.pid)
    except (psutil.Error, OSError) as exc:
        log.info("cannot look up the client process: %s", exc)
    return None, None


def process_state(pid: int | None, start: int | None) -> bool | None:
    """True if the process is alive and the same one, False if it is certainly gone, None if this cannot be told
    now (no pid, or /proc cannot be read: out of file handles, say). Only False may end a client's session."""
    if not pid or start is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    if fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == start


def managed_run_of(pid: int | None, home: Path) -> str | None:
    """The run id a client process was started as (twinkle-tui --run), if it was, under this home."""
    if not pid:
        return None
    try:
        env = psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return None
    run_id = env.get(RUN_ID_ENV)
    if run_id and env.get(HOME_ENV) and Path(env[HOME_ENV]).resolve() == home.resolve():
        try:
            return validate_run_id(run_id)
        except ValueError:
            return None
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def exit_status(pid: int | None, start: int | None) -> tuple[int | None, int | None] | None:
    """(exit code, signal) of a process that has ended but not yet been reaped by its parent (a zombie: the
    kernel keeps its status until then), or None while it runs, once it is gone, or if /proc cannot be read."""
    if not pid or start is None:
        return None
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 50 or fields[0] != "Z" or int(fields[19]) != start:
        return None
    status = int(fields[49])  # exit_code: the status as waitpid reports it
    if status & 0x7F:
        return None, status & 0x7F
    return (status >> 8) & 0xFF, None
