"""Keys and slash commands."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from twinkle_tui.slash import COMMANDS


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help.close")]

    def __init__(self, bindings: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        keys = Table(title="Keys", show_header=False, box=None, padding=(0, 2))
        for key, description, binding_id in self.bindings:
            keys.add_row(f"[bold]{key}[/]", description, f"[dim]{binding_id}[/]")
        slash = Table(title="Chat commands", show_header=False, box=None, padding=(0, 2))
        for name, text in COMMANDS.items():
            slash.add_row(f"[bold]/{name}[/]", text)
        with VerticalScroll(id="dialog"):
            yield Static("twinkle-tui help  ·  esc to close", classes="dialog-title")
            yield Static(keys)
            yield Static(slash)
            yield Static("[dim]Remap keys by binding id in the keymap; ctrl+p opens the command palette.[/]")
