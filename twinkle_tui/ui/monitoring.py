"""The training monitor in the dashboard: checks on a timer and on changes of running runs (in a worker), findings
in the chat and as chart markers, and the LLM review whose fix is shown as a diff and applied only as the fix mode
allows (asking in a modal by default)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twinkle_tui.commands import Confirmation
from twinkle_tui.monitor import DEFAULT_INTERVAL, FixPipeline, FixRefused, Report, TrainingMonitor, review
from twinkle_tui.process.controller import RunControlError
from twinkle_tui.ui.messages import MonitorReports

if TYPE_CHECKING:
    from twinkle_tui.runs.store import RunSummary
    from twinkle_tui.ui.app import TwinkleApp

MIN_GAP = 2.0  # seconds between checks triggered by file changes


class DashboardMonitor:
    def __init__(self, app: TwinkleApp, interval: float | None, fix_mode: str, clock: Callable[[], float]) -> None:
        self.app = app
        # The monitor reads the runs through a store of its own (no lock shared with drawing).
        self.monitor = TrainingMonitor(app.session.store.home, interval or DEFAULT_INTERVAL, clock)
        self.enabled = interval is not None
        self.fixes = FixPipeline(app.session.controller, fix_mode)
        self.checked = 0.0

    def check(self, run_ids: frozenset[str] | None = None) -> None:
        self.app.run_worker(lambda: self._check(run_ids), name="check_runs", thread=True, group="monitor",
                            exclusive=True, exit_on_error=False)

    def _check(self, run_ids: frozenset[str] | None) -> None:
        reports = self.monitor.check(run_ids)
        if reports:
            self.app.post_message(MonitorReports(reports))

    def files_changed(self, run_ids: set[str], summaries: tuple[RunSummary, ...]) -> None:
        """A change of a running run is a reason to look now, not at the next tick."""
        if not self.enabled or not run_ids or time.monotonic() - self.checked <= MIN_GAP:
            return
        self.checked = time.monotonic()
        changed = {s.run_id for s in summaries if s.run_id in run_ids and s.status.is_active}
        if changed:
            self.check(frozenset(changed | set(self.monitor.watched())))

    async def show(self, reports: list[Report]) -> None:
        app = self.app
        for report in reports:
            for finding in report.findings:
                evidence = "; ".join(finding.evidence[:3])
                await app.chat.add(f"**monitor** · `{report.snapshot.run_id}` · {finding.line()}"
                                   + (f"\n\n*evidence:* {evidence}" if evidence else ""),
                                   "monitor" if finding.level < 2 else "error")
            connection = app.agent_chat.connection
            if connection is not None and connection.settings is not None and self.monitor.needs_review(report):
                app.run_worker(self.review(report), name="review_run", group="review", exit_on_error=False)
        app.scheduler.now("charts", "list", "status")  # findings are chart markers
        app.flush()

    async def review(self, report: Report) -> None:
        app, chat = self.app, self.app.chat
        connection = app.agent_chat.connection
        assert connection is not None and connection.settings is not None
        result = await review(connection.settings, report.snapshot, report.findings)
        if result is None:
            return  # logged: an unreadable reply is no decision
        run_id = report.snapshot.run_id
        if result.decision != "FIX":
            if result.decision == "WARNING":
                await chat.add(f"**monitor review** · `{run_id}` · {result.summary}\n\n{result.diagnosis}", "monitor")
            return
        try:
            proposal = self.fixes.propose(report.snapshot, result.script or "", result.summary, report.findings)
        except FixRefused as exc:
            await chat.add(f"**monitor** · `{run_id}` · a fix was proposed but not used: {exc}", "monitor")
            return
        await chat.add(f"**monitor** · `{run_id}` · proposes a fix: {result.summary}\n\n"
                       f"```diff\n{proposal.diff[:3000]}\n```", "monitor")
        automatic = self.fixes.mode == "auto" and proposal.automatic
        if not automatic and not await app.ask(Confirmation(f"Apply the monitor's fix to {run_id}?",
                                                            f"{result.diagnosis}\n\n{proposal.diff}", "Apply")):
            await chat.add(f"fix for `{run_id}` not applied", "monitor")
            return
        try:
            launched = await asyncio.to_thread(self.fixes.apply, proposal)
        except (FixRefused, RunControlError, OSError) as exc:
            await chat.add(f"⚠ the fix for `{run_id}` could not be applied: {exc}", "error")
            return
        if launched is not None:
            app.session.services.setdefault("launched", []).append(launched)
        await chat.add(f"**monitor** · `{run_id}` · fix applied" + (", relaunched from its last checkpoint"
                                                                     if launched else "") + " (u undoes it)", "monitor")
        app.refresh_runs(full_list=True, run_ids={run_id})
