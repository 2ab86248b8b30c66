"""Chart data: decimation keeps spikes and gaps, block summaries agree with raw points, TensorBoard's EMA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from twinkle_tui.commands.chart_commands import default_metrics
from twinkle_tui.runs.chart_data import BlockSummary, EmaState, SmoothedSeries, decimate, ema_extend
from twinkle_tui.ui.widgets.charts import step_ticks


def series(n: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(1, n + 1, dtype=np.int64)
    return steps, np.exp(-steps / n) + 0.01 * np.sin(steps)


@pytest.mark.parametrize("use_blocks", [False, True])
def test_a_one_step_spike_in_a_million_steps_stays_visible(use_blocks: bool) -> None:
    steps, values = series(1_000_000)
    values[654_321] = 50.0
    summary = BlockSummary().update(values, 0) if use_blocks else None
    d = decimate(steps, values, 150, summary=summary)
    assert len(d.x) <= 4 * 150
    assert np.nanmax(d.y) == 50.0
    assert d.x[np.nanargmax(d.y)] <= 654_322 <= d.x[np.nanargmax(d.y)] + 1_000_000 / 150


def test_block_decimation_matches_raw_decimation_per_column() -> None:
    steps, values = series(1_000_000)
    values[12_345] = -3.0
    raw = decimate(steps, values, 100, 10_000, 800_000)
    fast = decimate(steps, values, 100, 10_000, 800_000, summary=BlockSummary().update(values, 0))
    assert np.nanmin(raw.y) == np.nanmin(fast.y) and np.nanmax(raw.y) == np.nanmax(fast.y)
    # columns agree up to a block straddling a column edge: at most the noise (+-0.01) plus one block of trend
    assert len(raw.y) == len(fast.y)
    assert np.max(np.abs(raw.y - fast.y)) < 0.025


def test_non_finite_values_are_gaps_with_their_exact_first_step() -> None:
    steps, values = series(100_000)
    values[70_000:70_010] = np.nan
    values[80_000] = np.inf
    for summary in (None, BlockSummary().update(values, 0)):
        d = decimate(steps, values, 80, summary=summary)
        assert d.first_bad_step == 70_001
        assert not np.any(d.y == 0.0)  # a gap is never drawn as zero
        width = 100_000 / 80
        for bad_step in (70_001, 70_010, 80_001):  # every bad point falls in a marked column
            assert any(m - width <= bad_step <= m + width for m in d.nonfinite_x)
        assert len(d.nonfinite_x) <= 4
        near = decimate(steps, values, 80, 69_980, 70_030, summary=summary)  # zoomed in, the line breaks
        assert len(near.segments()) == 2 and near.first_bad_step == 70_001


def test_a_smooth_curve_has_no_block_artifacts() -> None:
    """A window only a few blocks wide is decimated from raw points: a block must never span columns."""
    steps = np.arange(1, 1501)
    values = np.cos(steps / 1500 * np.pi)  # monotonic, like a cosine learning-rate schedule
    d = decimate(steps, values, 32, summary=BlockSummary().update(values, 0))
    per_column = d.y.reshape(-1, 4)
    spans = per_column.max(axis=1) - per_column.min(axis=1)
    assert spans.max() < 2.5 * (2 / 32)  # each column spans about its own share of the range, no more


def test_zoom_window_only_uses_points_inside() -> None:
    steps, values = series(10_000)
    values[9_000] = 99.0
    d = decimate(steps, values, 50, 100, 200)
    assert d.x.min() >= 100 and d.x.max() <= 200 and np.nanmax(d.y) < 99


def test_log_y_hides_non_positive_values_without_calling_them_nan() -> None:
    steps = np.arange(1, 11)
    values = np.array([1.0, 0.5, 0.0, -1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    d = decimate(steps, values, 100, log_y=True)
    assert np.isnan(d.y[2]) and np.isnan(d.y[3])
    assert d.first_bad_step is None and d.first_unplottable_step == 3  # a zero is not a NaN


def test_values_too_large_to_draw_are_off_scale_marks() -> None:
    steps = np.arange(1, 50_001)  # wide enough that the block summaries are used too
    values = np.ones(50_000)
    values[4000] = 8.5e307
    values[100] = np.nan
    for summary in (None, BlockSummary()):
        d = decimate(steps, values, 10, summary=summary.update(values, 0) if summary else None)
        assert d.first_unplottable_step == 4001 and d.first_bad_step == 101
        assert np.nanmax(d.y) == 1.0


def test_block_summary_follows_growth_and_rebuilds_after_a_truncation() -> None:
    steps, values = series(5_000)
    summary = BlockSummary(block=256)
    summary.update(values[:1000], version=0)
    assert summary.n == 768
    summary.update(values, version=0)
    assert summary.n == 4864 and summary.maxs[0] == values[:256].max()
    summary.update(values[:600], version=1)  # a relaunch dropped points
    assert summary.n == 512


def tensorboard_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's reference smoothing loop (debiased EMA; non-finite points pass through untouched)."""
    out, last, count = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out.append(last / (1 - weight**count))
    return out


@pytest.mark.parametrize("weight", [0.0, 0.6, 0.9, 0.99, 0.999])
def test_ema_matches_tensorboard(weight: float) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=3000)
    values[[10, 500, 501]] = [np.nan, np.inf, -np.inf]
    ours = ema_extend(values, EmaState(weight))
    ref = np.array(tensorboard_ema(values.tolist(), weight))
    assert np.allclose(ours, ref, equal_nan=True, rtol=1e-9, atol=1e-9)


def test_smoothing_is_extended_incrementally_and_rebuilt_on_change() -> None:
    values = np.random.default_rng(1).normal(size=2000)
    smooth = SmoothedSeries(0.9)
    part = smooth.update(values[:700], version=0).copy()
    full = smooth.update(values, version=0)
    assert np.allclose(full[:700], part)
    assert np.allclose(full, tensorboard_ema(values.tolist(), 0.9))
    changed = values.copy()
    changed[:10] = 5
    assert np.allclose(smooth.update(changed[:1500], version=1), tensorboard_ema(changed[:1500].tolist(), 0.9))


def test_step_ticks_are_round_whole_steps() -> None:
    assert step_ticks(1, 120, 6) == [20, 40, 60, 80, 100, 120]
    assert step_ticks(0, 1_000_000, 5) == [0, 200_000, 400_000, 600_000, 800_000, 1_000_000]
    assert all(isinstance(t, int) for t in step_ticks(3.5, 17.2, 4))


def test_default_metrics_prefer_loss_reward_grad_norm_and_lr() -> None:
    names = ["tokens/s", "train/accuracy_reward", "grad_norm", "kl", "loss", "learning rate", "entropy"]
    assert default_metrics(names) == ["loss", "train/accuracy_reward", "grad_norm", "learning rate"]
    assert default_metrics(["a", "b"]) == ["a", "b"]


def test_log_y_ticks_are_values_a_log_axis_shows() -> None:
    from twinkle_tui.ui.widgets.charts import log_ticks

    assert log_ticks(0.3, 4.8, 4) == ([0.5, 1.0, 2.0], ["0.5", "1", "2"])  # not 4.28 3.80 3.38
    assert log_ticks(1e-5, 10, 4)[1] == ["1e-05", "0.001", "0.1", "10"]  # a wide range: decades
    ticks, labels = log_ticks(3.3, 4.3, 4)  # less than a decade with no 1-2-5 value: round linear steps
    assert labels == ["3.4", "3.6", "3.8", "4.0", "4.2"]


async def test_a_log_y_chart_labels_its_axis_with_round_values(home: Path) -> None:
    import re

    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp
    from twinkle_tui.ui.widgets.charts import ChartGrid

    from conftest import quiescent, settle
    from run_factory import make_run

    make_run(home, "r", steps=300, metrics=("loss",))
    app = TwinkleApp(home=home, gpu_probe=lambda: GpuSnapshot(error="no GPU"), watch=False, data_interval=0.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: quiescent(app) and app.query_one(ChartGrid).charts(), what="drawn")
        await pilot.press("l")
        await settle(pilot, lambda: "[log]" in app.query_one(ChartGrid).charts()[0].title_text, what="log-y")
        chart = app.query_one(ChartGrid).charts()[0]
        await settle(pilot, lambda: chart._built is not None, what="built")
        built = chart._built[1] if chart._built else ""
        labels = re.findall(r"([-\d.e+]+)┤", getattr(built, "plain", str(built)))
        assert len(labels) >= 2 and all(f"{float(label):e}"[0] in "12357" and f"{float(label):e}"[1:8] == ".000000"
                                        for label in labels), labels  # 1, 2, 3, 5, 7 x 10^k


async def test_a_log_axis_figure_survives_a_resize_and_a_dialog_over_it(caplog: pytest.LogCaptureFixture) -> None:
    """plotext takes the log of a log axis's data in place when it builds: a second build of the same figure (a
    resize, or a dialog repainting the screen under it) failed with 'math domain error' and took the app down."""
    from textual.app import App, ComposeResult
    from textual.screen import ModalScreen
    from textual.widgets import Static

    from twinkle_tui.ui.widgets.plot import OncePlot

    plots: list[int] = []

    class Dialog(ModalScreen[None]):
        def compose(self) -> ComposeResult:
            yield Static("a question")

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield OncePlot(replot=self.plot, id="p")

        def on_mount(self) -> None:
            self.plot()

        def plot(self) -> None:
            chart = self.query_one(OncePlot)
            chart.plt.clear_data()
            chart.plt.clear_figure()
            chart.plt.scatter([1, 2, 3], [0.01, 1.0, 100.0])
            chart.plt.yscale("log")
            plots.append(1)
            chart.plotted()

    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        await pilot.resize_terminal(100, 30)
        await pilot.pause(0.1)
        app.push_screen(Dialog())
        await pilot.pause(0.1)
        await pilot.resize_terminal(90, 28)
        await pilot.pause(0.1)
        assert app.is_running
        assert "cannot draw" not in str(app.query_one(OncePlot).render())
    assert len(plots) >= 3  # plotted again for each new size
    assert not [r for r in caplog.records if "cannot be drawn" in r.getMessage()]
