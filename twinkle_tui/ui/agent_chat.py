"""The chat panel's side of the agent: connecting to the LLM without blocking the first frame, the conversation of
the last session, slash commands and questions from the input, streamed answers, and Esc to cancel."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from twinkle_tui.agent import AgentLoop, Connection, EndpointError, History, LLMSettings, SkillLibrary, connect
from twinkle_tui.agent.loop import describe_call
from twinkle_tui.commands import REGISTRY, CommandError, parse_slash
from twinkle_tui.commands.runner import Outcome
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatPanel, ToolLine

if TYPE_CHECKING:
    from twinkle_tui.ui.app import TwinkleApp


class ChatEvents:
    """The agent's progress, rendered into one answer in the chat panel."""

    def __init__(self, answer: AgentAnswer, chat: ChatPanel) -> None:
        self.answer, self.chat = answer, chat
        self.lines: list[ToolLine] = []

    async def text(self, delta: str) -> None:
        await self.answer.text(delta)
        self.chat.follow()

    async def reasoning(self, delta: str) -> None:
        await self.answer.think(delta)

    async def tool_call(self, name: str, arguments: str) -> None:
        self.lines.append(await self.answer.tool_call(describe_call(name, arguments)))
        self.chat.follow()

    async def tool_result(self, name: str, outcome: Outcome) -> None:
        if self.lines:
            self.lines[-1].finish(outcome)


class AgentChat:
    """The LLM connection and the agent loop behind the chat panel; its workers run on the app."""

    def __init__(self, app: TwinkleApp, settings: LLMSettings) -> None:
        self.app, self.settings = app, settings
        self.connection: Connection | None = None
        self.agent: AgentLoop | None = None
        self.history = History(app.session.store.home / ".chat" / "history.jsonl")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()  # the embedded LLM server goes with the app

    async def restore(self) -> None:
        """The conversation from the last session (kept under $TWINKLE_HOME/.chat/), then the connection."""
        chat, shown = self.app.chat, 0
        for m in self.history.messages[-40:]:
            role, content = m.get("role"), str(m.get("content") or "")
            if role == "user":
                await chat.add(content, "user")
            elif role == "assistant" and content.strip():
                await chat.add(content, "agent")
            else:
                continue
            shown += 1
        if shown:
            await chat.add(f"*(the last {shown} messages of your previous session)*", "notice")
        # After the old conversation, so its notice comes below it.
        self.app.run_worker(self.start(), name="start_agent", group="agent-start", exclusive=True,
                            exit_on_error=False)

    async def start(self) -> None:
        """Probe the endpoint, or start the embedded LLM, and say once how the chat is connected."""
        app, chat = self.app, self.app.chat
        if self.settings.mode != "none":
            chat.set_title("chat · connecting to the LLM…")
        connection = await connect(self.settings, app.store.home)
        self.connection = connection
        app.session.services["llm_models"] = connection.models
        if connection.settings is not None:
            skills = SkillLibrary(app.store.home, os.environ.get("TWINKLE_SKILLS_GIT")).load()
            app.session.services["skills"] = skills
            self.agent = AgentLoop(connection.settings, app.runner, self.history, skills,
                                   tools=[n for n in sorted(REGISTRY) if n != "help"])
            chat.set_title(f"chat · {connection.settings.model}")
            if skills.git_url:
                app.run_worker(self.sync_skills, name="sync_skills", thread=True, group="skills", exclusive=True,
                               exit_on_error=False)
        else:
            chat.set_title("chat · slash commands")
        await chat.add(connection.notice, "error" if connection.error else "notice")

    def sync_skills(self) -> None:
        skills = self.app.session.services.get("skills")
        if skills is not None and skills.sync_community() is None:
            skills.load()

    async def submitted(self, text: str) -> None:
        """A line from the chat input: a slash command runs as a command, anything else goes to the agent."""
        app, chat = self.app, self.app.chat
        await chat.add(text, "user")
        if text.startswith("/"):
            try:
                name, args = parse_slash(text)
            except CommandError as exc:
                await chat.add(f"⚠ {exc}", "error")
                return
            app.run_worker(app.run_command(name, args, "chat"), group="commands", exit_on_error=False)
            return
        if self.agent is None:
            waiting = self.connection is None and self.settings.mode != "none"
            await chat.add("The LLM is still starting; try again in a moment (slash commands work now)."
                           if waiting else "No LLM agent is connected; slash commands work: **/help**.", "reply")
            return
        app.run_worker(self.ask(text), name="ask_agent", group="agent", exclusive=True, exit_on_error=False)

    def cancel(self) -> bool:
        """Esc in the chat: cancel the answer being written; False when there is none."""
        running = [w for w in self.app.workers if w.group == "agent" and w.is_running]
        for worker in running:
            worker.cancel()
        return bool(running)

    async def ask(self, text: str) -> None:
        assert self.agent is not None
        chat = self.app.chat
        answer = await chat.answer()
        try:
            reply = await self.agent.ask(text, ChatEvents(answer, chat))
            await answer.finish(None if reply else "the model wrote no answer; the lines above are what it did")
        except EndpointError as exc:
            await answer.finish()
            await chat.add(f"⚠ {exc}", "error")
        except asyncio.CancelledError:
            await answer.finish("cancelled")
            raise
        chat.follow()
