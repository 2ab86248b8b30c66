"""Serving the app with uvicorn, within the machine's file handles: connections are bounded (the oldest idle one
makes room for a new one), a connection that sends nothing for a while is closed (half-sent requests hold no file
handle for long), repeated log lines are rate-limited, and the service stops cleanly on SIGINT, SIGTERM and
SIGHUP: its sessions closed, the worker's current request finished, never an abort inside torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

RESERVED_FILES = 128  # file handles kept for the service's own work (models, checkpoints, /proc, logs)


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


def connection_cap(file_limit: int, wanted: int) -> int:
    return max(8, min(wanted, file_limit - RESERVED_FILES))


class RateLimit(logging.Filter):
    """At most `burst` records of one message template per `window` seconds; the next record after a quiet spell
    says how many were left out."""

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self.seen: dict[tuple[str, str], tuple[float, int, int]] = {}  # key -> (window start, shown, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # asyncio names each callback's handle in its message ("Exception in callback <...fd=6...>"): a traceback
        # is one kind of record by its exception, or thousands of closing sockets would each get their own
        key = (record.name, f"{type(exc).__name__}: {exc}") if exc is not None else (record.name, str(record.msg))
        now = time.monotonic()
        start, shown, dropped = self.seen.get(key, (now, 0, 0))
        if now - start > self.window:
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this in the last {self.window:.0f} s]"
            start, shown, dropped = now, 0, 0
        if shown >= self.burst:
            self.seen[key] = (start, shown, dropped + 1)
            return False
        self.seen[key] = (start, shown + 1, dropped)
        if len(self.seen) > 1000:
            self.seen.clear()
        return True


def guarded_protocol(max_connections: int, idle_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a bound on connections: over the bound, the connections that have been
    silent longest (and are not waiting for their answer) are closed, and if none can be, the new one is."""

    class Guarded(H11Protocol):
        last_data = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.last_data = time.monotonic()
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                idle = sorted((c for c in self.connections if isinstance(c, Guarded) and c is not self and c.idle()),
                              key=lambda c: c.last_data)
                for c in idle[: len(self.connections) - max_connections]:
                    c.transport.close()
                if not idle:
                    transport.close()

        def data_received(self, data: bytes) -> None:
            self.last_data = time.monotonic()
            super().data_received(data)

        def idle(self) -> bool:
            """Not waiting for its answer: between requests, or still sending one."""
            cycle = self.cycle
            return cycle is None or cycle.response_complete or bool(getattr(cycle, "more_body", False))

        def silent_for(self, now: float) -> float:
            return now - self.last_data if self.idle() else 0.0

    return Guarded


class Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT, SIGTERM or SIGHUP without raising the signal again once it has shut
    down (the sessions are closed after it returns, and the exit code is 0), and closing silent connections."""

    idle_timeout = 30.0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        for c in list(self.server_state.connections):
            silent = getattr(c, "silent_for", None)
            if silent is not None and silent(now) > self.idle_timeout:
                c.transport.close()
        return await super().on_tick(counter)


def serve(app: Any, host: str, port: int, max_connections: int, idle_timeout: float) -> bool:
    """Run until a stop signal; True if the server had started (it listened)."""
    for handler in logging.getLogger().handlers:  # one line per cause, not 110,000 "Too many open files"
        handler.addFilter(RateLimit())
    cap = connection_cap(raise_file_limit(), max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5, http=guarded_protocol(cap, idle_timeout))
    server = Server(config)
    server.idle_timeout = idle_timeout
    server.run()
    return bool(server.started)
