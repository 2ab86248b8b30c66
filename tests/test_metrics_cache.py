"""Reopening a run from the cache of its parsed metrics: only the appended bytes are parsed, the JSONL always wins
(a replaced, shortened or rewritten file, or a damaged cache, means a silent full parse and a fresh cache), and the
cache lives where the dashboard's file watcher does not look."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from watchfiles import Change

from twinkle_tui.runs.metrics import MetricsTable
from twinkle_tui.runs.metrics_cache import CACHE_DIR, MetricsCache
from twinkle_tui.runs.store import RunStore
from twinkle_tui.ui.feed import RunFilesFilter

from run_factory import T0, make_run


class CountingTable(MetricsTable):
    """A MetricsTable that counts the lines it parsed itself (not those it took from the cache)."""

    parsed = 0

    def _ingest(self, lines: list[bytes]) -> bool:
        self.parsed += len(lines)
        return super()._ingest(lines)


def lines(start: int, stop: int, relaunch: bool = False) -> str:
    out = []
    for s in range(start, stop):
        rec: dict[str, object] = {"step": s, "ts": 1.7e9 + s, "loss": 2.0 / (s + 1) + (1.0 if relaunch else 0.0),
                                  "learning rate": 1e-4}
        if s % 50 == 0:
            rec["eval/acc"] = s / 1000  # a sparse series with its own steps
        if s % 70 == 0:
            rec["phase"] = f"p{s}"  # a non-numeric value
        if s % 90 == 0:
            rec["grad_norm"] = float("nan")
        out.append(json.dumps(rec))
    if relaunch:
        out.append("not json at all")
    return "".join(line + "\n" for line in out)


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def same(a: MetricsTable, b: MetricsTable) -> None:
    """Two tables hold the same metrics: every series (NaN equal to NaN), non-numeric values and counters."""
    assert list(a.series) == list(b.series)
    for name in a.series:
        sa, sb = a.series[name], b.series[name]
        assert np.array_equal(sa.steps, sb.steps), name
        assert np.array_equal(sa.values, sb.values, equal_nan=True), name
        assert sa.non_numeric == sb.non_numeric, name
    assert np.array_equal(a.ts.steps, b.ts.steps) and np.array_equal(a.ts.values, b.ts.values)
    assert (a.malformed, a.lines_read, a.last_step(), a.names()) == (b.malformed, b.lines_read, b.last_step(), b.names())


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, MetricsCache]:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(0, 3000) + lines(2000, 2500, relaunch=True))  # a relaunch repeats steps 2000-2499
    return path, MetricsCache(tmp_path / "cache" / "run.metrics")


def fresh(path: Path) -> MetricsTable:
    table = MetricsTable(path)
    table.read_new()
    return table


def test_a_reopened_run_parses_only_what_was_appended(run: tuple[Path, MetricsCache]) -> None:
    path, cache = run
    first = CountingTable(path, cache, cache_min_bytes=0)
    first.read_new()
    assert cache.path.is_file() and first.parsed == 3501
    append(path, lines(3000, 3040))
    again = CountingTable(path, cache, cache_min_bytes=0)
    assert again.read_new()
    assert again.parsed == 40
    same(again, fresh(path))
    # the relaunch's values won for its steps, and the line that was not JSON is still counted
    assert again.series["loss"].values[2100] == pytest.approx(1.0 + 2.0 / 2101)
    assert again.malformed == 1 and again.series["phase"].non_numeric[-1] == (3010, "p3010")
    assert math.isnan(again.series["grad_norm"].values[0])
    # 40 lines are too few to rewrite the cache (it is rewritten as the file grows by a quarter): the next reopen
    # parses them again, and still nothing else
    third = CountingTable(path, cache, cache_min_bytes=0)
    assert third.read_new() and third.parsed == 40
    same(third, again)


def test_a_torn_last_line_is_left_for_the_next_read(run: tuple[Path, MetricsCache]) -> None:
    path, cache = run
    append(path, '{"step": 5000, "loss": 0.')
    MetricsTable(path, cache, cache_min_bytes=0).read_new()
    append(path, '25}\n')
    again = MetricsTable(path, cache, cache_min_bytes=0)
    again.read_new()
    assert again.series["loss"].last() == (5000, 0.25)
    same(again, fresh(path))


@pytest.mark.parametrize("change", ["replaced", "shortened", "rewritten in place", "rewritten at the end"])
def test_the_jsonl_wins_over_a_stale_cache(run: tuple[Path, MetricsCache], change: str) -> None:
    path, cache = run
    MetricsTable(path, cache, cache_min_bytes=0).read_new()
    text = path.read_text()
    if change == "replaced":  # a new file (new inode) with other data
        path.unlink()
        path.write_text(lines(0, 100, relaunch=True))
    elif change == "shortened":
        with open(path, "r+") as f:
            f.truncate(len(text) // 2)
    elif change == "rewritten in place":  # same inode, longer, different from the first byte
        with open(path, "r+") as f:
            f.write(text.replace('"step": 0,', '"step": 7,', 1) + lines(9000, 9010))
    else:  # same inode and start, but the lines before the cached offset changed
        with open(path, "r+") as f:
            f.seek(len(text) - 200)
            f.write(lines(8000, 8010))
    again = CountingTable(path, cache, cache_min_bytes=0)
    again.read_new()
    same(again, fresh(path))
    assert again.parsed == again.lines_read + again.malformed  # everything was parsed again
    rebuilt = CountingTable(path, cache, cache_min_bytes=0)  # and the cache was rebuilt for the new content
    rebuilt.read_new()
    assert rebuilt.parsed == 0
    same(rebuilt, again)


@pytest.mark.parametrize("damage", ["flipped data byte", "flipped header byte", "truncated", "empty", "not a cache",
                                    "a directory"])
def test_a_damaged_cache_is_rebuilt_silently(run: tuple[Path, MetricsCache], damage: str) -> None:
    path, cache = run
    MetricsTable(path, cache, cache_min_bytes=0).read_new()
    raw = bytearray(cache.path.read_bytes())
    if damage == "flipped data byte":
        raw[-20] ^= 0x40
    elif damage == "flipped header byte":
        raw[40] ^= 0x01
    elif damage == "truncated":
        raw = raw[: len(raw) - 1000]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "not a cache":
        raw = bytearray(b'{"step": 1}\n' * 100)
    if damage == "a directory":
        cache.path.unlink()
        cache.path.mkdir()
    else:
        cache.path.write_bytes(bytes(raw))
    again = CountingTable(path, cache, cache_min_bytes=0)
    again.read_new()
    same(again, fresh(path))
    assert again.parsed == 3501
    if damage != "a directory":  # rebuilt: the next open uses it
        third = CountingTable(path, cache, cache_min_bytes=0)
        third.read_new()
        assert third.parsed == 0


def test_a_growing_run_rewrites_its_cache_only_as_it_grows_by_a_quarter(run: tuple[Path, MetricsCache]) -> None:
    path, cache = run
    table = MetricsTable(path, cache, cache_min_bytes=0)
    table.read_new()
    written = cache.path.stat().st_mtime_ns, cache.path.stat().st_ino
    covered = table.cached_offset
    step = 3000
    while path.stat().st_size - covered < covered // 4 - 2000:  # appends that stay under a quarter
        append(path, lines(step, step + 10))
        step += 10
        table.read_new()
        assert (cache.path.stat().st_mtime_ns, cache.path.stat().st_ino) == written
    append(path, lines(step, step + 100))
    table.read_new()
    assert table.cached_offset == path.stat().st_size > covered
    same(table, fresh(path))


def test_small_files_get_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(0, 100))
    cache = MetricsCache(tmp_path / "c.metrics")
    MetricsTable(path, cache).read_new()  # the default threshold: 1 MiB of parsed lines
    assert not cache.path.exists()


def test_an_unwritable_cache_folder_only_means_no_cache(run: tuple[Path, MetricsCache], tmp_path: Path) -> None:
    path, _ = run
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    table = MetricsTable(path, MetricsCache(blocker / "run.metrics"), cache_min_bytes=0)
    table.read_new()
    same(table, fresh(path))


def test_the_store_caches_outside_run_directories_where_the_watcher_does_not_look(home: Path) -> None:
    make_run(home, "big", steps=12_000, metrics=("loss", "grad_norm", "learning rate", "reward", "kl"))
    assert (home / "big" / "metrics.jsonl").stat().st_size > 1024 * 1024
    store = RunStore(home)
    view = store.view("big")
    view.refresh()
    cache = home / CACHE_DIR / "big.metrics"
    assert cache.is_file()
    assert store.run_ids_for_paths([str(cache)]) == set()
    assert not RunFilesFilter(home)(Change.added, str(cache))
    assert sorted(p.name for p in (home / "big").iterdir()) == ["events.jsonl", "meta.json", "metrics.jsonl",
                                                                 "output.log"]
    # a second store (another dashboard, a later start) opens it from the cache
    other = RunStore(home)
    counting = CountingTable(home / "big" / "metrics.jsonl", MetricsCache.for_run(home, "big"))
    counting.read_new()
    assert counting.parsed == 0
    other_view = other.view("big")
    other_view.refresh()
    same(other_view.metrics, view.metrics)


def test_the_store_drops_caches_of_runs_that_are_gone(home: Path) -> None:
    for run_id in ("kept", "deleted", "archived"):
        make_run(home, run_id, steps=12_000)
        RunStore(home).view(run_id).refresh()
    store = RunStore(home)
    store.forget("archived")  # what the archive command does
    for p in (home / "deleted").iterdir():
        p.unlink()
    os.rmdir(home / "deleted")  # removed by hand, while no dashboard was open
    store.list_runs()
    assert sorted(p.name for p in (home / CACHE_DIR).iterdir()) == ["kept.metrics"]


def test_prefetch_reads_the_run_the_dashboard_shows_first(home: Path) -> None:
    make_run(home, "older", start=T0)
    make_run(home, "newest", start=T0 + 100)
    store = RunStore(home)
    store.prefetch().join(timeout=30)
    assert store.view("newest").metrics.last_step() == 200
    assert store.view("older").metrics.last_step() is None  # only the run on screen is read
    other = RunStore(home)
    other.prefetch("older").join(timeout=30)  # --run-id chooses it
    assert other.view("older").metrics.last_step() == 200
    empty = RunStore(home / "nothing-here")
    empty.prefetch().join(timeout=30)
    assert empty.list_runs() == []
