"""`twinkle-tui --ask "TEXT"`: the agent without the dashboard (SSH sessions, scripts). It prints the tools it uses
as it uses them, then the answer; destructive tools run only with --yes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from twinkle_tui.agent import tools as _tools  # noqa: F401  (registers the agent's own tools)
from twinkle_tui.agent.connect import connect
from twinkle_tui.agent.endpoint import EndpointError, LLMSettings
from twinkle_tui.agent.history import History
from twinkle_tui.agent.loop import AgentLoop, describe_call
from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands import REGISTRY, Confirmation, Session
from twinkle_tui.commands.runner import CommandRunner, Outcome
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore


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
    connection = await connect(settings, home)
    if connection.settings is None:
        err.write(f"twinkle-tui: {connection.notice}\n")
        return 1
    try:
        if connection.embedded is not None:
            err.write(f"twinkle-tui: {connection.notice}\n")
        session = Session(RunStore(home), ProcessController(home))
        if run_id:
            session.select(run_id)

        async def confirm(c: Confirmation) -> bool:
            err.write(f"twinkle-tui: not done: {c.title} (rerun with --yes to allow it)\n")
            return False

        runner = CommandRunner(session, confirm, auto_yes=yes)
        skills = SkillLibrary(home, os.environ.get("TWINKLE_SKILLS_GIT")).load()
        session.services.update(skills=skills, llm_models=connection.models)
        loop = AgentLoop(connection.settings, runner, History(), skills, tools=[n for n in REGISTRY if n != "help"])
        events = PrintEvents(out, err)
        try:
            answer = await loop.ask(text, events)
        except EndpointError as exc:
            err.write(f"twinkle-tui: {exc}\n")
            return 1
        if not events.answered:
            out.write(answer or "(the model wrote no answer; the lines above are what it did)")
        out.write("\n")
        return 0
    finally:
        connection.close()
