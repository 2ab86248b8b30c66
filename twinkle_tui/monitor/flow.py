"""The monitor's review-then-fix flow, the same for every front end: the dashboard, headless `--monitor` and `doctor`
each pass a port (how to say a notice) and a CommandRunner (how to confirm: a modal, the terminal, or a refusal).

Findings become notices. A serious report goes to the LLM review; a FIX is applied through the registered
`apply_fix` command, whose confirmation shows the diff. The fix mode decides who says yes: `off` never applies,
`ask` asks through the runner, `auto` applies without asking only a fix that is safe to run unread (a code error or an
out-of-memory crash, never a divergence, and nothing the change adds deletes files, starts processes or talks to the
network); any other fix is still asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.commands import CommandRunner
from twinkle_tui.monitor.monitor import Report
from twinkle_tui.monitor.review import Review, review
from twinkle_tui.monitor.rules import Finding
from twinkle_tui.process.scripts import ScriptError, cut_diff, encode_source, fix_risks, script_diff

FIX_MODES = ("off", "ask", "auto")
NEVER_AUTOMATIC = ("nan", "loss-spike", "grad-explosion", "kl-explosion", "reward-collapse", "divergence")
EVIDENCE_LINES = 4
DIFF_LINES = 60
PROPOSAL_FILE = "fix_proposal.py"  # the newest proposed script, beside train.py: the whole of what a diff cuts


@dataclass(frozen=True)
class Notice:
    """One thing the monitor says about a run. `severity` is a finding's (info, warning, critical), or `error` (a
    step of the flow failed), or `quiet` (a review found nothing: shown where every decision is printed)."""

    run_id: str
    severity: str
    text: str
    detail: tuple[str, ...] = ()  # evidence lines, or a diagnosis
    code: str | None = None  # a diff

    def plain(self, prefix: str = "") -> list[str]:
        """The notice as plain lines (a terminal), prefixed."""
        lines = [f"{prefix}{self.text}"] + [f"{prefix}    {d}" for d in self.detail]
        if self.code:
            lines += [f"{prefix}{line}" for line in self.code.rstrip("\n").splitlines()]
        return lines


class MonitorPort(Protocol):
    """Where a front end shows what the monitor says."""

    def say(self, notice: Notice) -> Awaitable[None] | None: ...


def finding_notice(run_id: str, finding: Finding) -> Notice:
    return Notice(run_id, finding.severity, finding.line(),
                  tuple(f"evidence: {e}" for e in finding.evidence[:EVIDENCE_LINES]))


@dataclass(frozen=True)
class ReviewOutcome:
    decision: str  # LGTM, WARNING, FIX, or NONE when the LLM gave no readable decision
    applied: bool = False
    relaunched: bool = False


class ReviewFlow:
    """Say a report's findings, review serious ones with the LLM, and apply a FIX as the fix mode allows."""

    def __init__(self, runner: CommandRunner, port: MonitorPort, mode: str = "ask",
                 reviewer: Callable[[LLMSettings, Report], Awaitable[Review | None]] | None = None,
                 off_note: str = "fixes are off (--fix-mode off)") -> None:
        if mode not in FIX_MODES:
            raise ValueError(f"fix mode must be one of {', '.join(FIX_MODES)}")
        self.runner, self.port, self.mode, self.off_note = runner, port, mode, off_note
        self.reviewer = reviewer or (lambda settings, report: review(settings, report.snapshot, report.findings))

    async def say(self, notice: Notice) -> None:
        result = self.port.say(notice)
        if result is not None:
            await result

    async def findings(self, report: Report) -> None:
        for finding in report.findings:
            await self.say(finding_notice(report.snapshot.run_id, finding))

    async def review(self, report: Report, settings: LLMSettings) -> ReviewOutcome:
        """Ask the LLM about a report, say its decision, and apply a FIX as the mode allows."""
        run_id = report.snapshot.run_id
        result = await self.reviewer(settings, report)
        if result is None:
            return ReviewOutcome("NONE")  # logged: an unreadable reply is no decision
        detail = (result.diagnosis,) if result.diagnosis else ()
        if result.decision == "LGTM":
            await self.say(Notice(run_id, "quiet", f"review: LGTM: {result.summary}"))
            return ReviewOutcome("LGTM")
        if result.decision == "WARNING":
            await self.say(Notice(run_id, "warning", f"review: WARNING: {result.summary}", detail))
            return ReviewOutcome("WARNING")
        return await self._fix(report, result)

    async def _fix(self, report: Report, result: Review) -> ReviewOutcome:
        snapshot, run_id = report.snapshot, report.snapshot.run_id
        new = result.script or ""
        if snapshot.script is None:
            await self.say(Notice(run_id, "info", f"review proposes a fix, but {run_id} runs a recipe, not a script: "
                                  "there is nothing to edit", (result.diagnosis,) if result.diagnosis else ()))
            return ReviewOutcome("FIX")
        where = self._keep_proposal(run_id, new)
        diff = cut_diff(script_diff(snapshot.script, new), DIFF_LINES, where)
        await self.say(Notice(run_id, "warning", f"review: FIX: {result.summary}",
                              (result.diagnosis,) if result.diagnosis else (), code=diff))
        if self.mode == "off":
            await self.say(Notice(run_id, "info", f"not applied: {self.off_note}"))
            return ReviewOutcome("FIX")
        automatic, why = self.automatic(report, new)
        if self.mode == "auto" and not automatic:
            await self.say(Notice(run_id, "info", f"not applied without a yes: {why}"))
        args = {"run_id": run_id, "content": new, "reason": result.summary, "diagnosis": result.diagnosis}
        outcome = await self.runner.run("apply_fix", args, confirmed=self.mode == "auto" and automatic)
        if outcome.refused:
            await self.say(Notice(run_id, "info", f"fix for {run_id} not applied"))
            return ReviewOutcome("FIX")
        if not outcome.ok:
            await self.say(Notice(run_id, "error", f"the fix for {run_id} was rejected: {outcome.text}"))
            return ReviewOutcome("FIX")
        relaunched = bool(outcome.reply and isinstance(outcome.reply.data, dict) and outcome.reply.data.get("relaunched"))
        await self.say(Notice(run_id, "info", outcome.text))
        return ReviewOutcome("FIX", applied=True, relaunched=relaunched)

    def _keep_proposal(self, run_id: str, script: str) -> str | None:
        """Save the proposed script beside the run's train.py, so a diff that is cut can point at all of it."""
        path = self.runner.session.store.home / run_id / PROPOSAL_FILE
        try:
            try:
                data = encode_source(script, PROPOSAL_FILE)
            except ScriptError:
                data = script.encode("utf-8", "replace")
            path.write_bytes(data)
        except OSError:
            return None
        return str(path)

    @staticmethod
    def automatic(report: Report, new: str) -> tuple[bool, str]:
        """Whether a fix may run without anyone reading it, and if not, why."""
        if any(f.rule in NEVER_AUTOMATIC for f in report.findings):
            return False, "a divergence or a NaN is cured by a lower learning rate or an earlier checkpoint, not code"
        if not any(f.rule == "crash" and f.fixable for f in report.findings):
            return False, "only code errors and out-of-memory crashes are fixed automatically"
        risks = fix_risks(report.snapshot.script or "", new)
        if risks:
            return False, str(risks)
        return True, ""
