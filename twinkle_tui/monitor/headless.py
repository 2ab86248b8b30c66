"""The monitor beside a headless run (`twinkle-tui --run SCRIPT --monitor [--auto-fix]`): its rules every interval
and once more as the run ends, through the same review-then-fix flow as the dashboard, with the terminal as its port.

Without --auto-fix a proposed fix is asked for on the terminal when there is one (stdin is a terminal), and not
applied otherwise; with --auto-fix the flow applies what is safe to run unread and still asks for anything else.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.commands import CommandRunner, Confirmation, Session
from twinkle_tui.monitor.flow import Notice, ReviewFlow
from twinkle_tui.monitor.monitor import Report, TrainingMonitor

Say = Callable[[str], None]
PREFIX = "twinkle-tui: monitor: "


class TerminalPort:
    """Notices as lines on the terminal, each prefixed so they stand apart from the run's own output."""

    def __init__(self, say: Say) -> None:
        self.say_line = say

    def say(self, notice: Notice) -> None:
        for line in notice.plain(PREFIX):
            self.say_line(line)


class HeadlessMonitor:
    """Checks the one run a headless command follows; tick() is called from its follow loop."""

    def __init__(self, session: Session, interval: float, llm: LLMSettings | None = None, auto_fix: bool = False,
                 clock: Callable[[], float] = time.monotonic, interactive: bool | None = None) -> None:
        self.monitor = TrainingMonitor(session.store.home, interval)
        self.llm = llm
        self.mode = "auto" if auto_fix else "ask"
        self.clock = clock
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.runner = CommandRunner(session, self._confirm)
        self._say: Say = print
        self._next = 0.0

    def tick(self, run_id: str, say: Say, final: bool = False) -> bool:
        """Check now if it is time (or final); True if a fix was applied and the run relaunched."""
        now = self.clock()
        if not final and now < self._next:
            return False
        self._next = now + self.monitor.interval
        self._say = say
        relaunched = False
        for report in self.monitor.check([run_id], review=self.llm is not None):
            relaunched |= asyncio.run(self._report(report))
        return relaunched

    async def _report(self, report: Report) -> bool:
        flow = ReviewFlow(self.runner, TerminalPort(self._say), self.mode)
        await flow.findings(report)
        if not report.review or self.llm is None:
            return False
        return (await flow.review(report, self.llm)).relaunched

    async def _confirm(self, confirmation: Confirmation) -> bool:
        if not self.interactive:
            self._say(f"{PREFIX}not done: {confirmation.title.rstrip('?')} needs a yes (answer it in a terminal, or "
                      "run with --auto-fix to apply fixes that are safe to run unread)")
            return False
        answer = await asyncio.to_thread(input, f"{PREFIX}{confirmation.title} [y/N] ")
        return answer.strip().lower() in ("y", "yes")
