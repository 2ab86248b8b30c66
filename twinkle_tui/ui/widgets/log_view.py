"""The tail of the selected run's output.log: plain text (ANSI stripped, never read as markup)."""

from __future__ import annotations

from textual.widgets import Log

from twinkle_tui.runs.store import RunView

MAX_LINES = 2000


class RunLog(Log):
    def __init__(self, **kw: object) -> None:
        super().__init__(max_lines=MAX_LINES, auto_scroll=True, **kw)  # type: ignore[arg-type]
        self._run_id: str | None = None
        self._seen = 0

    def show(self, view: RunView | None) -> None:
        if view is None:
            if self._run_id is not None:
                self.clear()
                self._run_id = None
            return
        if view.run_id != self._run_id:
            self.clear()
            self._run_id = view.run_id
            self._seen = 0
        lines = view.log.since(self._seen)[-MAX_LINES:]
        if lines:
            self.write_lines(lines)
        self._seen = view.log.total_lines
