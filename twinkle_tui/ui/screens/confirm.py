"""A yes/no confirmation before a command that spends compute, reverses the user's decision, or destroys something.
A long detail (a diff) scrolls; a script to be run is shown whole, read-only, below it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static, TextArea


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, detail: str, confirm_label: str = "Stop", code: str | None = None) -> None:
        super().__init__()
        self.title_text, self.detail, self.confirm_label, self.code = title, detail, confirm_label, code

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(self.detail, classes="dialog-detail", markup=False)
            if self.code is not None:
                yield TextArea(self.code, read_only=True, show_line_numbers=True, soft_wrap=False,
                               classes="dialog-code", id="code")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()  # as before the detail could scroll; Tab reaches the code

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
