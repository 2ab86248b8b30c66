"""The processes of a run: its leader's process tree, plus any process the run started in a session of its own.

A run is more than its process group: a script may start a helper with `start_new_session=True` (a server, a
sampler engine), and such a helper leaves the group and, once its parent exits, the tree too. Every process of a
run inherits TWINKLE_RUN_ID and TWINKLE_HOME from the environment the supervisor gives the run, so those that
left the tree are found by their environment. Pause, resume, stop and kill signal all of them.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from twinkle_trainer.protocol import HOME_ENV, RUN_ID_ENV, process_is

log = logging.getLogger(__name__)

LAUNCH_ENV = "TWINKLE_LAUNCH"
ROLE_ENV = "TWINKLE_ROLE"  # "supervisor" for the supervisor itself, which must never be counted as the run


@dataclass(frozen=True)
class RunIdentity:
    """What names a run's processes: its leader (pid + start time) and the environment its processes carry."""

    run_id: str
    home: str
    pid: int | None
    pid_start_time: int | None
    pgid: int | None = None
    launch: int | None = None  # only the processes of this launch (None: of every launch)


def _tagged(proc: psutil.Process, identity: RunIdentity) -> bool:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return False
    return (env.get(RUN_ID_ENV) == identity.run_id and env.get(HOME_ENV) == identity.home
            and env.get(ROLE_ENV) != "supervisor"
            and (identity.launch is None or env.get(LAUNCH_ENV) == str(identity.launch)))


def tagged_processes(identity: RunIdentity) -> list[psutil.Process]:
    """Live processes whose environment names this run (found across sessions and after reparenting)."""
    me = os.getpid()
    out = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        if _tagged(proc, identity):
            out.append(proc)
    return out


def run_processes(identity: RunIdentity, include_tagged: bool = True) -> list[psutil.Process]:
    """The leader (only if its identity is confirmed), its descendants, and the run's tagged processes."""
    found: dict[int, psutil.Process] = {}
    if process_is(identity.pid, identity.pid_start_time):
        assert identity.pid is not None
        try:
            leader = psutil.Process(identity.pid)
            found[leader.pid] = leader
            for child in leader.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
    if include_tagged:
        for proc in tagged_processes(identity):
            found.setdefault(proc.pid, proc)
    found.pop(os.getpid(), None)
    return list(found.values())


def signal_processes(procs: Iterable[psutil.Process], sig: int) -> int:
    """Send `sig` to each process that is still the same process; returns how many were signalled."""
    sent = 0
    for proc in procs:
        try:
            if proc.is_running():  # psutil compares the creation time: a reused pid is not signalled
                proc.send_signal(sig)
                sent += 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except (psutil.AccessDenied, PermissionError) as exc:
            log.warning("cannot send %s to process %s: %s", signal.Signals(sig).name, proc.pid, exc)
    return sent


def signal_run(identity: RunIdentity, sig: int, include_tagged: bool = True) -> int:
    """Signal the run's whole process tree: its group at once (so a child forked this very moment is not missed),
    then each process outside that group. Every process gets the signal once: a handler may not be re-entrant."""
    procs = run_processes(identity, include_tagged)
    group = None
    if identity.pgid and identity.pgid == identity.pid and process_is(identity.pid, identity.pid_start_time):
        try:
            os.killpg(identity.pgid, sig)
            group = identity.pgid
        except (ProcessLookupError, PermissionError):
            pass
    outside = []
    for proc in procs:
        try:
            if group is None or os.getpgid(proc.pid) != group:
                outside.append(proc)
        except OSError:
            continue
    return signal_processes(outside, sig) + (1 if group is not None else 0)
