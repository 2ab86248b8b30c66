"""The real dashboard under Pilot, over real run directories and real training processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.gpu import GpuProbe, GpuSnapshot
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.screens.metric_picker import MetricPicker
from twinkle_tui.ui.widgets.charts import ChartGrid, MetricChart
from twinkle_tui.ui.widgets.chat import ChatMessage
from twinkle_tui.ui.widgets.gpu_panel import GpuPanel
from twinkle_tui.ui.widgets.run_list import RunList
from twinkle_tui.ui.widgets.status_bar import RunStatusBar

from conftest import TOY, process_alive, settle
from run_factory import T0, make_run

NO_GPU = GpuSnapshot(error="no GPU detected")


def app_for(home: Path, **kw) -> TwinkleApp:
    kw.setdefault("gpu_probe", lambda: NO_GPU)
    return TwinkleApp(home=home, grace=10, **kw)


def charts(app: TwinkleApp) -> list[MetricChart]:
    return app.query_one(ChartGrid).charts()


def rendered(widget) -> str:
    return str(widget.render())


async def test_a_run_that_starts_writing_appears_and_its_chart_grows(home: Path) -> None:
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        ctl = ProcessController(home, grace=10)
        launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="live")
        try:
            await settle(pilot, lambda: "live" in app.query_one(RunList)._rows, what="the run in the list")
            await settle(pilot, lambda: app.selected == "live" and charts(app), what="charts")
            chart = next(c for c in charts(app) if c.metric == "loss")
            await settle(pilot, lambda: chart.x_range[1] >= 20, what="20 steps drawn")
            first = chart.x_range[1]
            await settle(pilot, lambda: chart.x_range[1] > first + 20, what="the chart to grow")
            assert "running" in rendered(app.query_one(RunStatusBar))
        finally:
            ctl.kill("live")
            launched.supervisor.wait(timeout=30)


async def test_keys_pause_resume_and_stop_a_real_process_with_confirmation(home: Path) -> None:
    ctl = ProcessController(home, grace=10)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02", "--save-steps", "100000"], run_id="keys")
    paths = RunPaths.of("keys")
    app = app_for(home, run_id="keys")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: read_meta(paths).pid and read_meta(paths).status == "running", what="running")
        await settle(pilot, lambda: app.current_view() is not None and app.current_view().last_step > 3, what="steps")
        pid = read_meta(paths).pid
        await pilot.press("p")
        await settle(pilot, lambda: read_meta(paths).status == "paused", what="paused")
        await settle(pilot, lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T", what="SIGSTOP")
        await pilot.press("r")
        await settle(pilot, lambda: read_meta(paths).status == "running", what="running again")
        assert Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "T"
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("n")  # the modal guards stop: saying no leaves the run alone
        await pilot.pause(0.5)
        assert read_meta(paths).status == "running"
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("y")
        assert launched.supervisor.wait(timeout=60) == 0
        meta = read_meta(paths)
        assert meta.status == "stopped" and meta.last_checkpoint is not None


async def test_zoom_reset_and_metric_selection_change_what_is_drawn(home: Path) -> None:
    make_run(home, "big", steps=2000, metrics=("loss", "reward", "kl", "entropy", "lr2"))
    app = app_for(home, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: len(charts(app)) == 4, what="four charts")
        assert [c.metric for c in charts(app)] == ["loss", "reward", "kl", "entropy"]
        chart = charts(app)[0]
        assert chart.x_range == (1.0, 2000.0)
        await pilot.press("z")
        await settle(pilot, lambda: charts(app)[0].x_range[1] - charts(app)[0].x_range[0] < 1100, what="zoom in")
        await pilot.press("0")
        await settle(pilot, lambda: charts(app)[0].x_range == (1.0, 2000.0), what="reset")
        await pilot.press("m")
        await settle(pilot, lambda: isinstance(app.screen, MetricPicker), what="picker")
        await pilot.pause(0.2)
        boxes = [app.screen.query_one("#picker-list").render_line(i).text[:3] for i in range(5)]
        assert boxes == ["▐✓▌"] * 4 + ["▐ ▌"], boxes  # charted ones ticked, the rest empty: never an X
        await pilot.press("escape")
        app.action_view_command("select_metrics", {"names": ["lr2"]})
        await settle(pilot, lambda: [c.metric for c in charts(app)] == ["lr2"], what="one chart")
        await pilot.press("slash")
        await pilot.press(*"/zoom 100 300", "enter")
        await settle(pilot, lambda: charts(app)[0].x_range == (100.0, 300.0), what="/zoom")
        await pilot.press(*"/metrics loss,kl", "enter")
        await settle(pilot, lambda: [c.metric for c in charts(app)] == ["loss", "kl"], what="/metrics")


async def test_metric_picker_filters_and_applies(home: Path) -> None:
    make_run(home, "m", steps=50, metrics=("loss", "train/accuracy_reward", "grad_norm"))
    app = app_for(home, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: charts(app), what="charts")
        await pilot.press("m")
        await settle(pilot, lambda: isinstance(app.screen, MetricPicker), what="picker")
        await pilot.press(*"acc")
        picker = app.screen
        from textual.widgets import SelectionList

        options = picker.query_one(SelectionList)
        await settle(pilot, lambda: options.option_count == 1, what="filtered list")
        assert options.get_option_at_index(0).value == "train/accuracy_reward"
        await pilot.press("tab", "space", "enter")
        await settle(pilot, lambda: "train/accuracy_reward" in [c.metric for c in charts(app)], what="applied")


async def test_torn_line_and_nan_do_not_break_the_chart(home: Path) -> None:
    make_run(home, "nan", steps=300, nan_at=tuple(range(150, 160)), torn_tail=True)
    app = app_for(home, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: charts(app), what="charts")
        loss = next(c for c in charts(app) if c.metric == "loss")
        await settle(pilot, lambda: loss.x_range == (1.0, 300.0), what="drawn")
        assert loss.title_text.startswith("loss 0.") and "NaN/Inf@150" in loss.title_text  # a marked gap, not 0
        view = app.current_view()
        assert view.metrics.malformed == 0 and view.metrics.last_step() == 300  # the torn line waits


async def test_missing_gpu_shows_no_gpu(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def not_found() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", not_found)
    make_run(home, "cpu", steps=10)
    app = TwinkleApp(home=home, gpu_probe=GpuProbe().snapshot, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: "no GPU detected" in rendered(app.query_one(GpuPanel)), what="no GPU")


async def test_run_id_flag_selects_and_log_is_plain_text(home: Path) -> None:
    make_run(home, "older", steps=10, start=T0 - 1000)
    make_run(home, "newer", steps=10, start=T0)
    app = app_for(home, run_id="older", watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.query_one(RunList)._rows == ["newer", "older"], what="newest first")
        assert app.selected == "older"
        from twinkle_tui.ui.widgets.log_view import RunLog

        log = app.query_one(RunLog)
        await settle(pilot, lambda: len(log.shown) > 5, what="log lines")
        assert "[bold]not markup[/bold]" in log.shown[-1] and "\x1b" not in log.shown[-1]


async def test_slash_command_errors_are_one_line(home: Path) -> None:
    make_run(home, "r", steps=10)
    app = app_for(home, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "r", what="selection")
        await pilot.press("slash", *"/zom 1 2", "enter")
        await pilot.press(*"/pause", "enter")
        await pilot.press(*"/metrics nope", "enter")
        await pilot.pause(0.3)
        errors = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("error")]
        assert errors[0] == "⚠ unknown command /zom; did you mean /zoom?"
        assert errors[1] == "⚠ cannot pause run 'r': it is completed"
        assert errors[2] == "⚠ unknown metric 'nope'; this run logs: loss, grad_norm, learning rate"


async def test_quitting_the_app_leaves_training_running(home: Path) -> None:
    ctl = ProcessController(home, grace=10)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="outlive")
    app = app_for(home, run_id="outlive")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.current_view() is not None and app.current_view().last_step > 2, what="steps")
        await pilot.press("q")
    assert launched.supervisor.poll() is None and process_alive(ctl, "outlive")
    ctl.kill("outlive")
    launched.supervisor.wait(timeout=30)


async def test_new_run_from_a_recipe_starts_and_is_selected(home: Path) -> None:
    app = app_for(home, recipe_dirs=[TOY.parent])
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("n")
        from textual.widgets import OptionList

        await settle(pilot, lambda: app.screen.query(OptionList), what="recipes")
        options = app.screen.query_one(OptionList)
        await pilot.press("down")  # typing goes to the path field; down moves into the list
        assert options.has_focus
        index = next(i for i in range(options.option_count) if options.get_option_at_index(i).id == str(TOY))
        options.highlighted = index
        await pilot.press("enter")
        await settle(pilot, lambda: app.selected and app.selected.startswith("toy-regression"), what="new run selected")
        run_id = app.selected
        await settle(pilot, lambda: read_meta(RunPaths.of(run_id)).status == "completed", timeout=60, what="done")


async def test_the_new_run_dialog_takes_a_typed_path_at_once(home: Path) -> None:
    """Its title says "type a path": what is typed goes there, without a click or Tab first."""
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("n")
        from twinkle_tui.ui.screens.new_run import NewRunScreen

        await settle(pilot, lambda: isinstance(app.screen, NewRunScreen), what="the dialog")
        await pilot.press("enter")  # a stray Enter starts nothing
        assert isinstance(app.screen, NewRunScreen)
        await pilot.press(*f"{TOY} -- --steps 3")
        await pilot.press("enter")
        await settle(pilot, lambda: app.selected and app.selected.startswith("toy-regression"), what="started")
        run_id = app.selected
        await settle(pilot, lambda: read_meta(RunPaths.of(run_id)).status == "completed", timeout=60, what="done")
        assert read_meta(RunPaths.of(run_id)).progress.last_step == 3
