"""The run list: status icon, name, model, step/total and how long every run ran (or runs), newest first.

A line-API widget: a frame draws only the rows on screen, and a change of the runs costs a pass over plain tuples,
so a home with thousands of runs scrolls, updates and filters as fast as one with ten. The filter (RunFilter, `f`)
keeps the runs whose name, id, model or status hold every word typed.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.commands.compare import overrides
from twinkle_tui.runs.progress import format_duration
from twinkle_tui.runs.store import RunSummary

STATUS_ICONS = {
    RunStatus.STARTING: ("…", "yellow"),
    RunStatus.RUNNING: ("▶", "green"),
    RunStatus.PAUSED: ("⏸", "yellow"),
    RunStatus.STOPPING: ("◼", "yellow"),
    RunStatus.STOPPED: ("■", "grey62"),
    RunStatus.KILLED: ("☠", "red"),
    RunStatus.COMPLETED: ("✓", "green"),
    RunStatus.FAILED: ("✗", "red"),
}
ROW_HEIGHT = 2


def run_duration(r: RunSummary, now: float) -> str:
    """How long the run has trained (paused time and the gaps between launches not counted): what a user reads
    here, never its age."""
    ran = r.meta.running_seconds(now)
    if ran is None and r.start_time:  # a summary from meta.json's times alone
        ran = (now if r.status.is_active or not r.end_time else r.end_time) - r.start_time
    return format_duration(ran)


def status_icon(status: RunStatus) -> Text:
    icon, style = STATUS_ICONS[status]
    return Text(icon, style=style)


def short_model(model_id: str | None) -> str:
    return (model_id or "?").split("/")[-1].removeprefix("builtin:")


def run_cell(r: RunSummary, now: float, width: int) -> Text:
    """Two lines: icon and name (or id); then model, step/total and duration (elapsed while it runs), dimmed."""
    name = r.meta.display_name or r.run_id
    name = name if len(name) <= width - 2 else name[: width - 3] + "…"
    step = f"{r.last_step}/{r.total_steps}" if r.total_steps else f"step {r.last_step}"
    model = short_model(r.model_id)
    took = run_duration(r, now)
    changed = " ".join(overrides(r.meta))  # what this launch overrode tells runs of one recipe apart
    # Too long: the model is shortened, then dropped, then the duration; the step count is never cut.
    short = width - 2 - len(f" · {step} · {took}") - 1
    candidates = [f"{changed} · {step} · {took}"] if changed else []
    candidates += [f"{model} · {step} · {took}", f"{model[:short]}… · {step} · {took}" if short >= 4 else "",
                   f"{step} · {took}"]
    details = next((d for d in candidates if d and len(d) <= width - 2), step)
    text = status_icon(r.status) + Text(" " + name + "\n") + Text("  " + details, style="dim")
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def matches(r: RunSummary, words: list[str]) -> bool:
    """Every word (lower case) is in the run's name, id, model, status or what its launch overrode."""
    hay = " ".join((r.run_id, r.meta.display_name or "", r.model_id or "", r.status.value, *overrides(r.meta))).lower()
    return all(w in hay for w in words)


@dataclass
class _Drawn:
    """The two lines of a row as last rendered, and what they were rendered from."""

    key: tuple[object, ...]
    lines: list[Strip]


class RunList(ScrollView, can_focus=True):
    """Runs as rows of two lines; the row under the cursor is the selected run. Moving the cursor (keys, a click)
    posts RunList.Selected. `show` replaces the runs, `set_filter` narrows them."""

    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move(-1000000000)", "First", show=False),
        Binding("end", "move(1000000000)", "Last", show=False),
    ]
    COMPONENT_CLASSES = {"run-list--cursor", "run-list--empty"}
    DEFAULT_CSS = """
    RunList {
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        & > .run-list--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .run-list--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        & > .run-list--empty {
            color: $text-muted;
        }
    }
    """

    class Selected(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    class Filtered(Message):
        """The filter changed what is listed: `shown` of `total` runs."""

        def __init__(self, shown: int, total: int, text: str) -> None:
            super().__init__()
            self.shown, self.total, self.text = shown, total, text

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._all: list[RunSummary] = []
        self._shown: list[RunSummary] = []
        self._rows: list[str] = []  # ids of the rows listed, in order
        self._cursor = 0
        self._selected: str | None = None
        self._now = 0.0
        self._words: list[str] = []
        self._filter_text = ""
        self._drawn: dict[str, _Drawn] = {}
        self._laid_out_width = 0

    # ------------------------------------------------------------------ data
    def show(self, runs: list[RunSummary], selected: str | None, now: float) -> None:
        """Replace the runs (newest first) and put the cursor on the selected one if it is listed. The list scrolls
        only when the cursor's row moved: a list the user scrolled away stays where it is as its runs update."""
        self._all, self._selected, self._now = runs, selected, now
        before = self._cursor
        self._apply_filter()
        if selected in self._rows:
            self._cursor = self._rows.index(selected)
            if self._cursor != before:
                self._scroll_to_cursor()
        self.refresh()

    def set_filter(self, text: str) -> None:
        """List only runs whose name, id, model or status hold every word of `text` (case does not matter)."""
        self._filter_text = text
        self._words = text.lower().split()
        self._apply_filter()
        self._cursor = self._rows.index(self._selected) if self._selected in self._rows else 0
        self.scroll_to(y=0, animate=False)
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Filtered(len(self._rows), len(self._all), text))

    @property
    def filter_text(self) -> str:
        return self._filter_text

    @property
    def cursor_run(self) -> str | None:
        """The run under the cursor (None when nothing is listed)."""
        return self._rows[self._cursor] if 0 <= self._cursor < len(self._rows) else None

    def choose_cursor(self) -> None:
        """Select the run under the cursor (Enter in the filter: the top match)."""
        run_id = self.cursor_run
        if run_id is not None and run_id != self._selected:
            self._selected = run_id
            self.post_message(self.Selected(run_id))

    def _apply_filter(self) -> None:
        words = self._words
        self._shown = [r for r in self._all if matches(r, words)] if words else self._all
        self._rows = [r.run_id for r in self._shown]
        self._cursor = min(self._cursor, max(0, len(self._rows) - 1))
        self.virtual_size = Size(self._content_width, max(1, ROW_HEIGHT * len(self._rows)))

    # ------------------------------------------------------------------ keys and mouse
    def action_move(self, rows: int) -> None:
        self._move_to(self._cursor + rows)

    def action_page(self, direction: int) -> None:
        self._move_to(self._cursor + direction * max(1, self.scrollable_content_region.height // ROW_HEIGHT))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None:
            self._move_to((offset.y + round(self.scroll_y)) // ROW_HEIGHT)

    def _move_to(self, row: int) -> None:
        if not self._rows:
            return
        row = max(0, min(len(self._rows) - 1, row))
        if row != self._cursor:
            self.refresh(self._row_region(self._cursor), self._row_region(row))
        self._cursor = row
        self._scroll_to_cursor()
        self.choose_cursor()

    def _row_region(self, row: int) -> Region:
        return Region(0, row * ROW_HEIGHT - round(self.scroll_y), self.size.width, ROW_HEIGHT)

    def _scroll_to_cursor(self) -> None:
        if self._rows:
            self.scroll_to_region(Region(0, self._cursor * ROW_HEIGHT, 1, ROW_HEIGHT), animate=False, immediate=True)

    # ------------------------------------------------------------------ drawing
    @property
    def _content_width(self) -> int:
        return max(16, self.scrollable_content_region.width)

    def on_resize(self) -> None:
        self.virtual_size = Size(self._content_width, max(1, ROW_HEIGHT * len(self._rows)))
        # The cursor's row stays in view on a new width (or the first layout), and when it was (about) in view; a list
        # the user scrolled away from it stays where it is when a panel beside it changes height.
        top, height = round(self.scroll_y), self.scrollable_content_region.height
        near = top - ROW_HEIGHT < (self._cursor + 1) * ROW_HEIGHT and self._cursor * ROW_HEIGHT < top + height + 1
        if self.size.width != self._laid_out_width or near:
            self._laid_out_width = self.size.width
            self._scroll_to_cursor()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row, part = divmod(y + round(self.scroll_y), ROW_HEIGHT)
        base = self.rich_style
        if not self._shown:
            lines = ["no run matches", f"“{self._filter_text.strip()}”"] if self._words else ["no runs yet"]
            if y >= len(lines):
                return Strip.blank(width, base)
            text = Text(" " + lines[y], style=base + self.get_component_rich_style("run-list--empty"),
                        no_wrap=True, overflow="ellipsis")
            text.truncate(width, overflow="ellipsis")
            return Strip(text.render(self.app.console)).crop_extend(0, width, base)
        if row >= len(self._shown):
            return Strip.blank(width, base)
        strip = self._lines(self._shown[row], width)[part]
        if row == self._cursor:  # under the row's own colours (the icon keeps its colour on the cursor)
            strip = strip.apply_style(self.get_component_rich_style("run-list--cursor"))
        return strip.apply_style(base)

    def _lines(self, r: RunSummary, width: int) -> list[Strip]:
        """A row's two lines, rendered again only when what they show changed."""
        took = run_duration(r, self._now)
        key = (r.run_id, r.status, r.meta.display_name, r.model_id, tuple(r.meta.command or ()), r.last_step,
               r.total_steps, took, width)
        drawn = self._drawn.get(r.run_id)
        if drawn is not None and drawn.key == key:
            return drawn.lines
        # One cell of padding on each side, and the text as wide as it was in a table with room for a scrollbar.
        text = run_cell(r, self._now, max(16, self.size.width - 3))
        lines = [Strip([Segment(" "), *line.render(self.app.console), Segment(" ")]).crop_extend(0, width, None)
                 for line in text.split("\n")]
        if len(self._drawn) > 4 * max(len(self._all), 100):
            self._drawn.clear()  # rows of runs long gone
        self._drawn[r.run_id] = _Drawn(key, lines)
        return lines

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn.clear()


class RunFilter(Input):
    """Type to filter the run list (name, id, model, status); Enter opens the top match, Escape clears it.
    Hidden while empty and not focused."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False),
                Binding("down", "leave", "To the list", show=False)]
    DEFAULT_CSS = """
    RunFilter {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
        &.-active {
            display: block;
        }
        &:focus {  /* Input's own focus rule gives it a tall border: on one row that left no room for the text */
            border: none;
        }
    }
    """

    class Leave(Message):
        """Focus goes back to the run list; `choose` selects the run under its cursor."""

        def __init__(self, choose: bool) -> None:
            super().__init__()
            self.choose = choose

    def __init__(self, **kw: object) -> None:
        super().__init__(placeholder="filter: name, model, status", **kw)  # type: ignore[arg-type]

    @property
    def focusable(self) -> bool:
        """Only while shown: Textual gives focus back to the first focusable widget when a dialog closes with
        nothing focused (as after `b` hid the run list), and a hidden filter would then swallow every key."""
        return self.has_class("-active") and super().focusable

    def open(self) -> None:
        self.add_class("-active")
        self.focus()

    def on_focus(self) -> None:
        self.add_class("-active")

    def on_blur(self) -> None:
        self.set_class(bool(self.value), "-active")

    def action_clear_filter(self) -> None:
        self.value = ""
        self.post_message(self.Leave(choose=False))

    def action_leave(self) -> None:
        self.post_message(self.Leave(choose=False))

    async def action_submit(self) -> None:
        self.post_message(self.Leave(choose=True))


class RunsPanel(Vertical):
    """The left panel's run part: its title (with `shown of total` while filtered), the filter and the list; the
    filter's text and keys reach the list here."""

    DEFAULT_CSS = """
    RunsPanel {
        height: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static("runs", classes="panel-title", id="runs-title")
        yield RunFilter(id="run-filter")
        yield RunList(id="runs")

    @on(Input.Changed, "#run-filter")
    def _filter_changed(self, message: Input.Changed) -> None:
        message.stop()
        self.query_one(RunList).set_filter(message.value)

    @on(RunFilter.Leave)
    def _filter_left(self, message: RunFilter.Leave) -> None:
        message.stop()
        runs = self.query_one(RunList)
        if message.choose:  # from the list's own queue: a message made in this handler would be this panel's,
            runs.call_later(runs.choose_cursor)  # and Textual stops those here instead of bubbling them to the app
        runs.focus()

    @on(RunList.Filtered)
    def _list_filtered(self, message: RunList.Filtered) -> None:
        message.stop()
        title = f"runs · {message.shown:,} of {message.total:,}" if message.text.strip() else "runs"
        self.query_one("#runs-title", Static).update(title)
