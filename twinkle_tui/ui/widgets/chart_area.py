"""The middle of the dashboard: what a run is doing before its first metric, the compare panel, and the charts.
It pulls what it shows from the run's cache and the session's chart settings, and draws only when that changed."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from twinkle_tui.commands.chart_commands import shown_metrics
from twinkle_tui.commands.chart_settings import ChartSettings
from twinkle_tui.runs.store import RunCache
from twinkle_tui.ui.layout import compare_legend, waiting_text
from twinkle_tui.ui.widgets.charts import ChartGrid


class ChartArea(Vertical):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._drawn: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="waiting")
        yield Static("", id="legend")
        yield ChartGrid(id="charts")

    def on_mount(self) -> None:
        self.waiting = self.query_one("#waiting", Static)
        self.legend = self.query_one("#legend", Static)
        self.grid = self.query_one(ChartGrid)

    def forget(self) -> None:
        """Draw again at the next show (the selection or the layout changed)."""
        self._drawn = None

    def show(self, view: RunCache | None, settings: ChartSettings, compare: RunCache | None) -> None:
        grid = self.grid
        if view is None:
            grid.set_metrics([])
            self.show_waiting(None)
            self.legend.display = False
            return
        names = view.metrics.names()
        self.show_waiting(view if not names else None)
        if not names:
            grid.set_metrics([])
            return
        shown = shown_metrics(settings, names)
        grid.set_metrics(shown)
        self.legend.display = compare is not None
        if compare is not None:
            self.legend.update(compare_legend(view, compare))
        s = settings
        key = (view.run_id, view.metrics.generation, len(view.events.events),
               compare.run_id if compare else None, compare.metrics.generation if compare else None,
               tuple(shown), s.zoom, s.smoothing, s.smoothing_weight, s.log_y, grid.size)
        if key == self._drawn:
            return
        self._drawn = key
        grid.draw(view, s, compare)

    def show_waiting(self, view: RunCache | None) -> None:
        """Before the first metric line, say what the run is doing (its latest log line) instead of empty charts."""
        self.waiting.display = view is not None
        self.grid.display = view is None
        if view is not None:
            self.waiting.update(waiting_text(view))

    @property
    def waiting_shown(self) -> bool:
        return bool(self.waiting.display)
