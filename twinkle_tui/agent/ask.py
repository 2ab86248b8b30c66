"""`twinkle-tui --ask "TEXT"`: the agent without the dashboard (SSH sessions, scripts). It prints the tools it uses
as it uses them, then the answer; destructive tools run only with --yes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from twinkle_tui.agent.endpoint import EndpointError, LLMSettings
from twinkle_tui.agent.loop import describe_call
from twinkle_tui.agent.setup import connect_agent
from twinkle_tui.commands import CommandError, CommandRunner, Confirmation, Outcome, Session


class PrintEvents:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.answered = False

    def text(self, delta: str) -> None:
        self.out.write(delta)
        self.out.flush()
        self.answered = True

    def reasoning(self, delta: str) -> None:
        pass  # kept out of the answer

    def tool_call(self, name: str, arguments: str) -> None:
        self.out.write(f"• {describe_call(name, arguments)}")
        self.out.flush()

    def tool_result(self, name: str, outcome: Outcome) -> None:
        first = outcome.text.strip().splitlines()[0] if outcome.text.strip() else ""
        mark = "refused" if outcome.refused else ("ok" if outcome.ok else "error")
        self.out.write(f" → {mark}: {first[:160]}\n")
        self.out.flush()


async def ask_once(text: str, settings: LLMSettings, home: Path, yes: bool = False, run_id: str | None = None,
                   out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    session = Session.open(home)
    if run_id:
        try:
            session.select(run_id)
        except CommandError as exc:
            err.write(f"twinkle-tui: {exc}\n")
            return 2

    async def confirm(c: Confirmation) -> bool:
        err.write(f"twinkle-tui: not done: {c.title} (rerun with --yes to allow it)\n")
        return False

    agent = await connect_agent(CommandRunner(session, confirm, auto_yes=yes), settings)
    try:
        if agent.loop is None or agent.connection.embedded is not None:
            err.write(f"twinkle-tui: {agent.connection.notice}\n")
        if agent.loop is None:
            return 1
        events = PrintEvents(out, err)
        try:
            answer = await agent.loop.ask(text, events)
        except EndpointError as exc:
            err.write(f"twinkle-tui: {exc}\n")
            return 1
        if not events.answered:
            out.write(answer or "(the model wrote no answer; the lines above are what it did)")
        out.write("\n")
        return 0
    finally:
        agent.close()
