"""How many CPU threads torch may use, where the environment says (the convention OpenMP and torch share)."""

from __future__ import annotations

import os


def env_threads(environ: dict[str, str] | None = None) -> int | None:
    """OMP_NUM_THREADS as a positive number, or None when it is unset or not one. Research lanes and test runners
    set it to share the cores out; code that picks its own thread count treats it as the ceiling."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n > 0 else None
