"""$TWINKLE_HOME as a place to work: whether it can be used, and the log file every command writes to (5 MB x 3,
never the terminal a dashboard draws on)."""

from __future__ import annotations

import logging
import logging.handlers
import os

from twinkle_trainer.protocol import twinkle_home


def setup_logging(home: str | None, verbose: bool) -> str:
    """Log to a rotating file (5 MB x 3), never to the terminal the dashboard draws on."""
    log_dir = twinkle_home(home) / ".logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "twinkle-tui.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return str(path)


def home_problem(home: str | None) -> str | None:
    """Why the runs directory cannot be used, in one line (None if it can)."""
    path = twinkle_home(home)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the runs directory {path}: {exc.strerror or exc}"
    if not path.is_dir():
        return f"the runs directory {path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the runs directory {path} is not writable (set --home or TWINKLE_HOME to another one)"
    return None
