"""What the process controller speaks: which paths a run can start from, a launch that started, what a resume
would do, and the one-line error of an action that cannot be done."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from twinkle_trainer.protocol import RunKind, RunMeta
from twinkle_tui.process import scripts

SCRIPT_SUFFIXES = (".py",)
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


class RunControlError(Exception):
    """An action that cannot be done on a run; the message is one line a user can act on."""


@dataclass(frozen=True)
class Launched:
    """A launch that has started: the run and its supervisor process."""

    run_id: str
    supervisor: subprocess.Popen[bytes]


@dataclass(frozen=True)
class ResumePlan:
    """What `resume` would do: continue a paused process, or relaunch (from a checkpoint step, or from scratch)."""

    relaunch: bool
    from_step: int | None


def launchable(path: Path, given: str) -> str:
    """The suffix of a path a run can start from (a script or a recipe), or RunControlError saying why not."""
    suffix = path.suffix.lower()
    if suffix not in SCRIPT_SUFFIXES + CONFIG_SUFFIXES:
        raise RunControlError(f"{path.name} is not a training script (.py) or a recipe (.toml, .yaml)")
    if not path.is_file():
        raise RunControlError(f"no such script or recipe: {given}")
    return suffix


def checked_source(path: Path) -> str:
    """A script's text, refused with one line if it cannot be read or does not compile."""
    try:
        return scripts.read_checked(path)
    except scripts.ScriptError as exc:
        raise RunControlError(str(exc)) from None


def not_relaunchable(meta: RunMeta) -> str:
    """Why resume cannot relaunch this run (the training service, or one of its clients)."""
    if meta.kind == RunKind.SERVICE:
        return (f"run {meta.run_id!r} is the training service: start it again with r in the dashboard, the agent's "
                "start_server, or twinkle-tui serve")
    return (f"run {meta.run_id!r} belongs to a client of the training service: resume it from the client "
            "(ServiceClient.create_training_client_from_state_with_optimizer with its tinker:// path)")
