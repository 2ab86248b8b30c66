"""Choose up to four metrics to chart, with fuzzy search over the run's metric names."""

from __future__ import annotations

from rich.segment import Segment
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widgets import Input, SelectionList, Static
from textual.widgets._toggle_button import ToggleButton
from textual.widgets.option_list import OptionDoesNotExist

MAX = 4
CHECKED, UNCHECKED = "✓", " "


class MetricList(SelectionList[str]):
    """A SelectionList whose boxes say what they mean in any terminal: a tick when chosen, empty when not (the stock
    list draws an X in both, told apart only by colour)."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segments = list(strip)
        try:
            selection = self.get_option_at_index(self.scroll_offset[1] + y)
        except OptionDoesNotExist:
            return strip
        if len(segments) < 2 or segments[1].text != ToggleButton.BUTTON_INNER:
            return strip
        mark = CHECKED if selection.value in self.selected else UNCHECKED
        segments[1] = Segment(mark, segments[1].style)
        return Strip(segments, strip.cell_length)


class MetricPicker(ModalScreen[list[str] | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="picker.cancel"),
        Binding("enter", "apply", "Apply", id="picker.apply", priority=True),
    ]

    def __init__(self, names: list[str], selected: list[str]) -> None:
        super().__init__()
        self.names = names
        self.selected = [n for n in selected if n in names][:MAX]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"Metrics to chart (up to {MAX}) · type to filter · ↓ moves to the list, where space "
                         "toggles · enter applies · esc cancels", classes="dialog-title")
            yield Input(placeholder="filter…", id="picker-filter")
            yield MetricList(id="picker-list")
            yield Static("", id="picker-status")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    def _fill(self, query: str) -> None:
        lst = self.query_one(SelectionList)
        lst.clear_options()
        if query:
            matcher = Matcher(query)
            scored = sorted(((matcher.match(n), n) for n in self.names), key=lambda p: -p[0])
            names = [n for score, n in scored if score > 0]
        else:
            names = self.names
        for name in names:
            lst.add_option((name, name, name in self.selected))
        self._status()

    def _status(self) -> None:
        self.query_one("#picker-status", Static).update(f"selected: {', '.join(self.selected) or 'none'}")

    def on_key(self, event: events.Key) -> None:
        if event.key == "down" and isinstance(self.focused, Input):  # from the filter into the list
            event.stop()
            self.query_one(SelectionList).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def on_selection_list_selection_toggled(self, event: SelectionList.SelectionToggled[str]) -> None:
        name = event.selection.value
        if name in self.selected:
            self.selected.remove(name)
        else:
            self.selected.append(name)
            if len(self.selected) > MAX:
                dropped = self.selected.pop(0)
                self.notify(f"at most {MAX} charts: dropped {dropped}")
                self._fill(self.query_one(Input).value)
        self._status()

    def action_apply(self) -> None:
        self.dismiss(list(self.selected) if self.selected else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
