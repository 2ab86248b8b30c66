"""Tinker sessions: one per SDK ServiceClient, with the client process behind it (when it runs on this machine),
its training models and sampling sessions, and how long it has been silent."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import RunStatus
from twinkle_trainer.service.clients import client_of, exit_status, managed_run_of, process_state
from twinkle_trainer.service.errors import ServiceError

log = logging.getLogger(__name__)

SESSION_TIMEOUT = 180.0  # seconds without a heartbeat after which a session whose client is unknown is over


@dataclass(eq=False)
class TinkerSession:
    """A tinker session (not the dashboard's view state, `twinkle_tui.commands.Session`)."""

    session_id: str
    client_pid: int | None
    client_start: int | None
    managed_run: str | None  # the client's own run, when it was started as one
    user_metadata: dict[str, Any] | None
    last_seen: float = field(default_factory=time.monotonic)
    models: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    closed: bool = False
    exit: tuple[int | None, int | None] | None = None  # (code, signal), when its end was seen

    def watch(self) -> None:
        """Look at the client process once: an ended one keeps its exit status until its parent reaps it."""
        if self.exit is None:
            self.exit = exit_status(self.client_pid, self.client_start)

    def client_alive(self) -> bool | None:
        """True or False when the client process is known and could be checked; None when only heartbeats tell
        (a remote client) or the check failed (never a reason to end a session)."""
        return process_state(self.client_pid, self.client_start)


class SessionRegistry:
    """The open and closed sessions by id."""

    def __init__(self, home: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.home, self.clock = home, clock
        self.lock = threading.RLock()
        self.sessions: dict[str, TinkerSession] = {}

    def create(self, peer: tuple[str, int] | None, local: tuple[str, int] | None,
               user_metadata: dict[str, Any] | None) -> TinkerSession:
        pid, start = client_of(peer, local)
        session = TinkerSession(f"session-{uuid.uuid4().hex[:12]}", pid, start, managed_run_of(pid, self.home),
                                user_metadata, last_seen=self.clock())
        with self.lock:
            self.sessions[session.session_id] = session
        log.info("session %s: client %s%s", session.session_id, pid or "remote",
                 f", managed run {session.managed_run}" if session.managed_run else "")
        return session

    def get(self, session_id: str) -> TinkerSession:
        """An open session (its client has just been heard from)."""
        with self.lock:
            s = self.sessions.get(session_id)
        if s is None or s.closed:
            raise ServiceError(f"no open session {session_id!r}", 404)
        s.last_seen = self.clock()
        return s

    def open_sessions(self) -> list[TinkerSession]:
        with self.lock:
            return [s for s in self.sessions.values() if not s.closed]

    def any_open(self) -> TinkerSession:
        for s in self.open_sessions():
            return s
        raise ServiceError("sampling without a sampling session needs an open session")

    def mark_closed(self, s: TinkerSession) -> bool:
        """Close it; False if it was closed already."""
        with self.lock:
            if s.closed:
                return False
            s.closed = True
            return True

    def ended(self) -> list[tuple[TinkerSession, str, RunStatus]]:
        """Open sessions whose client is gone (its process exited, or, client unknown, no heartbeat for a while),
        with why and how their runs end."""
        now = self.clock()
        out = []
        for s in self.open_sessions():
            alive = s.client_alive()
            if alive is False:
                s.watch()  # one more look: a zombie still holds its exit status
                out.append((s, *how_it_ended(s.exit)))
            elif alive is None and s.client_start is None and now - s.last_seen > SESSION_TIMEOUT:
                out.append((s, f"no heartbeat from the client for {SESSION_TIMEOUT:.0f} s", RunStatus.STOPPED))
        return out


def how_it_ended(exit: tuple[int | None, int | None] | None) -> tuple[str, RunStatus]:
    """Why a session whose client process has gone ends, and its runs' status. A client that did not close its
    session can only be judged by its exit status, which the service sees only if it caught the process before
    its parent reaped it; otherwise it says so rather than claim a success."""
    import signal

    if exit is None:
        return ("the client process ended without closing its session (ServiceClient.close); how it ended could "
                "not be seen from the service (run the client with twinkle-tui --run to record it)"), RunStatus.STOPPED
    code, sig = exit
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            return f"the client process was stopped by {name}", RunStatus.STOPPED
        return f"the client process was killed by {name}", RunStatus.FAILED
    if code == 0:
        return "the client process exited (code 0)", RunStatus.COMPLETED
    return f"the client process exited with code {code}", RunStatus.FAILED
