"""The research view under Textual's Pilot and in a snapshot: what it shows of a research's files, its keys (which go
through the command layer to the loop's control files), and /research starting a real detached loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from twinkle_trainer.protocol import process_start_time
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.research.records import ResearchDir
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.screens.research import ResearchScreen

from conftest import quiescent, screen_of, settle
from research_factory import T0, make_research, records, state, write_program
from run_factory import make_run


def make_app(home: Path) -> TwinkleApp:
    return TwinkleApp(home=home, clock=lambda: T0 + 600, watch=False, data_interval=0.0, monitor_interval=None,
                      gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))


def screen_text(app: TwinkleApp) -> str:
    screen = screen_of(app, ResearchScreen)
    parts = [str(w.content) for w in screen.query(Static)] + [screen.diff_text]
    table = screen.query_one("#leaderboard", DataTable)
    for row in range(table.row_count):
        parts.append(" ".join(str(c) for c in table.get_row_at(row)))
    return "\n".join(parts)


async def open_view(pilot, app: TwinkleApp) -> None:
    await settle(pilot, lambda: quiescent(app), what="the dashboard")
    await pilot.press("R")
    await settle(pilot, lambda: isinstance(app.screen, ResearchScreen) and screen_of(app, ResearchScreen).snapshot is not None
                 and bool(screen_of(app, ResearchScreen).diff_text),
                 what="the research view")


async def test_the_view_shows_the_leaderboard_progress_and_the_selected_diff(home: Path, tmp_path: Path) -> None:
    make_research(home, tmp_path)
    app = make_app(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await open_view(pilot, app)
        keys = app.screen.active_bindings  # the dashboard's keys are off here: `r` resumed a run nobody could see
        assert not {"r", "z", "k", "d", "slash", "m"} & set(keys) and keys["p"].binding.action == "pause"
        text = screen_text(app)
        assert "research toy" in text and "5/10 done" not in text and "6/10 done" in text
        assert "kept 2 of 5 (40%)" in text and "best score 0.29 (baseline 9.25)" in text
        assert "not running" in text and "--resume" in text  # state says running, but no loop process is there
        table = app.screen.query_one("#leaderboard", DataTable)
        order = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert order == ["e004", "e002", "e006", "e001", "e003", "e005"]  # best first, the crash last
        diff = screen_of(app, ResearchScreen).diff_text
        assert "+X = 2.8" in diff and "-X = 2.5" in diff  # e004 against its parent e002
        await pilot.press("down", "down", "down", "down")  # e003, the discarded regression
        await settle(pilot, lambda: "+X = -2.0" in screen_of(app, ResearchScreen).diff_text, what="e003's diff")
        await pilot.press("escape")
        assert not isinstance(app.screen, ResearchScreen)


async def test_keys_pause_approve_and_stop_through_the_command_layer(home: Path, tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        make_research(home, tmp_path, pid=sleeper.pid, pid_start_time=process_start_time(sleeper.pid), review=True)
        research = ResearchDir.of("toy", home)
        app = make_app(home)
        async with app.run_test(size=(160, 48)) as pilot:
            await open_view(pilot, app)
            assert "waiting for review" in screen_text(app) and "+X = 3.0" in screen_text(app)
            await pilot.press("p")
            await settle(pilot, lambda: research.read_control().get("pause") is True, what="pause asked")
            await pilot.press("y")
            await settle(pilot, lambda: research.decision("e008") is True, what="the approval")
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the stop question")
            await pilot.press("n")
            await pilot.pause(0.2)
            assert not research.read_control().get("stop")
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the stop question")
            await pilot.press("y")
            await settle(pilot, lambda: research.read_control().get("stop") is True, what="stop asked")
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_slash_research_asks_then_starts_a_loop_that_outlives_the_view(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n")
    app = make_app(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: quiescent(app), what="the dashboard")
        await pilot.press("slash")
        await pilot.press(*f"/research {program} --proposer optuna --experiments 3", "enter")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "Start research toy?" in str(app.screen.query_one(".dialog-title", Static).render())
        await pilot.press("y")
        await settle(pilot, lambda: isinstance(app.screen, ResearchScreen), timeout=60, what="the research view")
        await settle(pilot, lambda: screen_of(app, ResearchScreen).snapshot is not None and screen_of(app, ResearchScreen).snapshot.status == "done",
                     timeout=180, what="the loop to finish")
        assert "3/3 done" in screen_text(app)
    assert [r["id"] for r in records(home)] == ["e001", "e002", "e003"]
    assert state(home)["status"] == "done"


async def test_live_experiments_are_charted(home: Path, tmp_path: Path) -> None:
    make_run(home, "toy-e007", steps=30, status="running", metrics=("score", "loss"))
    make_research(home, tmp_path, inflight_run="toy-e007")
    app = make_app(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await open_view(pilot, app)
        snap = screen_of(app, ResearchScreen).snapshot
        assert snap is not None and [live.experiment for live in snap.live] == ["e007"]
        assert len(snap.live[0].steps) == 30


def test_the_research_view(snap_compare, home: Path, tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        make_run(home, "toy-e007", steps=30, status="running", metrics=("score", "loss"))
        make_research(home, tmp_path, pid=sleeper.pid, pid_start_time=process_start_time(sleeper.pid),
                      inflight_run="toy-e007")
        (home / "research" / "toy" / "state.json").write_text(
            json.dumps({**state(home), "program": "examples/research/PROGRAM.md"}))

        async def run_before(pilot) -> None:
            await open_view(pilot, pilot.app)
            await pilot.pause(0.3)

        assert snap_compare(make_app(home), terminal_size=(160, 48), run_before=run_before)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(("line", "said"), [("/research", "usage: /research PROGRAM.md"),
                                             ("/research x.md --lanes two", "--lanes takes a number")])
async def test_bad_slash_research_is_one_line(home: Path, line: str, said: str) -> None:
    from twinkle_tui.ui.widgets.chat import ChatMessage

    app = make_app(home)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: quiescent(app), what="the dashboard")
        await pilot.press("slash")
        await pilot.press(*line, "enter")
        await settle(pilot, lambda: any(said in str(m._markdown) for m in app.query(ChatMessage)), what=said)
        assert not isinstance(app.screen, ResearchScreen)


async def test_the_agents_start_research_asks_first(home: Path, tmp_path: Path) -> None:
    from twinkle_tui.agent import LLMSettings

    from fake_llm import FakeLLM, call, text

    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n")
    script = [call("start_research", {"program": str(program), "proposer": "optuna", "experiments": 2}),
              text("The research is running; its view is open.")]
    with FakeLLM(script).running() as fake:
        llm = LLMSettings(base_url=fake.url, model=fake.model, api_key="k", mode="auto")
        app = TwinkleApp(home=home, llm=llm, watch=False, data_interval=0.0, monitor_interval=None,
                         gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await pilot.press("slash")
            await pilot.press(*"tune x with optuna please", "enter")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert not (home / "research" / "toy").exists()  # nothing runs before the yes
            await pilot.press("y")
            await settle(pilot, lambda: isinstance(app.screen, ResearchScreen), timeout=60, what="the view")
            await settle(pilot, lambda: screen_of(app, ResearchScreen).snapshot is not None and screen_of(app, ResearchScreen).snapshot.status == "done",
                         timeout=180, what="the loop to finish")
        assert "research **toy** started" in json.dumps(fake.requests[-1]["messages"])
    assert [r["id"] for r in records(home)] == ["e001", "e002"]


def test_the_header_counts_what_is_left_until_nothing_is(home: Path, tmp_path: Path) -> None:
    from twinkle_tui.research.watch import read_snapshot
    from twinkle_tui.runs.store import RunStore

    make_research(home, tmp_path)  # 6 of 10 experiments done, 4 s each, one lane
    research = ResearchDir.of("toy", home)
    header = read_snapshot(research, RunStore(home)).header()
    assert "6/10 done" in header and header.endswith("4 experiments left (~16 s)")
    state = research.read_state()
    research.write_state({**state, "settings": {**state["settings"], "experiments": 6}})
    header = read_snapshot(research, RunStore(home)).header()
    assert "6/6 done" in header and "left" not in header  # "0 experiments left" would say it twice
