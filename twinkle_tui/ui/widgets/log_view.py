"""The tail of the selected run's output.log: plain text (control sequences stripped, never read as markup),
long lines wrapped to the panel's width."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from twinkle_tui.runs.store import RunCache

MAX_LINES = 2000


class RunLog(RichLog):
    def __init__(self, **kw: object) -> None:
        super().__init__(max_lines=MAX_LINES, auto_scroll=True, wrap=True, markup=False, highlight=False,
                         **kw)  # type: ignore[arg-type]
        self._run_id: str | None = None
        self._seen = 0
        self._width = 0
        self._view: RunCache | None = None

    @property
    def shown(self) -> list[str]:
        """The plain text of every line on screen (wrapped pieces of long lines included)."""
        return [strip.text for strip in self.lines]

    def show(self, view: RunCache | None) -> None:
        self._view = view
        if view is None:
            if self._run_id is not None:
                self.clear()
                self._run_id = None
            return
        if view.run_id != self._run_id or self.scrollable_content_region.width != self._width:
            self._rewrite(view)
            return
        lines = view.log.since(self._seen)[-MAX_LINES:]
        for line in lines:
            self.write(Text(line), scroll_end=None)
        self._seen = view.log.total_lines

    def _rewrite(self, view: RunCache) -> None:
        """Everything again: another run, or another width (wrapping depends on it)."""
        self.clear()
        self._run_id = view.run_id
        self._width = self.scrollable_content_region.width
        for line in list(view.log.lines)[-MAX_LINES:]:
            self.write(Text(line), scroll_end=True)
        self._seen = view.log.total_lines

    def on_resize(self, event: events.Resize) -> None:
        if self._view is not None and self.scrollable_content_region.width != self._width:
            self._rewrite(self._view)
