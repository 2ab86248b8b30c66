"""A PlotextPlot that builds each plotted figure once.

plotext's build transforms the plotted data in place (a log axis takes the log of the values), so building the same
figure twice takes the log of the log: a resize, or a dialog whose background repaints the screen, then failed with
"math domain error". OncePlot keeps the text of the last build while the size and theme are the same, and plots the
figure again (its `replot`) before building it at another size. A figure plotext cannot draw is one red line, with
the traceback in the log; the dashboard never stops for a chart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

log = logging.getLogger(__name__)


class OncePlot(PlotextPlot):
    def __init__(self, replot: Callable[[], None] | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.replot_figure = replot  # plots the figure again (and calls plotted()); None: keep the last text
        self._built: tuple[tuple[int, int, str], RenderResult] | None = None
        self._fresh = True  # the figure holds plotted data that plotext has not built yet

    @property
    def label(self) -> str:
        return self.id or "chart"

    def plotted(self) -> None:
        """The figure was plotted anew: the next render builds it."""
        self._built = None
        self._fresh = True
        self.refresh()

    def forget_build(self) -> None:
        self._built = None

    def render(self) -> RenderResult:
        key = (self.size.width, self.size.height, self.app.theme)
        if self._built is not None and self._built[0] == key:
            return self._built[1]
        if not self._fresh:  # built once already: plot it again for this size, or keep what was built
            if self.replot_figure is not None:
                self.replot_figure()
            elif self._built is not None:
                return self._built[1]
        self._fresh = False
        try:
            text = super().render()
        except (ArithmeticError, ValueError, IndexError) as exc:
            log.warning("chart %s cannot be drawn", self.label, exc_info=exc)
            text = Text(f"{self.label}: cannot draw this chart ({type(exc).__name__}: {exc})", style="red")
        self._built = (key, text)
        return text
