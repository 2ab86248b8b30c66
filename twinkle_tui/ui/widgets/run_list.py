"""The run list: status icon, name, model, step/total and how long every run ran (or runs), newest first."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

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


class RunList(DataTable[Text]):
    """Selecting a row (keys or mouse) posts RunList.Selected."""

    class Selected(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, **kw: object) -> None:
        super().__init__(cursor_type="row", show_header=False, **kw)  # type: ignore[arg-type]
        self._rows: list[str] = []
        self._suppress = False
        self._last: tuple[list[RunSummary], str | None, float] | None = None
        self._selected: str | None = None

    def on_mount(self) -> None:
        self.add_column("run", key="run")

    @property
    def _width(self) -> int:
        return max(16, self.size.width - 3)  # the cell's padding and the scrollbar

    def _cell(self, r: RunSummary, now: float) -> Text:
        """Two lines: icon and name (or id); then model, step/total and duration (elapsed while it runs), dimmed."""
        width = self._width
        name = r.meta.display_name or r.run_id
        name = name if len(name) <= width - 2 else name[: width - 3] + "…"
        step = f"{r.last_step}/{r.total_steps}" if r.total_steps else f"step {r.last_step}"
        model = (r.model_id or "?").split("/")[-1].removeprefix("builtin:")
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

    def show(self, runs: list[RunSummary], selected: str | None, now: float) -> None:
        """Replace the rows; keeps the cursor on the selected run."""
        self._last = (runs, selected, now)
        self._selected = selected
        ids = [r.run_id for r in runs]
        column = self.columns.get(ColumnKey("run"))
        resized = column is not None and column.width != self._width
        if column is not None and resized:
            column.auto_width, column.width = False, self._width
        self._suppress = True
        try:
            if ids != self._rows or resized:
                self.clear()
                for r in runs:
                    self.add_row(self._cell(r, now), key=r.run_id, height=2)
                self._rows = ids
            else:
                for r in runs:
                    self.update_cell(r.run_id, "run", self._cell(r, now))
            if selected in ids:
                self.move_cursor(row=ids.index(selected), animate=False)
        finally:
            self._suppress = False

    def on_resize(self) -> None:
        if self._last is not None:  # rows are cut to the width: rebuild them now, from the last data shown
            self._rows = []
            self.show(*self._last)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if self._suppress or event.row_key.value is None:
            return
        # A highlight that arrives after the cursor moved on is stale (a programmatic move queued it): a later
        # selection must not be undone by it. Only the row the cursor is on now, and not yet selected, counts.
        if event.cursor_row != self.cursor_row or event.row_key.value == self._selected:
            return
        self._selected = event.row_key.value
        self.post_message(self.Selected(event.row_key.value))
