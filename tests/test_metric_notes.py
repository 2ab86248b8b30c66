"""What tokens/s counts is said where a newcomer looks: the chart's tooltip and the help screen (issue 22)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from textual.widgets import Static

from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.runs.metric_notes import METRIC_NOTES
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.screens.help import HelpScreen
from twinkle_tui.ui.widgets.charts import MetricChart

from conftest import quiescent, settle
from run_factory import make_run


async def test_a_chart_and_the_help_say_what_tokens_per_second_counts(home: Path) -> None:
    make_run(home, "sft-a", steps=20, metrics=("loss", "tokens/s"))
    app = TwinkleApp(home=home, run_id="sft-a", watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU"),
                     monitor_interval=None)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: quiescent(app) and app.chart_grid.charts(), what="the charts")
        app.action_view_command("select_metrics", {"names": ["loss", "tokens/s"]})
        await settle(pilot, lambda: {c.metric for c in app.chart_grid.charts()} == {"loss", "tokens/s"},
                     what="the two charts")
        tips = {c.metric: c.tooltip for c in app.query(MetricChart)}
        assert "never padding" in str(tips["tokens/s"]) and "pause is not counted" in str(tips["tokens/s"])
        await pilot.press("question_mark")
        await settle(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
        console = Console(width=150, record=True, file=io.StringIO())
        for static in app.screen.query(Static):
            console.print(static.content)
        shown = " ".join(console.export_text().split())
        assert "What the trainer's metrics count" in shown and "tokens/s tokens trained on per second" in shown
        assert "never padding" in shown
    assert set(METRIC_NOTES) >= {"tokens/s", "step time", "loss", "learning rate", "grad_norm"}
