"""Adoption: a run whose supervisor died gets a new one. Its leader is found by the environment its processes carry
(even when the dead supervisor never recorded it), and an adopting supervisor watches it to its end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from twinkle_trainer.protocol import MetaError, RunPaths, process_start_time, read_meta
from twinkle_tui.process.tree import ROLE_ENV, RunIdentity, tagged_processes


def find_leader(identity: RunIdentity) -> tuple[int, int] | None:
    """The oldest live process whose environment names this launch of the run (its leader): pid and start time."""
    best: tuple[float, int] | None = None
    for proc in tagged_processes(identity):
        try:
            created = proc.create_time()
        except Exception:
            continue
        if best is None or created < best[0]:
            best = (created, proc.pid)
    if best is None:
        return None
    start = process_start_time(best[1])
    return (best[1], start) if start is not None else None


def start_adopter(python: str, paths: RunPaths, grace: float, pid: int, start: int, launch: int) -> subprocess.Popen[bytes]:
    """A supervisor for a live run process it did not start; returns once it has recorded itself in meta.json."""
    env = dict(os.environ)
    env[ROLE_ENV] = "supervisor"
    env.pop("TWINKLE_RUN_ID", None)
    cmd = [python, "-P", "-m", "twinkle_tui.process.supervisor", "--home", str(paths.root.parent), "--run-id",
           paths.run_id, "--grace", str(grace), "--launch", str(launch), "--adopt", str(pid),
           "--adopt-start", str(start)]
    with open(paths.root / "supervisor.log", "ab") as errors:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors, start_new_session=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proc.poll() is None:  # until it has published itself
        with contextlib.suppress(MetaError):
            if read_meta(paths).supervisor_pid == proc.pid:
                break
        time.sleep(0.02)
    return proc
