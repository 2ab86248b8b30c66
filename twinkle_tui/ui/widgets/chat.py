"""The chat panel: the conversation with the agent (answers streamed as Markdown, tool calls and their results,
reasoning folded away) and slash commands, which reach the same handlers as the keys."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Input, Markdown, Static
from textual.widgets._markdown import MarkdownStream

from twinkle_tui.commands.runner import Outcome

WELCOME = ("Ask about your runs, or type **/help** for commands: `/pause`, `/resume`, `/stop`, `/zoom 100 500`, "
           "`/metrics loss,reward`.")
RUN_ID_COMMANDS = ("/select ", "/compare ", "/status ", "/pause ", "/resume ", "/stop ", "/kill ", "/delete ",
                   "/archive ", "/rename ", "/log ")


class ChatMessage(Markdown):
    """One message; role sets its class (user, reply, agent, error, notice) so the stylesheet colours it. Code blocks
    (a run's log lines) wrap at the panel's width instead of running off its edge."""

    DEFAULT_CSS = """
    ChatMessage MarkdownFence {
        overflow-x: hidden;
        margin: 0;
    }
    ChatMessage MarkdownFence > Label {
        width: 1fr;
        text-wrap: wrap;
        padding: 0 1;
    }
    """

    def __init__(self, text: str, role: str) -> None:
        super().__init__(text, classes=f"msg {role}")


class Working(Static):
    """A sign of life while the LLM works: a spinner, the seconds so far and the tokens written so far."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    DEFAULT_CSS = """
    Working {
        margin: 0 1;
        color: $text-muted;
    }
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("", classes="working")
        self.clock = clock
        self.started = clock()
        self.tokens = 0
        self.frame = 0

    def on_mount(self) -> None:
        self.tick()
        self.set_interval(0.25, self.tick)

    def tick(self) -> None:
        self.frame += 1
        elapsed = self.clock() - self.started
        words = f" · {self.tokens} token{'s' if self.tokens != 1 else ''}" if self.tokens else ""
        self.update(f"{self.FRAMES[self.frame % len(self.FRAMES)]} working · {elapsed:.0f}s{words} · esc cancels")

    def set_tokens(self, count: int) -> None:
        self.tokens = count
        self.tick()


class ToolLine(Static):
    """A tool the agent called, and what came of it."""

    def __init__(self, call: str) -> None:
        super().__init__(f"⚙ {escape(call)}", classes="tool")
        self.call = call

    def finish(self, outcome: Outcome) -> None:
        mark, cls = ("✓", "ok") if outcome.ok else (("✗ refused", "refused") if outcome.refused else ("⚠", "failed"))
        first = outcome.text.strip().splitlines()[0] if outcome.text.strip() else ""
        self.update(f"⚙ {escape(self.call)} {mark} [dim]{escape(first[:120])}[/]")
        self.add_class(cls)


class ChatInput(Input):
    """The input line: Enter sends, Tab completes a run id after a command that takes one, Esc leaves the chat
    (or cancels the answer being written)."""

    BINDINGS = [
        Binding("tab", "complete", "Complete run id", id="chat.complete", show=False),
        Binding("escape", "leave", "Leave chat / cancel", id="chat.leave"),
    ]

    def __init__(self, complete: Callable[[str], list[str]], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.completer = complete

    def action_complete(self) -> None:
        text = self.value
        command = next((c for c in RUN_ID_COMMANDS if text.startswith(c)), None)
        if command is None:
            self.screen.focus_next()
            return
        prefix = text[len(command) :].strip()
        if " " in prefix:
            return
        matches = self.completer(prefix)
        if len(matches) == 1:
            self.value = command + matches[0] + " "
        elif matches:
            common = _common_prefix(matches)
            if len(common) > len(prefix):
                self.value = command + common
            self.notify("  ".join(matches[:8]) + (" …" if len(matches) > 8 else ""), timeout=4)
        self.cursor_position = len(self.value)

    def action_leave(self) -> None:
        self.post_message(ChatPanel.Leave())


def _common_prefix(words: list[str]) -> str:
    first, last = min(words), max(words)
    n = 0
    while n < len(first) and n < len(last) and first[n] == last[n]:
        n += 1
    return first[:n]


class AgentAnswer(Vertical):
    """The agent's answer to one message: reasoning (folded), tool lines, and the streamed Markdown answer."""

    def __init__(self) -> None:
        super().__init__(classes="answer")
        self.markdown = ChatMessage("", "agent")
        self.reasoning = Static("", classes="reasoning-text")
        self.folded = Collapsible(self.reasoning, title="reasoning", collapsed=True, classes="reasoning")
        self.stream: MarkdownStream | None = None
        self.tools: list[ToolLine] = []
        self.working = Working()
        self._reasoning_text = ""
        self.done = False  # the answer is complete (or was cancelled, or failed)

    def compose(self) -> ComposeResult:
        yield self.folded
        yield self.markdown
        yield self.working

    def on_mount(self) -> None:
        self.folded.display = False

    async def text(self, delta: str) -> None:
        if self.stream is None:
            self.stream = Markdown.get_stream(self.markdown)
        await self.stream.write(delta)

    async def think(self, delta: str) -> None:
        self._reasoning_text += delta
        self.folded.display = True
        self.reasoning.update(escape(self._reasoning_text))

    async def tool_call(self, call: str) -> ToolLine:
        line = ToolLine(call)
        self.tools.append(line)
        await self.mount(line, before=self.markdown)
        return line

    def tokens(self, count: int) -> None:
        self.working.set_tokens(count)

    async def finish(self, note: str | None = None) -> None:
        if self.working.is_mounted:
            await self.working.remove()
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None
        if note:
            await self.markdown.append(f"\n\n*{note}*")
        self.done = True


class ChatPanel(Vertical):
    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Leave(Message):
        """Esc in the chat: cancel a running answer, else give focus back to the dashboard."""

    def __init__(self, complete: Callable[[str], list[str]] | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.complete = complete or (lambda prefix: [])

    def compose(self) -> ComposeResult:
        yield Static("chat", classes="panel-title", id="chat-title")
        with VerticalScroll(id="chat-log"):
            yield ChatMessage(WELCOME, "reply")
        yield ChatInput(self.complete, placeholder="ask, or /help · tab completes run ids", id="chat-input")

    @property
    def messages_view(self) -> VerticalScroll:
        return self.query_one("#chat-log", VerticalScroll)

    def set_title(self, text: str) -> None:
        self.query_one("#chat-title", Static).update(escape(text))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.post_message(self.Submitted(text))

    async def add(self, text: str, role: str) -> ChatMessage:
        message = ChatMessage(text, role)
        await self.messages_view.mount(message)
        self.messages_view.scroll_end(animate=False)
        return message

    async def answer(self) -> AgentAnswer:
        widget = AgentAnswer()
        await self.messages_view.mount(widget)
        self.messages_view.scroll_end(animate=False)
        return widget

    def follow(self) -> None:
        self.messages_view.scroll_end(animate=False)
