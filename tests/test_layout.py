"""The dashboard tells the truth and reads well at every size: numbers that fit, times that are right, a layout
that follows the terminal, and feedback where the user looks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.runs.progress import RunProgress
from twinkle_tui.runs.store import RunStore, RunSummary
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.layout import layout_classes
from twinkle_tui.ui.screens.help import HelpScreen
from twinkle_tui.ui.widgets.charts import ChartGrid, fit_name_and_value
from twinkle_tui.ui.widgets.chat import ChatMessage
from twinkle_tui.ui.widgets.log_view import RunLog
from twinkle_tui.ui.widgets.run_list import run_duration
from twinkle_tui.ui.widgets.status_bar import RunStatusBar

from conftest import quiescent, screen_of, settle
from run_factory import T0, make_run

NO_GPU = GpuSnapshot(error="no GPU detected")
NOW = T0 + 3600


def app_for(home: Path, **kw) -> TwinkleApp:
    kw.setdefault("gpu_probe", lambda: NO_GPU)
    kw.setdefault("data_interval", 0.0)
    kw.setdefault("watch", False)
    kw.setdefault("clock", lambda: NOW)
    return TwinkleApp(home=home, grace=10, **kw)


TITLE = re.compile(r"^(?P<name>.+?)(?: (?P<value>-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|NaN|[+-]Inf))?(?:  |$)")


@pytest.mark.parametrize("size", [(160, 48), (100, 30), (80, 24), (60, 20)])
async def test_chart_titles_never_cut_a_number(home: Path, size: tuple[int, int]) -> None:
    root = make_run(home, "nums", steps=50, metrics=("loss", "learning rate"))
    with open(root / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 51, "ts": T0 + 60, "loss": 9.954e-4, "learning rate": 2.7314e-4}) + "\n")
    app = app_for(home)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, lambda: len(app.query_one(ChartGrid).charts()) == 2 and quiescent(app), what="charts")
        for chart in app.query_one(ChartGrid).charts():
            title = chart.title_text
            match = TITLE.match(title)
            assert match, title
            value = {"loss": 9.954e-4, "learning rate": 2.7314e-4}[chart.metric]
            if match["value"] and match["name"] == chart.metric:
                shown = float(match["value"])
                digits = len(match["value"].split("e")[0].replace("-", "").replace(".", "").lstrip("0"))
                assert abs(shown - value) <= 0.5 * 10 ** (np.floor(np.log10(value)) - digits + 1) * 1.01, title


def test_fit_name_and_value_is_exact_or_absent() -> None:
    assert fit_name_and_value("learning rate", 2.7314e-4, 16) == "learning rate"
    assert fit_name_and_value("learning rate", 2.7314e-4, 20) == "learning rate 2.7e-4"
    assert fit_name_and_value("loss", 9.954e-4, 9) == "loss 1e-3"
    assert fit_name_and_value("a very long metric name", 1.0, 10) == "a very lo…"


def layout(app: TwinkleApp) -> tuple[int, ...]:
    ids = ("#left", "#chat", "#charts", "#log")
    return tuple(app.query_one(i).region.width if app.query_one(i).display else 0 for i in ids) + \
        (app.query_one("#log").region.height,)


async def test_a_resized_layout_equals_a_fresh_start_at_that_size(home: Path) -> None:
    make_run(home, "r", steps=100)
    fresh: dict[tuple[int, int], tuple[int, ...]] = {}
    for size in ((100, 30), (60, 20), (130, 40)):
        fresh_app = app_for(home)
        async with fresh_app.run_test(size=size) as pilot:
            await settle(pilot, lambda a=fresh_app: quiescent(a) and a.query_one(ChartGrid).charts(),  # type: ignore[misc]
                         what="drawn")
            await pilot.pause(0.2)
            fresh[size] = layout(fresh_app)
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: quiescent(app) and app.query_one(ChartGrid).charts(), what="drawn")
        for size in ((100, 30), (60, 20), (130, 40)):
            await pilot.resize_terminal(*size)
            await pilot.pause(0.3)
            assert layout(app) == fresh[size], size
    assert fresh[(60, 20)][:2] == (0, 0)  # side panels fold away on a narrow terminal
    assert fresh[(100, 30)][2] > fresh[(100, 30)][0] + fresh[(100, 30)][1]  # charts keep most of the width


def test_layout_classes_follow_the_width() -> None:
    assert layout_classes(160, 48) == {"medium": False, "narrow": False, "chat-folded": False, "panels-hidden": False,
                                       "short": False}
    assert layout_classes(110, 30)["chat-folded"] and not layout_classes(110, 30, panels=True)["chat-folded"]
    assert layout_classes(130, 40)["medium"] and layout_classes(110, 30)["narrow"]
    assert layout_classes(80, 24)["panels-hidden"] and not layout_classes(80, 24, panels=True)["panels-hidden"]
    assert layout_classes(160, 48, panels=False)["panels-hidden"]


@pytest.mark.parametrize("width", [160, 100])
async def test_the_status_line_keeps_step_rate_and_eta_first(home: Path, sleeper_pid: tuple[int, int],
                                                             width: int) -> None:
    pid, start = sleeper_pid
    make_run(home, "live-with-a-rather-long-run-id-0000", steps=100, status="running", pid=pid, pid_start_time=start,
             start=NOW - 300)
    app = app_for(home)
    async with app.run_test(size=(width, 40)) as pilot:
        await settle(pilot, lambda: "step 100/500" in str(app.query_one(RunStatusBar).render()), what="status")
        first = str(app.query_one(RunStatusBar).render()).splitlines()[0]
        assert first.startswith("▶ running  step 100/500") and "step/s" in first and "ETA" in first


@pytest.mark.parametrize("width", [160, 130, 100, 70])
async def test_eta_and_elapsed_are_never_cut(home: Path, sleeper_pid: tuple[int, int], width: int) -> None:
    """The progress bar shrinks, then goes, and the model name goes, before a number would be cut."""
    import re

    pid, start = sleeper_pid
    make_run(home, "live", steps=1548, status="running", pid=pid, pid_start_time=start, start=NOW - 300,
             step_seconds=0.01, extra_meta={"progress": {"last_step": 1548, "total_steps": 100000}, "model_id": "a-model-with-a-very-long-name-indeed"})
    app = app_for(home)
    async with app.run_test(size=(width, 40)) as pilot:
        await settle(pilot, lambda: "step 1548/100000" in str(app.query_one(RunStatusBar).render()), what="status")
        first, second = str(app.query_one(RunStatusBar).render()).splitlines()[:2]
        assert re.search(r"ETA (\d+:)?\d+:\d\d$", first) and "…" not in first, first
        assert re.search(r"elapsed (\d+:)?\d+:\d\d$", second) and "…" not in second, second


@pytest.fixture
def sleeper_pid():
    import subprocess
    import sys

    from twinkle_trainer.protocol import process_start_time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    from conftest import wait_for

    wait_for(lambda: process_start_time(proc.pid), what="the sleeper")
    yield proc.pid, process_start_time(proc.pid)
    proc.kill()
    proc.wait()


def test_rate_and_eta_count_running_time_only(home: Path) -> None:
    root = make_run(home, "p", steps=100, step_seconds=1.0, status="completed")
    events = [{"ts": T0 + 50.5, "kind": "pause", "step": 50}, {"ts": T0 + 150.5, "kind": "resume", "step": 50}]
    lines = []
    for s in range(1, 101):  # steps 51.. happen after a 100 s pause
        lines.append(json.dumps({"step": s, "ts": T0 + s + (100 if s > 50 else 0), "loss": 1.0}))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with open(root / "events.jsonl", "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in events))
    view = RunStore(home).view("p")
    view.refresh()
    progress = RunProgress.of(view, now=T0 + 300)
    assert progress.rate == pytest.approx(1.0, rel=0.02)  # not 49 steps / 149 s
    assert progress.eta is None  # a completed run has no ETA


def test_the_run_list_shows_how_long_a_run_took() -> None:
    ended = RunSummary("r", __import__("twinkle_trainer.protocol", fromlist=["RunStatus"]).RunStatus.COMPLETED, None, 10,
                       10, start_time=T0, end_time=T0 + 220)
    assert run_duration(ended, now=T0 + 100_000) == "3:40"  # its duration, not its age


async def test_help_shows_keys_as_typed(home: Path) -> None:
    make_run(home, "r", steps=10)
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("question_mark")
        await settle(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        shown = screen_of(app, HelpScreen).keys_shown
        assert {"/", "?", "[", "]", "esc", "q"} <= set(shown)
        assert not {"slash", "question_mark", "left_square_bracket", "escape"} & set(shown)


async def test_runs_and_the_log_wrap_instead_of_cutting(home: Path) -> None:
    make_run(home, "a-long-run-id-for-the-list-0001", steps=10, start=T0 + 5)
    root = make_run(home, "b-run", steps=10)
    with open(root / "output.log", "a") as f:
        f.write("x" * 300 + " end-of-a-long-line\n")
    app = app_for(home, run_id="b-run")
    async with app.run_test(size=(120, 40)) as pilot:
        log = app.query_one(RunLog)
        await settle(pilot, lambda: any("end-of-a-long-line" in line for line in log.shown), what="the long line")
        assert "x" * 300 not in "".join(line for line in log.shown if len(line) > 200)  # wrapped over rows
        await pilot.press("slash", *"/runs", "enter")
        await settle(pilot, lambda: any("a-long-run-id-for-the-list-0001" in str(m._markdown)
                                        for m in app.query(ChatMessage) if m.has_class("reply")), what="/runs")


async def test_compare_names_both_runs_above_the_charts(home: Path) -> None:
    make_run(home, "base", steps=50, start=T0 + 10)
    make_run(home, "other", steps=50)
    app = app_for(home, run_id="base")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("slash", *"/compare oth", "enter")
        legend = app.query_one("#legend")
        await settle(pilot, lambda: legend.display, what="the legend")
        assert "base" in str(legend.render()) and "other" in str(legend.render())
        assert legend.region.y < app.query_one(ChartGrid).region.y


async def test_before_the_first_step_the_run_says_what_it_is_doing(home: Path, sleeper_pid) -> None:
    pid, start = sleeper_pid
    root = make_run(home, "loading", steps=0, status="running", pid=pid, pid_start_time=start, log_lines=0)
    (root / "output.log").write_text("[twinkle] converting SmolLM2 to a cached HF model (once)\n")
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        waiting = app.query_one("#waiting")
        await settle(pilot, lambda: waiting.display and "converting SmolLM2" in str(waiting.render()),
                     what="the waiting text")
        assert "waiting for the first step" in str(waiting.render())


async def test_a_missing_run_id_flag_is_named(home: Path) -> None:
    make_run(home, "real", steps=10)
    app = app_for(home, run_id="nope")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "real", what="the newest run instead")
        assert "no run 'nope'" in str(app.query_one(RunStatusBar).render())


def test_quitting_says_how_many_runs_keep_training() -> None:
    from twinkle_trainer.protocol import RunStatus
    from twinkle_tui.cli import live_runs_message

    runs = [RunSummary("a", RunStatus.RUNNING, None, 1, None, None, None),
            RunSummary("b", RunStatus.PAUSED, None, 1, None, None, None),
            RunSummary("c", RunStatus.COMPLETED, None, 1, None, None, None)]
    assert live_runs_message(runs) == "twinkle-tui: 2 run(s) keep training (a, b); run twinkle-tui again to watch them"
    assert live_runs_message(runs[2:]) is None


async def test_select_right_after_new_sticks(home: Path) -> None:
    from conftest import TOY

    make_run(home, "older", steps=10)
    app = app_for(home, recipe_dirs=[TOY.parent])
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "older", what="the only run")
        await pilot.press("slash", *"/new toy_regression.py -- --steps 5", "enter")
        from twinkle_tui.ui.screens.confirm import ConfirmScreen

        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="start?")
        await pilot.press("y")
        await settle(pilot, lambda: app.selected and app.selected.startswith("toy-regression"), what="the new run")
        await pilot.press(*"/select older", "enter")
        await settle(pilot, lambda: app.selected == "older", what="the selection")
        await pilot.pause(1.0)  # queued highlights of the list must not undo it
        assert app.selected == "older" and "older" in str(app.query_one(RunStatusBar).render())


async def test_shrinking_a_live_dashboard_in_steps_folds_the_panels_even_after_the_chat_was_opened(
        home: Path) -> None:
    """As a user does it: a live run, the chat opened with / at 100 columns, then the terminal dragged smaller.
    The choice made at 100 columns does not pin the panels open at 80 (charts 28 columns wide)."""
    from twinkle_tui.process.controller import ProcessController

    from conftest import TOY

    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="live")
    app = TwinkleApp(home=home, grace=5, gpu_probe=lambda: NO_GPU, data_interval=0.0)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.query_one(ChartGrid).charts(), what="live charts", timeout=60)
            for size in ((140, 40), (120, 34), (100, 30)):
                await pilot.resize_terminal(*size)
                await pilot.pause(0.2)
            await pilot.press("slash")  # the chat unfolds at 100 columns
            await pilot.pause(0.2)
            assert not app.has_class("chat-folded")
            await pilot.press("escape")
            for size in ((90, 28), (80, 24)):
                await pilot.resize_terminal(*size)
                await pilot.pause(0.3)
            assert app.has_class("panels-hidden") and not app.query_one("#left").display
            assert app.query_one(ChartGrid).size.width >= 76  # the charts have the width, as at a fresh start
    finally:
        ctl.kill("live")
        launched.supervisor.wait(timeout=30)


async def test_keys_are_remapped_from_the_keymap_file_the_help_names(home: Path) -> None:
    make_run(home, "r", steps=10)
    (home / "keymap.toml").write_text('help = "h"\npauze = "P"\n')
    app = app_for(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "r", what="selection")
        assert any("keymap.toml: unknown binding id 'pauze' (did you mean pause?)" in n.message
                   for n in app._notifications)  # a bad line is named, the good one still applies
        await pilot.press("h")
        await settle(pilot, lambda: isinstance(app.screen, HelpScreen), what="help on the remapped key")
        assert "h" in screen_of(app, HelpScreen).keys_shown
        footer = " ".join(str(w.render()) for w in app.screen.query("Static"))
        assert str(home / "keymap.toml") in footer and 'pause = "P"' in footer
