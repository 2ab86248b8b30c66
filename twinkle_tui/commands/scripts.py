"""Commands over a run's script: update it (the agent), apply a fix (the monitor), undo the last change. Each shows
the change as a diff before it is made; the old version is archived as train_v{N}.py, byte for byte."""

from __future__ import annotations

from typing import Any

from twinkle_trainer.protocol import RunKind, RunMeta, RunStatus, record_event, update_meta
from twinkle_tui.commands.registry import command, optional_arg, slash
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.process import scripts

RUN_ID = {"type": "string", "description": "run id or a unique prefix of it (default: the selected run)"}
MAX_FIX_ATTEMPTS = 3
LEFT_ALONE = (RunStatus.PAUSED, RunStatus.STOPPED, RunStatus.KILLED, RunStatus.STOPPING)


def _current(s: Session, run_id: str) -> str:
    paths = s.controller.existing(run_id)
    if not paths.script.exists():
        raise CommandError(f"run {run_id!r} has no script to change (it runs a recipe or a module)")
    return scripts.read_script(paths.script)


def _changed(s: Session, run_id: str, content: str) -> str:
    """The diff from the run's script to content, or CommandError when content does not compile or is the same."""
    scripts.check_compiles(content, "train.py")
    scripts.encode_source(content, "the new script")  # its coding line must be able to hold it
    diff = scripts.script_diff(_current(s, run_id), content)
    if not diff:
        raise CommandError("the new script is the same as the current one")
    return diff


def _update_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    run_id = s.target(a)
    return Confirmation(f"Update the script of {run_id}?", _changed(s, run_id, a["content"]), "Update")


@command("update_script", "Replace a run's script (train.py) with new content; the old version is archived as "
         "train_v{N}.py. The change is shown to the user as a diff first. Resume the run to use it.", "control",
         {"run_id": RUN_ID, "content": {"type": "string", "description": "the complete new script"},
          "reason": {"type": "string", "description": "why, in one line"}},
         ("content",), destructive=True, confirm=_update_confirm)
def update_script(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    version = s.controller.update_script(run_id, a["content"], a.get("reason"))
    return Reply(f"`{run_id}`: script updated to version {version} (the old one is train_v{version - 1}.py); "
                 "resume the run to use it")


def _fix_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    run_id = s.resolve_run(a["run_id"])
    meta = s.view(run_id).meta
    status = s.view(run_id).status
    if status in LEFT_ALONE:
        raise CommandError(f"run {run_id} was {status.value} by the user: it is left alone")
    if meta.kind == RunKind.EXPERIMENT:
        raise CommandError(f"run {run_id} is a research experiment: its loop judges it as it ran, so a fix would change "
                           "an experiment after it was recorded")
    if meta.fix_attempts >= MAX_FIX_ATTEMPTS:
        raise CommandError(f"run {run_id} had {meta.fix_attempts} fix attempts already (at most {MAX_FIX_ATTEMPTS})")
    diff = _changed(s, run_id, a["content"])
    why = "\n\n".join(p for p in (a.get("reason"), a.get("diagnosis")) if p)
    return Confirmation(f"Apply the monitor's fix to {run_id}?", f"{why}\n\n{diff}".strip(), "Apply")


@command("apply_fix", "Apply the monitor's fix to a run's script: count the attempt (at most 3 per run), archive "
         "train.py, write the fixed one, and relaunch a failed run from its last checkpoint.", "control",
         {"run_id": {"type": "string"}, "content": {"type": "string", "description": "the complete fixed script"},
          "reason": {"type": "string", "description": "the finding it fixes, in one line"},
          "diagnosis": {"type": "string", "description": "what is wrong and why"}},
         ("run_id", "content"), destructive=True, confirm=_fix_confirm, agent=False)
def apply_fix(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.resolve_run(a["run_id"])
    paths = s.controller.existing(run_id)
    reason = a.get("reason") or "a fix"

    def count(meta: RunMeta) -> None:
        if meta.fix_attempts >= MAX_FIX_ATTEMPTS:
            raise CommandError(f"run {run_id} had {meta.fix_attempts} fix attempts already")
        meta.fix_attempts += 1

    update_meta(paths, count)
    version = s.controller.update_script(run_id, a["content"], reason=f"fix: {reason}")
    step = s.controller.meta(run_id).progress.last_step
    record_event(paths, "fix", step=step, version=version, reason=reason)
    launched = s.controller.resume(run_id) if s.controller.status(run_id) == RunStatus.FAILED else None
    s.services.remember(launched)
    return Reply(f"`{run_id}`: fix applied as script version {version}"
                 + (", relaunched from its last checkpoint" if launched else "") + " (u undoes it)",
                 redraw={"list", "status", "charts", "log"}, data={"version": version, "relaunched": bool(launched)})


def _undo_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    run_id = s.target(a)
    paths = s.controller.existing(run_id)
    current = s.view(run_id).meta.script_version
    previous = paths.script_version(current - 1)
    if current < 2 or not previous.is_file():
        raise CommandError(f"run {run_id!r} has no earlier version of its script to go back to")
    diff = scripts.script_diff(scripts.read_script(paths.script), scripts.read_script(previous))
    return Confirmation(f"Undo the last change to {run_id}'s script?", diff or "(the versions are the same)", "Undo")


@command("undo_fix", "Put the previous version of a run's script back (undo a fix); resume the run to use it.",
         "control", {"run_id": RUN_ID}, destructive=True, confirm=_undo_confirm)
def undo_fix(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    paths = s.controller.existing(run_id)
    current = s.controller.meta(run_id).script_version
    version = s.controller.restore_script(run_id)
    record_event(paths, "undo", step=s.controller.meta(run_id).progress.last_step, version=version,
                 restored=current - 1)
    return Reply(f"`{run_id}`: the previous script is back (as version {version}); resume the run to use it",
                 redraw={"status", "charts"})


slash("undo", "undo_fix", "/undo [RUN_ID]", "put the previous version of the run's script back (asks first)",
      optional_arg("run_id", "/undo [RUN_ID]"))
