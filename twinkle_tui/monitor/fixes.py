"""The fix pipeline: a proposed script must compile, is shown as a unified diff, is applied only as the mode allows
(off, ask, auto), at most MAX_ATTEMPTS times per run (counted in meta.json, so a restart does not reset them), never
to a run the user paused or stopped, and can be undone. Applying archives train.py as train_v{N}.py, writes the new
one, and relaunches the run from its last checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.protocol import RunStatus, read_meta, record_event, update_meta
from twinkle_tui.commands.runs import script_diff
from twinkle_tui.monitor.rules import Finding
from twinkle_tui.monitor.snapshot import RunSnapshot
from twinkle_tui.process.controller import Launched, ProcessController, RunControlError, check_compiles

MODES = ("off", "ask", "auto")
MAX_ATTEMPTS = 3
NEVER_AUTOMATIC = ("nan", "loss-spike", "divergence", "grad-explosion", "kl-explosion", "reward-collapse")


class FixRefused(Exception):
    """A fix that must not be applied; the message says why in one line."""


@dataclass(frozen=True)
class Proposal:
    run_id: str
    old: str
    new: str
    reason: str
    automatic: bool  # the mode auto may apply it without asking

    @property
    def diff(self) -> str:
        return script_diff(self.old, self.new)


class FixPipeline:
    def __init__(self, controller: ProcessController, mode: str = "ask", max_attempts: int = MAX_ATTEMPTS) -> None:
        if mode not in MODES:
            raise ValueError(f"fix mode must be one of {', '.join(MODES)}")
        self.controller = controller
        self.mode = mode
        self.max_attempts = max_attempts

    def propose(self, snapshot: RunSnapshot, new_script: str, reason: str, findings: list[Finding]) -> Proposal:
        """A checked proposal, or FixRefused saying why not."""
        run_id = snapshot.run_id
        if self.mode == "off":
            raise FixRefused("fixes are off (--fix-mode off)")
        if snapshot.status in (RunStatus.PAUSED, RunStatus.STOPPED, RunStatus.KILLED, RunStatus.STOPPING):
            raise FixRefused(f"run {run_id} was {snapshot.status.value} by the user: it is left alone")
        if snapshot.script is None:
            raise FixRefused(f"run {run_id} runs a recipe, not a script: there is nothing to edit")
        attempts = int(read_meta(self.controller.paths(run_id)).get("fix_attempts") or 0)
        if attempts >= self.max_attempts:
            raise FixRefused(f"run {run_id} had {attempts} fix attempts already (at most {self.max_attempts})")
        try:
            check_compiles(new_script, "train.py")
        except RunControlError as exc:
            raise FixRefused(f"the proposed script was rejected: {exc}") from None
        if new_script.strip() == snapshot.script.strip():
            raise FixRefused("the proposed script is the same as the current one")
        divergence = any(f.rule in NEVER_AUTOMATIC for f in findings)
        code_error = any(f.rule == "crash" and f.fixable for f in findings)
        return Proposal(run_id, snapshot.script, new_script, reason, automatic=code_error and not divergence)

    def apply(self, proposal: Proposal) -> Launched | None:
        """Count the attempt, archive and write the script, relaunch from the last checkpoint."""
        paths = self.controller.paths(proposal.run_id)

        def count(meta: dict[str, Any]) -> None:
            attempts = int(meta.get("fix_attempts") or 0)
            if attempts >= self.max_attempts:
                raise FixRefused(f"run {proposal.run_id} had {attempts} fix attempts already")
            meta["fix_attempts"] = attempts + 1

        update_meta(paths, count)
        version = self.controller.update_script(proposal.run_id, proposal.new, reason=f"fix: {proposal.reason}")
        step = read_meta(paths)["progress"].get("last_step")
        record_event(paths, "fix", step=step, version=version, reason=proposal.reason)
        status = self.controller.status(proposal.run_id)
        if status in (RunStatus.FAILED,):
            return self.controller.resume(proposal.run_id)
        return None

    def undo(self, run_id: str) -> int:
        """Put the previous version of the script back (as a new version, so nothing is lost)."""
        paths = self.controller.paths(run_id)
        current = int(read_meta(paths).get("script_version") or 0)
        previous = paths.script_version(current - 1)
        if current < 2 or not previous.is_file():
            raise FixRefused(f"run {run_id} has no earlier version of its script to go back to")
        version = self.controller.update_script(run_id, previous.read_text(encoding="utf-8"),
                                                reason=f"undo: back to version {current - 1}")
        record_event(paths, "undo", step=read_meta(paths)["progress"].get("last_step"), version=version,
                     restored=current - 1)
        return version
