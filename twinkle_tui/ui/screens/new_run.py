"""Start a new run: a recipe from examples/ or any script or config path."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

RECIPE_SUFFIXES = (".py", ".toml", ".yaml", ".yml")


def find_recipes(*folders: Path) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            out.extend(sorted(p for p in folder.iterdir() if p.suffix in RECIPE_SUFFIXES and not p.name.startswith("_")))
    return out


class NewRunScreen(ModalScreen[str | None]):
    """Returns the chosen path followed by any arguments the user typed, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="newrun.cancel")]

    def __init__(self, recipes: list[Path]) -> None:
        super().__init__()
        self.recipes = recipes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Start a run · pick a recipe, or type a script/config path (and -- args)", classes="dialog-title")
            yield OptionList(*[Option(f"{p.name}  [dim]{p.parent}[/]", id=str(p)) for p in self.recipes], id="recipes")
            yield Input(placeholder="path/to/train.py -- --steps 100", id="newrun-path")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
