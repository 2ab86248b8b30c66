"""The run list: status icon, run id, model, step/total and age of every run, newest first."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from trainer.protocol import RunStatus
from twinkle_tui.runs.store import RunSummary, format_age

STATUS_ICONS = {
    RunStatus.STARTING: ("…", "yellow"),
    RunStatus.RUNNING: ("▶", "green"),
    RunStatus.PAUSED: ("⏸", "yellow"),
    RunStatus.STOPPING: ("◼", "yellow"),
    RunStatus.STOPPED: ("■", "grey62"),
    RunStatus.COMPLETED: ("✓", "green"),
    RunStatus.FAILED: ("✗", "red"),
}


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
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)  # type: ignore[arg-type]
        self._rows: list[str] = []
        self._suppress = False

    def on_mount(self) -> None:
        self.add_column(" ", key="icon", width=1)
        self.add_column("run", key="run")
        self.add_column("model", key="model")
        self.add_column("step", key="step")
        self.add_column("age", key="age")

    def show(self, runs: list[RunSummary], selected: str | None, now: float) -> None:
        """Replace the rows; keeps the cursor on the selected run."""
        rows = []
        for r in runs:
            step = f"{r.last_step}/{r.total_steps}" if r.total_steps else str(r.last_step)
            model = (r.model_id or "").split("/")[-1].removeprefix("builtin:")
            age = format_age(now - (r.start_time or now))
            rows.append((r.run_id, [status_icon(r.status), Text(r.run_id), Text(model[:16], style="dim"),
                                    Text(step, justify="right"), Text(age, style="dim", justify="right")]))
        ids = [run_id for run_id, _ in rows]
        self._suppress = True
        try:
            if ids != self._rows:
                self.clear()
                for run_id, cells in rows:
                    self.add_row(*cells, key=run_id)
                self._rows = ids
            else:
                for run_id, cells in rows:
                    for key, cell in zip(("icon", "run", "model", "step", "age"), cells, strict=True):
                        self.update_cell(run_id, key, cell)
            if selected in ids:
                self.move_cursor(row=ids.index(selected), animate=False)
        finally:
            self._suppress = False

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if not self._suppress and event.row_key.value is not None:
            self.post_message(self.Selected(event.row_key.value))
