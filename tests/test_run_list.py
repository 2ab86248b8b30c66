"""The run list with many runs, under Pilot: it scrolls with the cursor, a click selects, and `f` filters by name,
model and status (Enter opens the top match, Escape clears); the store's listing stays right as runs come and go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from textual import events

from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.runs.store import RunStore
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.widgets.charts import ChartGrid
from twinkle_tui.ui.widgets.run_list import RunFilter, RunList

from conftest import settle
from run_factory import T0, make_run

MODELS = ("builtin:smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B")
STATUSES = ("completed", "failed", "stopped")


@pytest.fixture
def many(home: Path) -> Path:
    """60 runs: run-00 is the oldest; models and statuses take turns."""
    for i in range(60):
        make_run(home, f"run-{i:02d}", steps=20, status=STATUSES[i % 3], start=T0 + i * 100, log_lines=2,
                 extra_meta={"model_id": MODELS[i % 3]})
    return home


def app_for(home: Path) -> TwinkleApp:
    return TwinkleApp(home=home, watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"),
                      monitor_interval=None)


def title(app: TwinkleApp) -> str:
    return str(app.query_one("#runs-title").render())


def charted(app: TwinkleApp, run_id: str) -> bool:
    view = app.current_view()
    charts = app.query_one(ChartGrid).charts()
    return app.selected == run_id and view is not None and bool(charts) and \
        all(c._last is not None and c._last[0] is view for c in charts)


async def test_the_cursor_scrolls_the_list_and_a_click_selects(many: Path) -> None:
    app = app_for(many)
    async with app.run_test(size=(160, 40)) as pilot:
        runs = app.query_one(RunList)
        await settle(pilot, lambda: len(runs._rows) == 60 and charted(app, "run-59"), what="the newest run")
        assert runs.scroll_y == 0
        await pilot.press("end")
        await settle(pilot, lambda: charted(app, "run-00"), what="the oldest run")
        assert runs.scroll_y > 0 and runs.scroll_y + runs.scrollable_content_region.height >= 2 * 60
        await pilot.press("pageup")
        await settle(pilot, lambda: app.selected not in (None, "run-00") and charted(app, app.selected or ""),
                     what="a page up")
        await pilot.press("home")
        await settle(pilot, lambda: charted(app, "run-59") and runs.scroll_y == 0, what="back at the top")
        await pilot.click(RunList, offset=(5, 2 * 3 + 1))  # the fourth row
        await settle(pilot, lambda: charted(app, "run-56"), what="the clicked run")


async def test_f_filters_by_name_model_and_status_and_enter_opens_the_top_match(many: Path) -> None:
    app = app_for(many)
    async with app.run_test(size=(160, 40)) as pilot:
        runs = app.query_one(RunList)
        await settle(pilot, lambda: charted(app, "run-59"), what="the newest run")
        assert not app.query_one(RunFilter).display  # hidden until asked for
        await pilot.press("f", *"qwen fail")
        qwen_failed = [f"run-{i:02d}" for i in reversed(range(60)) if MODELS[i % 3].startswith("Qwen")
                       and STATUSES[i % 3] == "failed"]
        await settle(pilot, lambda: runs._rows == qwen_failed, what="Qwen runs that failed")
        assert title(app) == f"runs · {len(qwen_failed)} of 60"
        box = app.query_one(RunFilter)  # what was typed shows: one row, no border (the focus border hid it)
        assert box.content_region.height == 1 and box.region.height == 1
        assert "qwen fail" in box.render_line(0).text
        assert app.selected == "run-59"  # typing never changes what the charts show
        await pilot.press("enter")
        await settle(pilot, lambda: charted(app, qwen_failed[0]), what="the top match opened")
        assert app.focused is runs and app.query_one(RunFilter).display  # the filter stays, and says so
        await pilot.press("down")
        await settle(pilot, lambda: charted(app, qwen_failed[1]), what="the next match")
        await pilot.press("f", "escape")
        await settle(pilot, lambda: len(runs._rows) == 60 and title(app) == "runs", what="the whole list again")
        assert app.focused is runs and not app.query_one(RunFilter).display
        assert runs._rows[runs._cursor] == qwen_failed[1]  # the cursor stayed on the selected run


async def test_a_filter_that_matches_nothing_says_so_and_keeps_the_selection(many: Path) -> None:
    app = app_for(many)
    async with app.run_test(size=(160, 40)) as pilot:
        runs = app.query_one(RunList)
        await settle(pilot, lambda: charted(app, "run-59"), what="the newest run")
        await pilot.press("f", *"llama-3.2 running")
        await settle(pilot, lambda: runs._rows == [], what="no match")
        assert [runs.render_line(y).text.strip() for y in range(3)] == ["no run matches", "“llama-3.2 running”", ""]
        await pilot.press("enter", "down")
        assert app.selected == "run-59"
        assert title(app) == "runs · 0 of 60"


def test_the_listing_sees_runs_come_and_go_at_once(home: Path) -> None:
    store = RunStore(home)
    make_run(home, "a")
    assert store.run_ids() == ["a"]
    make_run(home, "b")  # within the same clock tick as the listing: never cached, always seen
    assert sorted(store.run_ids()) == ["a", "b"]
    old = time.time() - 3600
    os.utime(home, (old, old))  # a home last changed an hour ago: its listing is reused
    assert sorted(store.run_ids()) == ["a", "b"]
    (home / "c").mkdir()
    assert sorted(store.run_ids()) == ["a", "b", "c"]
    os.utime(home, (old, old))
    assert sorted(store.run_ids()) == ["a", "b", "c"]
    os.rmdir(home / "c")
    assert sorted(store.run_ids()) == ["a", "b"]


async def test_a_list_scrolled_away_stays_put_while_its_runs_update(many: Path) -> None:
    app = app_for(many)
    async with app.run_test(size=(160, 40)) as pilot:
        runs = app.query_one(RunList)
        await settle(pilot, lambda: charted(app, "run-59"), what="the newest run")
        for _ in range(6):  # the wheel, away from the selected run at the top
            runs.post_message(events.MouseScrollDown(runs, 5, 5, 0, 1, 0, False, False, False))
        await settle(pilot, lambda: runs.scroll_y >= 6, what="the wheel to scroll the list")
        away = runs.scroll_y
        app.scheduler.now("list")  # what the periodic refresh does every few seconds
        app.flush()
        await pilot.pause()
        assert runs.scroll_y == away and app.selected == "run-59"
