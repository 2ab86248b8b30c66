"""The training monitor in the dashboard: checks on a timer and on changes of running runs (in a worker thread that
alone owns the monitor's memory), and the shared review-then-fix flow with the chat as its port; a fix is applied
through the app's CommandRunner, so it is confirmed in the same modal as every other command."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import App

from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.commands import CommandRunner
from twinkle_tui.monitor import DEFAULT_INTERVAL, Notice, Report, ReviewFlow, TrainingMonitor
from twinkle_tui.runs.store import RunSummary
from twinkle_tui.ui.messages import MonitorReports
from twinkle_tui.ui.widgets.chat import ChatPanel

MIN_GAP = 2.0  # seconds between checks triggered by file changes
ROLE = {"info": "monitor", "warning": "monitor", "quiet": "monitor", "critical": "error", "error": "error"}


class ChatPort:
    """The monitor's notices as chat messages (an LGTM review is not worth one)."""

    def __init__(self, chat: Callable[[], ChatPanel]) -> None:
        self.chat = chat

    async def say(self, notice: Notice) -> None:
        if notice.severity == "quiet":
            return
        text = f"**monitor** · `{notice.run_id}` · {notice.text}"
        if notice.detail:
            text += "\n\n" + "  \n".join(f"*{d}*" if d.startswith("evidence:") else d for d in notice.detail)
        if notice.code:
            text += f"\n\n```diff\n{notice.code.rstrip()}\n```"
        await self.chat().add(text, ROLE.get(notice.severity, "monitor"))


class DashboardMonitor:
    """Runs the monitor for the app: `check` starts a worker; `show` is called by the app's message handler."""

    def __init__(self, app: App[int], runner: CommandRunner, chat: Callable[[], ChatPanel],
                 llm: Callable[[], LLMSettings | None], interval: float | None, fix_mode: str,
                 clock: Callable[[], float]) -> None:
        self.app, self.llm = app, llm
        # The monitor reads the runs through a store of its own (no lock shared with drawing).
        self.monitor = TrainingMonitor(runner.session.store.home, interval or DEFAULT_INTERVAL, clock)
        self.enabled = interval is not None
        self.flow = ReviewFlow(runner, ChatPort(chat), fix_mode)
        self.checked = 0.0

    def check(self, run_ids: frozenset[str] | None = None) -> None:
        review = self.llm() is not None  # decided here; the worker alone touches the monitor's memory
        self.app.run_worker(lambda: self._check(run_ids, review), name="check_runs", thread=True, group="monitor",
                            exclusive=True, exit_on_error=False)

    def _check(self, run_ids: frozenset[str] | None, review: bool) -> None:
        reports = self.monitor.check(run_ids, review=review)
        if reports:
            self.app.post_message(MonitorReports(reports))

    def files_changed(self, run_ids: set[str], summaries: tuple[RunSummary, ...]) -> None:
        """A change of a running run is a reason to look now, not at the next tick."""
        if not self.enabled or not run_ids or time.monotonic() - self.checked <= MIN_GAP:
            return
        self.checked = time.monotonic()
        if any(s.run_id in run_ids for s in summaries):
            self.check()  # every watched run: the one that changed may have just ended

    async def show(self, reports: list[Report]) -> None:
        """Findings go to the chat now; a report due for review goes to the LLM in a worker of its own."""
        for report in reports:
            await self.flow.findings(report)
            settings = self.llm()
            if report.review and settings is not None:
                self.app.run_worker(self.flow.review(report, settings), name="review_run", group="review",
                                    exit_on_error=False)
