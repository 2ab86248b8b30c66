"""The chat panel's side of the agent: connecting to the LLM without blocking the first frame, the conversation of
the last session, slash commands and questions from the input, streamed answers, and Esc to cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from textual.app import App

from twinkle_tui.agent import AgentLoop, Connection, EndpointError, History, LLMSettings
from twinkle_tui.agent.loop import describe_call
from twinkle_tui.agent.setup import Agent, connect_agent
from twinkle_tui.commands import CommandError, CommandRunner, Outcome, parse_slash
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatPanel, ToolLine


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
    """The LLM behind the chat panel: restored conversation, connection (the shared factory), slash commands and
    questions from the input, streamed answers, Esc to cancel. Its workers run on the app."""

    def __init__(self, app: App[int], runner: CommandRunner, chat: Callable[[], ChatPanel], settings: LLMSettings,
                 run_command: Callable[[str, dict[str, Any]], Awaitable[object]]) -> None:
        self.app, self.runner, self.chat, self.settings, self.run_command = app, runner, chat, settings, run_command
        self.agent: Agent | None = None
        self.history = History(runner.session.store.home / ".chat" / "history.jsonl")

    @property
    def connection(self) -> Connection | None:
        return self.agent.connection if self.agent is not None else None

    @property
    def loop(self) -> AgentLoop | None:
        """The agent loop, once an LLM answers (None before, and with slash commands only)."""
        return self.agent.loop if self.agent is not None else None

    @property
    def llm(self) -> LLMSettings | None:
        """The endpoint the agent talks to (and the monitor reviews with), once connected."""
        return self.agent.connection.settings if self.agent is not None else None

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()  # the embedded LLM server goes with the app

    async def restore(self) -> None:
        """The conversation from the last session (kept under $TWINKLE_HOME/.chat/), then the connection."""
        chat, shown = self.chat(), 0
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
        chat = self.chat()
        if self.settings.mode != "none":
            chat.set_title("chat · connecting to the LLM…")
        self.agent = agent = await connect_agent(self.runner, self.settings, self.history)
        if agent.loop is not None:
            chat.set_title(f"chat · {agent.loop.settings.model}")
            if agent.skills.git_url:
                self.app.run_worker(self.sync_skills, name="sync_skills", thread=True, group="skills",
                                    exclusive=True, exit_on_error=False)
        else:
            chat.set_title("chat · slash commands")
        await chat.add(agent.connection.notice, "error" if agent.connection.error else "notice")

    def sync_skills(self) -> None:
        if self.agent is not None and self.agent.skills.sync_community() is None:
            self.agent.skills.load()

    async def submitted(self, text: str) -> None:
        """A line from the chat input: a slash command runs as a command, anything else goes to the agent."""
        chat = self.chat()
        await chat.add(text, "user")
        if text.startswith("/"):
            try:
                name, args = parse_slash(text)
            except CommandError as exc:
                await chat.add(f"⚠ {exc}", "error")
                return
            self.app.run_worker(self.run_command(name, args), group="commands", exit_on_error=False)
            return
        if self.agent is None or self.agent.loop is None:
            waiting = self.agent is None and self.settings.mode != "none"
            await chat.add("The LLM is still starting; try again in a moment (slash commands work now)."
                           if waiting else "No LLM agent is connected; slash commands work: **/help**.", "reply")
            return
        self.app.run_worker(self.ask(text), name="ask_agent", group="agent", exclusive=True, exit_on_error=False)

    def cancel(self) -> bool:
        """Esc in the chat: cancel the answer being written; False when there is none."""
        running = [w for w in self.app.workers if w.group == "agent" and w.is_running]
        for worker in running:
            worker.cancel()
        return bool(running)

    async def ask(self, text: str) -> None:
        assert self.agent is not None and self.agent.loop is not None
        chat = self.chat()
        answer = await chat.answer()
        try:
            reply = await self.agent.loop.ask(text, ChatEvents(answer, chat))
            await answer.finish(None if reply else "the model wrote no answer; the lines above are what it did")
        except EndpointError as exc:
            await answer.finish()
            await chat.add(f"⚠ {exc}", "error")
        except asyncio.CancelledError:
            await answer.finish("cancelled")
            raise
        chat.follow()
