"""Keys and chat commands, as they are typed, and what the trainer's main metrics count."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from twinkle_tui.commands.registry import slash_help
from twinkle_tui.runs.metric_notes import METRIC_NOTES

KEY_NAMES = {"slash": "/", "question_mark": "?", "left_square_bracket": "[", "right_square_bracket": "]",
             "escape": "esc", "enter": "enter", "tab": "tab"}


def key_as_typed(key: str) -> str:
    return ", ".join(KEY_NAMES.get(k, k) for k in key.split(","))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help.close")]

    def __init__(self, bindings: list[tuple[str, str, str]], keymap_path: str = "$TWINKLE_HOME/keymap.toml") -> None:
        super().__init__()
        self.bindings = bindings
        self.keymap_path = keymap_path

    def compose(self) -> ComposeResult:
        keys = Table(title="Keys", show_header=False, box=None, padding=(0, 2), expand=True)
        keys.add_column(no_wrap=True)
        keys.add_column(ratio=1)
        keys.add_column(no_wrap=True, style="dim")
        self.keys_shown = [key_as_typed(key) for key, _, _ in self.bindings]
        for shown, (_, description, binding_id) in zip(self.keys_shown, self.bindings, strict=True):
            keys.add_row(f"[bold]{escape(shown)}[/]", description, binding_id)
        slash = Table(title="Chat commands", show_header=False, box=None, padding=(0, 2), expand=True)
        slash.add_column(no_wrap=True)
        slash.add_column(ratio=1)  # descriptions wrap rather than being cut
        for usage, text in slash_help():
            slash.add_row(f"[bold]{usage}[/]", text)
        notes = Table(title="What the trainer's metrics count (hover a chart for its own)", show_header=False, box=None,
                      padding=(0, 2), expand=True)
        notes.add_column(no_wrap=True)
        notes.add_column(ratio=1)
        for name in ("tokens/s", "step time", "loss"):
            notes.add_row(f"[bold]{name}[/]", escape(METRIC_NOTES[name]))
        with VerticalScroll(id="dialog"):
            yield Static("twinkle-tui help  ·  esc to close", classes="dialog-title")
            yield Static(keys)
            yield Static(slash)
            yield Static(notes)
            yield Static("[dim]Anything typed in the chat that is not a /command goes to the LLM agent. "
                         f"Remap a key by its id (right column) in {escape(self.keymap_path)}, one a line: "
                         'pause = "P". ctrl+p opens the command palette.[/]')
