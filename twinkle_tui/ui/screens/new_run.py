"""Start a new run: a recipe from examples/ or any script or config path."""

from __future__ import annotations

import shlex
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

RECIPE_SUFFIXES = (".py", ".toml", ".yaml", ".yml")


def find_recipes(*folders: Path) -> list[Path]:
    """Scripts and recipes in the folders, each file once (the working directory's examples/ and the package's
    are the same folder when the app starts from the repository root)."""
    seen: set[Path] = set()
    out: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            real = p.resolve()
            if p.suffix in RECIPE_SUFFIXES and not p.name.startswith("_") and real not in seen:
                seen.add(real)
                out.append(p)
    return out


def shown_folder(folder: Path) -> str:
    """A folder as a user reads it: relative to the working directory when inside it, else under ~."""
    real = folder.resolve()
    for base, prefix in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        if real == base:
            return prefix.rstrip("/") or "."
        if real.is_relative_to(base):
            return prefix + str(real.relative_to(base))
    return str(real)


class NewRunScreen(ModalScreen[tuple[str, list[str]] | None]):
    """Returns the chosen path and any arguments the user typed, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="newrun.cancel")]

    def __init__(self, recipes: list[Path]) -> None:
        super().__init__()
        self.recipes = recipes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Start a run · type a script or recipe path (and -- args) and press enter, or ↓ to pick "
                         "a recipe from the list and press enter", classes="dialog-title")
            yield OptionList(*[Option(f"{p.name}  [dim]{shown_folder(p.parent)}[/]", id=str(p.resolve())) for p in self.recipes],
                             id="recipes")
            yield Input(placeholder="path/to/train.py -- --steps 100", id="newrun-path")

    def on_mount(self) -> None:
        # Typing goes to the path, as the title says; nothing in the list is highlighted, and an empty path does
        # nothing, so a stray Enter (typed for something else) never starts a run.
        self.query_one(OptionList).highlighted = None
        self.query_one(Input).focus()

    def on_key(self, event: events.Key) -> None:
        if event.key == "down" and isinstance(self.focused, Input):  # from the path into the list
            event.stop()
            options = self.query_one(OptionList)
            options.focus()
            if options.highlighted is None and options.option_count:
                options.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss((event.option.id, []))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        try:
            parts = shlex.split(text)
        except ValueError as exc:
            self.notify(f"cannot read that: {exc}", severity="error")
            return
        self.dismiss((parts[0], [a for a in parts[1:] if a != "--"]))

    def action_cancel(self) -> None:
        self.dismiss(None)
