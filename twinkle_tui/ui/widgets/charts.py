"""Metric charts: up to four PlotextPlot widgets drawing decimated windows of full-resolution series."""

from __future__ import annotations

import math

import numpy as np
from textual import events
from textual.app import ComposeResult
from textual.containers import Grid
from textual.message import Message
from textual_plotext.plot import Plot

from twinkle_tui.commands.chart_settings import MAX_CHARTS, ChartSettings
from twinkle_tui.runs.chart_data import BlockSummary, Decimated, SmoothedSeries, decimate
from twinkle_tui.runs.metric_notes import metric_note
from twinkle_tui.runs.progress import format_value
from twinkle_tui.runs.store import RunCache
from twinkle_tui.ui.widgets.plot import OncePlot

Y_AXIS_WIDTH = 9  # cells plotext uses for y tick labels and the frame, roughly
MAX_MARKERS = 40
EVENT_COLORS = {"launch": "blue", "warning": "orange", "fix": "magenta", "undo": "magenta", "error": "red"}


def event_markers(view: RunCache, lo: float, hi: float) -> list[tuple[float, str, str]]:
    """(step, kind, color) of relaunches, checkpoints and monitor events inside [lo, hi]."""
    ts_steps, ts_values = view.metrics.ts.snapshot()
    out: list[tuple[float, str, str]] = []
    launches = 0
    for ev in view.events.events:
        step = ev.step
        if ev.kind == "launch":
            launches += 1
            if launches == 1:
                continue  # the first launch is the start of the chart, not a marker
            if step is None and len(ts_values):
                i = int(np.searchsorted(ts_values, ev.ts))
                step = int(ts_steps[min(i, len(ts_steps) - 1)]) if i < len(ts_steps) else None
        if step is None or not lo <= step <= hi:
            continue
        if ev.kind == "checkpoint":
            out.append((float(step), "checkpoint", "grey50"))
        elif ev.kind in EVENT_COLORS:
            out.append((float(step), ev.kind, EVENT_COLORS[ev.kind]))
    return out[-MAX_MARKERS:]


def margins(ymin: float, ymax: float, log_y: bool) -> tuple[float, float]:
    """The y range with a band below the data (checkpoint dots) and above it (NaN marks)."""
    if log_y and ymin > 0:
        ratio = max(ymax / ymin, 1.5)
        pad = ratio ** 0.08
        return ymin / pad, ymax * pad
    span = ymax - ymin or abs(ymax) or 1.0
    return ymin - 0.12 * span, ymax + 0.08 * span


def fit_name_and_value(name: str, value: float | None, width: int) -> str:
    """'name value' in at most `width` cells: the value with fewer digits if it must, dropped if it cannot fit,
    never cut (a cut 2.73e-04 would read as 2); a name that is itself too long ends in an ellipsis."""
    if len(name) > width:
        return name[: max(1, width - 1)] + "…"
    if value is None:
        return name
    for text in value_forms(value):
        if len(name) + 1 + len(text) <= width:
            return f"{name} {text}"
    return name


def value_forms(value: float) -> list[str]:
    """A number written ever shorter, each form exact to its digits."""
    if not np.isfinite(value):
        return [format_value(value)]
    forms = [format_value(value)]
    for digits in (4, 3, 2, 1):
        forms.append(f"{value:.{digits}g}")
        forms.append(f"{value:.{max(0, digits - 1)}e}")
    out: list[str] = []
    for f in forms:
        for form in (f, f.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")):
            if form not in out:
                out.append(form)
    return sorted(out, key=lambda f: (-significant_digits(f), len(f)))


def significant_digits(text: str) -> int:
    mantissa = text.split("e")[0].lstrip("+-").replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) if "." in text.split("e")[0] else len(mantissa)


def step_ticks(lo: float, hi: float, count: int) -> list[int]:
    """Whole-step tick positions at a round spacing (1, 2, 5 x 10^k) inside [lo, hi]."""
    span = max(hi - lo, 1.0)
    raw = span / count
    magnitude = 10 ** int(np.floor(np.log10(raw))) if raw >= 1 else 1
    spacing = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda c: abs(np.log(c / raw)))
    first = int(np.ceil(lo / spacing) * spacing)
    return list(range(first, int(hi) + 1, int(spacing))) or [int(lo)]


def value_ticks(lo: float, hi: float, count: int) -> tuple[list[float], list[str]]:
    """Y tick positions at a round spacing inside the data's own range [lo, hi], and their labels: the bands
    kept below and above the data for markers get no tick, so a loss never seems to go below zero. Labels get
    the fewest digits that tell every tick apart."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return [lo], [format_value(lo)]
    raw = (hi - lo) / max(1, count)
    magnitude = 10.0 ** np.floor(np.log10(raw))
    candidates = sorted((m * magnitude for m in (0.5, 1, 2, 5, 10)), key=lambda c: abs(np.log(c / raw)))

    def at(spacing: float) -> list[float]:
        first = np.ceil(lo / spacing - 1e-9) * spacing
        return [0.0 if abs(t) < spacing * 1e-9 else float(t) for t in np.arange(first, hi + spacing * 1e-9, spacing)]

    # The round spacing nearest the wanted count that still puts two ticks on the axis (one says no scale).
    spacing = next((c for c in candidates if min(2, count) <= len(at(c)) <= (count + 1 if count > 2 else count)),
                   candidates[0])
    ticks = at(spacing) or [lo]
    decimals = int(max(0, -np.floor(np.log10(spacing) + 1e-9)))
    if max(abs(lo), abs(hi)) < 1e6 and decimals <= 6:  # as many decimals as the spacing has, on every tick
        return ticks, [f"{t:.{decimals}f}" for t in ticks]
    for digits in range(1, 16):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return ticks, labels
    return ticks, [repr(t) for t in ticks]


def log_ticks(lo: float, hi: float, count: int) -> tuple[list[float], list[str]]:
    """Y ticks of a log axis at the values a log axis shows (1, 2, 5 x 10^k, or powers of ten when the range is
    wide), inside [lo, hi], labelled as written (0.5, 1, 2, 1e-05): never 4.28, 3.80, 3.38."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or hi <= lo:
        return value_ticks(lo, hi, count)
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    wanted = max(2, count)
    best: list[float] = []
    for mantissas in ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = [float(f"{m}e{k}") for k in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) > wanted + 1:
            break
        best = ticks
        if len(ticks) >= wanted:
            break
    if not best:  # decades only, thinned to the count (a range of many decades)
        decades = [float(f"1e{k}") for k in range(first, last + 1) if lo <= 10.0 ** k <= hi]
        best = decades[:: max(1, -(-len(decades) // wanted))]
    if len(best) < 2:  # less than a decade and no round value inside: a linear scale's round values
        return value_ticks(lo, hi, count)
    return best, [f"{t:g}" for t in best]


def spread_ticks(ticks: list[float], labels: list[str], lo: float, hi: float,
                 rows: int) -> tuple[list[float], list[str]]:
    """At most one tick per row of the plot: which of two labels sharing a row plotext prints is not defined
    (the snapshot of a small terminal changed from run to run)."""
    kept: tuple[list[float], list[str]] = ([], [])
    last = -1
    for tick, label in zip(ticks, labels, strict=True):
        row = round((tick - lo) / (hi - lo) * (rows - 1)) if hi > lo else 0
        if row > last:
            kept[0].append(tick)
            kept[1].append(label)
            last = row
    return kept


def place_y_ticks(plt: Plot, ymin: float, ymax: float, below: float, above: float, rows: int, log: bool) -> None:
    """Round y ticks for data in [ymin, ymax] on an axis from `below` to `above` that is `rows` rows high: 1, 2, 5 x
    10^k on a log axis, round steps on a linear one, at most one label a row (judged where a log axis puts them)."""
    count = max(1, min(6, (rows + 1) // 2))
    if log:
        ticks, labels = log_ticks(ymin, ymax, count)
        if ticks and min(ticks) > 0:
            kept = spread_ticks([math.log10(t) for t in ticks], labels, math.log10(below), math.log10(above), rows)
            plt.yticks([10.0 ** t for t in kept[0]], kept[1])
    else:
        plt.yticks(*spread_ticks(*value_ticks(ymin, ymax, count), below, above, rows))


class MetricChart(OncePlot):
    """One metric. Drag to zoom to a step range, wheel to zoom around the pointer."""

    class ZoomRequest(Message):
        def __init__(self, lo: float | None, hi: float | None, factor: float | None = None,
                     center: float | None = None) -> None:
            super().__init__()
            self.lo, self.hi, self.factor, self.center = lo, hi, factor, center

    def __init__(self, metric: str, **kw: object) -> None:
        super().__init__(replot=self._replot, **kw)
        self.metric = metric
        self.x_range: tuple[float, float] = (0.0, 1.0)
        self._smoothed: dict[str, SmoothedSeries] = {}
        self._drag_from: float | None = None
        self.title_text = ""
        self._last: tuple[RunCache, ChartSettings, RunCache | None] | None = None
        self._summaries: dict[str, BlockSummary] = {}

    @property
    def columns(self) -> int:
        return max(10, self.size.width - Y_AXIS_WIDTH)  # one bucket (up to four points) per cell

    @property
    def label(self) -> str:
        return self.metric

    def _replot(self) -> None:
        if self._last is not None and self.metric:
            self.draw(*self._last)

    def forget(self) -> None:
        """Drop what was drawn for another metric."""
        self._last = None
        self._summaries.clear()
        self._smoothed.clear()
        self.title_text = ""
        self.forget_build()
        self.plt.clear_data()
        self.plt.clear_figure()

    def on_resize(self) -> None:
        if self._last is not None and self.metric:  # titles, ticks and buckets depend on the width
            self.draw(*self._last)

    def draw(self, view: RunCache, settings: ChartSettings, compare: RunCache | None) -> None:
        self._last = (view, settings, compare)
        self.plotted()
        if not self.size.width:  # not laid out yet: its first resize draws it, at the width it will have
            return
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.frame(True)
        series = view.metrics.series.get(self.metric)
        if series is None or not len(series):
            plt.title(f"{self.metric}: no numeric values yet")
            self.refresh()
            return
        steps, values = series.snapshot()
        lo, hi = settings.zoom if settings.zoom else (float(steps[0]), float(steps[-1]))
        if hi <= lo:
            hi = lo + 1
        self.x_range = (lo, hi)
        cols = self.columns
        d = decimate(steps, values, cols, lo, hi, settings.log_y, self._summary(view.run_id, values, series.version))
        raw_color = "grey50" if settings.smoothing else "cyan"
        for x, y in d.segments():
            plt.plot(x.tolist(), y.tolist(), marker="braille", color=raw_color)
        if settings.smoothing:
            smoother = self._smoothed.get(view.run_id)
            if smoother is None or smoother.weight != settings.smoothing_weight:
                smoother = self._smoothed[view.run_id] = SmoothedSeries(settings.smoothing_weight)
            smooth = smoother.update(values, series.version)
            ds = decimate(steps, smooth, cols, lo, hi, settings.log_y,
                          self._summary(f"{view.run_id}\0smooth{smoother.weight}", smooth, series.version))
            for x, y in ds.segments():
                plt.plot(x.tolist(), y.tolist(), marker="braille", color="cyan")
        if compare is not None and self.metric in compare.metrics.series:
            other = compare.metrics.series[self.metric]
            cs, cv = other.snapshot()
            dc = decimate(cs, cv, cols, lo, hi, settings.log_y, self._summary(compare.run_id, cv, other.version))
            for x, y in dc.segments():  # the legend is above the charts, never over the data
                plt.plot(x.tolist(), y.tolist(), marker="braille", color="orange")
        finite = d.y[np.isfinite(d.y)]
        ymin, ymax = (float(finite.min()), float(finite.max())) if len(finite) else (1.0, 2.0)
        below, above = margins(ymin, ymax, settings.log_y)
        # plotext takes the limits of a log axis as log10 values
        plt.ylim(*((math.log10(below), math.log10(above)) if settings.log_y else (below, above)))
        if len(d.nonfinite_x):  # marked gaps: a red x along the top where a value was NaN or Inf
            xs = d.nonfinite_x[:: max(1, len(d.nonfinite_x) // MAX_MARKERS)]
            plt.scatter(xs.tolist(), [above] * len(xs), marker="x", color="red")
        if len(d.unplottable_x):  # finite values that cannot be drawn here (<= 0 on log-y, or too large)
            xs = d.unplottable_x[:: max(1, len(d.unplottable_x) // MAX_MARKERS)]
            plt.scatter(xs.tolist(), [above] * len(xs), marker="o", color="yellow")
        markers = event_markers(view, lo, hi)
        checkpoints = [m[0] for m in markers if m[1] == "checkpoint"]
        room = max(1, self.columns // 3)  # a dot every third cell at most
        if len(checkpoints) > room:
            checkpoints = checkpoints[:: -(-len(checkpoints) // room)][:-1] + checkpoints[-1:]
        if checkpoints:  # in the margin below the data, so a dot never hides a point of the line
            plt.scatter(checkpoints, [below] * len(checkpoints), marker="•", color="grey50")
        for step, kind, color in markers:
            if kind != "checkpoint":
                plt.vline(step, color)
        plt.xlim(lo, hi)
        label_width = len(f"{int(hi):,}") + 3
        ticks = step_ticks(lo, hi, max(2, self.columns // label_width))
        plt.xticks([float(t) for t in ticks], [f"{t:,}" for t in ticks])
        if settings.log_y:
            plt.yscale("log")
        # the title, the frame and the step labels take four rows
        place_y_ticks(plt, ymin, ymax, below, above, max(1, self.size.height - 4), settings.log_y)
        self.title_text = self._title(steps, values, d, finite, settings)
        plt.title(self.title_text)
        self.refresh()

    def _summary(self, key: str, values: np.ndarray, version: int) -> BlockSummary:
        summary = self._summaries.get(key)
        if summary is None:
            summary = self._summaries[key] = BlockSummary()
        return summary.update(values, version)

    def _title(self, steps: np.ndarray, values: np.ndarray, d: Decimated, finite: np.ndarray,
               settings: ChartSettings) -> str:
        width = max(8, self.size.width - Y_AXIS_WIDTH - 1)  # plotext drops a title wider than the plot area
        last = float(values[-1]) if len(values) else None
        marks = []  # how to read the chart: they keep their place, and the value gives up digits for them first
        if d.first_bad_step is not None:
            marks.append(f"NaN/Inf@{d.first_bad_step}")
        if d.first_unplottable_step is not None:
            i = int(np.searchsorted(steps, d.first_unplottable_step))
            value = float(values[min(i, len(values) - 1)])
            marks.append(f"{'≤0' if value <= 0 else 'off-scale'}@{d.first_unplottable_step}")
        flags = [f for f, on in (("smooth", settings.smoothing), ("log", settings.log_y),
                                 ("zoom", settings.zoom is not None)) if on]
        if flags:
            marks.append("[" + " ".join(flags) + "]")
        reserved = sum(len(m) + 2 for m in marks)
        title = fit_name_and_value(self.metric, last, width - reserved) if len(self.metric) + reserved <= width \
            else self.metric
        if last is not None and title == self.metric:  # no room for the value beside the marks: the value stays
            title = fit_name_and_value(self.metric, last, width)  # (the name never cut for them), marks follow
        parts = list(marks)
        if len(finite):  # every column keeps its min and max, so these are the window's
            parts.append(f"min {format_value(float(finite.min()))} max {format_value(float(finite.max()))}")
        for part in parts:
            if len(title) + 2 + len(part) <= width:
                title += "  " + part
        return title

    # ------------------------------------------------------------------ mouse zoom
    def step_at(self, x: int) -> float:
        lo, hi = self.x_range
        width = max(1, self.size.width - Y_AXIS_WIDTH - 1)
        frac = min(1.0, max(0.0, (x - Y_AXIS_WIDTH) / width))
        return lo + frac * (hi - lo)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        self._drag_from = self.step_at(event.x)

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._drag_from is None:
            return
        start, end = sorted((self._drag_from, self.step_at(event.x)))
        self._drag_from = None
        lo, hi = self.x_range
        if end - start >= (hi - lo) / 50:  # a real drag, not a click
            self.post_message(self.ZoomRequest(start, end))

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self.post_message(self.ZoomRequest(None, None, factor=0.7, center=self.step_at(event.x)))

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self.post_message(self.ZoomRequest(None, None, factor=1 / 0.7, center=self.step_at(event.x)))


class ChartGrid(Grid):
    """Four charts made once; choosing metrics renames and shows them (mounting widgets on the way to the first
    frame costs more than drawing). Redrawn only when asked (the app throttles to ~4 Hz)."""

    def compose(self) -> ComposeResult:
        for _ in range(MAX_CHARTS):
            yield MetricChart("", classes="chart unused")

    def set_metrics(self, metrics: list[str]) -> None:
        metrics = metrics[:MAX_CHARTS]
        for chart, metric in zip(self.query(MetricChart), [*metrics, *[""] * MAX_CHARTS], strict=False):
            if chart.metric != metric:
                chart.metric = metric
                chart.tooltip = metric_note(metric)  # what it counts (tokens/s, step time, ...), where we know it
                chart.forget()
            chart.set_class(not metric, "unused")
        for i, chart in enumerate(self.query(MetricChart)):  # three charts: the third takes the whole row
            chart.set_class(len(metrics) == 3 and i == 2, "wide")
        for n in range(1, MAX_CHARTS + 1):
            self.set_class(len(metrics) == n, f"count-{n}")

    def charts(self) -> list[MetricChart]:
        return [c for c in self.query(MetricChart) if c.metric]

    def draw(self, view: RunCache, settings: ChartSettings, compare: RunCache | None) -> None:
        for chart in self.charts():
            chart.draw(view, settings, compare)
