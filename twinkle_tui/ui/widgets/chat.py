"""The chat panel: an input and a scrolling list of messages rendered as Markdown.

The LLM agent is a later piece; today the panel runs slash commands, which reach the same handlers as the keys.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Markdown, Static

WELCOME = "Type **/help** for commands. `/pause`, `/resume`, `/stop`, `/zoom 100 500`, `/metrics loss,reward`."


class ChatMessage(Markdown):
    """One message; role sets its class (user, reply, error) so the stylesheet colours it."""

    def __init__(self, text: str, role: str) -> None:
        super().__init__(text, classes=f"msg {role}")


class ChatPanel(Vertical):
    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self) -> ComposeResult:
        yield Static("chat", classes="panel-title")
        with VerticalScroll(id="chat-log"):
            yield ChatMessage(WELCOME, "reply")
        yield Input(placeholder="/help · /pause · /zoom A B · /metrics a,b", id="chat-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.post_message(self.Submitted(text))

    async def add(self, text: str, role: str) -> None:
        log = self.query_one("#chat-log", VerticalScroll)
        await log.mount(ChatMessage(text, role))
        log.scroll_end(animate=False)
