"""Snapshot tests of the main screens (pytest-textual-snapshot). Deterministic: fixed clock, fixed probes,
fixed run data. Regenerate after an intended UI change with `pytest tests/test_snapshots.py --snapshot-update`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from twinkle_trainer.protocol import process_start_time
from twinkle_tui.gpu import GpuSnapshot, ProcessUsage
from twinkle_tui.ui.app import TwinkleApp

from conftest import quiescent
from run_factory import T0, make_run

NOW = T0 + 3600
USAGE = ProcessUsage(cpu_percent=187.0, rss=612 * 2**20, threads=9, processes=2)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def runs_home(home: Path, sleeper: subprocess.Popen) -> Path:
    make_run(home, "sft-smollm2-a", steps=400, status="running", start=T0 + 600, pid=sleeper.pid,
             pid_start_time=process_start_time(sleeper.pid), checkpoints=(100, 200, 300), nan_at=(333,),
             metrics=("loss", "grad_norm", "learning rate", "tokens/s"))
    make_run(home, "grpo-arith-b", steps=120, status="failed", start=T0,
             metrics=("reward", "kl", "loss"), extra_meta={"error": "RuntimeError: CUDA out of memory"})
    make_run(home, "sft-old", steps=500, status="completed", start=T0 - 86400)
    return home


def make_app(home: Path, run_id: str | None = "sft-smollm2-a") -> TwinkleApp:
    return TwinkleApp(home=home, run_id=run_id, clock=lambda: NOW, watch=False, data_interval=0.0,
                      gpu_probe=lambda: GpuSnapshot(error="no GPU detected"), usage_probe=lambda pid, gpus=None: USAGE)


async def _settle(pilot) -> None:
    """Until everything is read and drawn (no fixed pauses: the app says when it is quiescent)."""
    app = pilot.app
    for _ in range(400):
        view = app.current_view()
        if view is not None and quiescent(app) and (app.chart_grid.charts() or not view.metrics.names()):
            break
        await pilot.pause(0.02)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def test_main_screen(snap_compare, runs_home: Path) -> None:
    assert snap_compare(make_app(runs_home), terminal_size=(160, 48), run_before=_settle)


def test_main_screen_small_terminal(snap_compare, runs_home: Path) -> None:
    assert snap_compare(make_app(runs_home), terminal_size=(100, 30), run_before=_settle)


def test_failed_run_with_error(snap_compare, runs_home: Path) -> None:
    assert snap_compare(make_app(runs_home, "grpo-arith-b"), terminal_size=(160, 48), run_before=_settle)


def test_metric_picker(snap_compare, runs_home: Path) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("m")
        await pilot.pause(0.1)
        from textual.widgets import Input

        pilot.app.screen.query_one(Input).cursor_blink = False  # a blinking cursor makes the picture timing-dependent
        await pilot.pause(0.3)

    assert snap_compare(make_app(runs_home), terminal_size=(160, 48), run_before=run_before)


def test_help_screen(snap_compare, runs_home: Path) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(make_app(runs_home), terminal_size=(160, 48), run_before=run_before)


def test_stop_confirmation(snap_compare, runs_home: Path) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("s")
        await pilot.pause(0.3)

    assert snap_compare(make_app(runs_home), terminal_size=(160, 48), run_before=run_before)


def test_narrow_terminal_folds_the_side_panels(snap_compare, runs_home: Path) -> None:
    assert snap_compare(make_app(runs_home), terminal_size=(60, 20), run_before=_settle)


def test_medium_terminal_folds_the_chat(snap_compare, runs_home: Path) -> None:
    assert snap_compare(make_app(runs_home), terminal_size=(110, 32), run_before=_settle)


def test_chat_with_a_restored_conversation(snap_compare, runs_home: Path) -> None:
    from twinkle_tui.agent import History

    history = History(runs_home / ".chat" / "history.jsonl")
    history.add({"role": "user", "content": "how is the sft run going?"})
    history.add({"role": "assistant", "content": "The **loss** fell from 2.8 to 0.36 over 400 steps; one NaN at "
                                                 "step 333 (see the red x). `sft-smollm2-a` is still learning."})

    async def run_before(pilot) -> None:
        await _settle(pilot)
        for _ in range(100):
            if len(pilot.app.chat.messages_view.children) >= 4:
                break
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(make_app(runs_home), terminal_size=(160, 48), run_before=run_before)


def test_new_run_picker(snap_compare, runs_home: Path) -> None:
    from conftest import EXAMPLES

    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("n")
        await pilot.pause(0.1)
        from textual.widgets import Input

        pilot.app.screen.query_one(Input).cursor_blink = False  # the path field has the focus: no blink timing
        await pilot.pause(0.3)

    app = make_app(runs_home)
    app.recipe_dirs = [EXAMPLES]
    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)
