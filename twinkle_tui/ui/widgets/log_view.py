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
        total = view.log.total_lines
        if view.run_id != self._run_id or total < self._seen:
            self.clear()
            self._run_id = view.run_id
            lines = list(view.log.lines)[-MAX_LINES:]
            if lines:
                self.write_lines(lines)
        else:
            fresh = total - self._seen
            if fresh > 0:
                self.write_lines(list(view.log.lines)[-min(fresh, MAX_LINES):])
        self._seen = total
