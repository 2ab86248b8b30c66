"""What the dashboard reads, off the UI thread: file changes under $TWINKLE_HOME (watchfiles) and bounded reads of
the run list and of the runs on screen. The reader only reads and posts messages; the app's handlers own the state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message
from watchfiles import Change, awatch

from twinkle_tui.commands import Session
from twinkle_tui.runs.store import NoSuchRun, RunSummary
from twinkle_tui.ui.messages import FilesChanged, RunsRefreshed
from twinkle_tui.ui.scheduler import RedrawScheduler


class RunFilesFilter:
    """watchfiles filter: changes inside run directories only. The app's own files (.logs, .chat, .views, the
    model cache) live under $TWINKLE_HOME too; a log line about a change must not cause another change."""

    def __init__(self, home: Path) -> None:
        self.prefixes = tuple({str(home) + os.sep, str(home.resolve()) + os.sep})

    def __call__(self, change: Change, path: str) -> bool:
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return not path[len(prefix):].startswith(".")
        return False


class StoreReader:
    """Read requests (the run list, runs by id) are merged; one reader at a time drains them in bounded reads, so
    the UI draws between them and a huge file never freezes the other runs."""

    def __init__(self, session: Session, scheduler: RedrawScheduler, post: Callable[[Message], object],
                 summaries: Callable[[], tuple[RunSummary, ...]]) -> None:
        self.session, self.scheduler, self.post, self.summaries = session, scheduler, post, summaries
        self.lock = threading.Lock()
        self.wanted: tuple[bool, set[str]] = (False, set())
        self.running = False
        self.more = False  # a bounded read left data behind: the next pass goes on with it
        self.stop = threading.Event()
        self.pending_runs: set[str] = set()  # runs whose files changed since the app last looked
        self.list_stale = True

    def request(self, full_list: bool = False, run_ids: set[str] | None = None) -> bool:
        """Add a request; True when the caller must start the reader (none is running)."""
        with self.lock:
            full, ids = self.wanted
            self.wanted = (full or full_list, ids | (run_ids if run_ids is not None else set()))
            if self.running:
                return False
            self.running = True
            return True

    def failed(self) -> None:
        """The reader's worker died: the next request starts a new one."""
        with self.lock:
            self.running = False

    async def watch(self) -> None:
        home = self.session.store.home
        # Batches of up to 0.4 s: a run writing every step would otherwise wake us for every line.
        async for changes in awatch(home, debounce=400, step=200, stop_event=self.stop,
                                    ignore_permission_denied=True, watch_filter=RunFilesFilter(home)):
            paths = [p for _, p in changes]
            self.pending_runs |= self.session.store.run_ids_for_paths(paths)
            if any(p.endswith("meta.json") or Path(p).parent == home for p in paths):
                self.list_stale = True
            self.post(FilesChanged())

    def drain(self, budget: int, passes: int | None = None) -> bool:
        """Drain the requests: the run list (meta.json only) and the new data of the runs on screen. Returns True
        if work is left (only when `passes` ran out)."""
        store = self.session.store
        while True:
            if passes is not None:
                if passes == 0:
                    return True
                passes -= 1
            with self.lock:
                (full, ids), self.wanted = self.wanted, (False, set())
                if not full and not ids and not self.more:
                    self.running = False
                    return False
            summaries = None
            if full:
                with store.lock:
                    summaries = tuple(store.list_runs())
                if [_row(s) for s in summaries] != [_row(s) for s in self.summaries()]:
                    self.scheduler.data("list")
            more = self._read_runs(full, ids, summaries, budget)
            self.post(RunsRefreshed(summaries))
            with self.lock:
                self.more = more
            if self.stop.is_set():
                with self.lock:
                    self.running = False
                return False

    def _read_runs(self, full: bool, ids: set[str], summaries: tuple[RunSummary, ...] | None, budget: int) -> bool:
        store, s = self.session.store, self.session
        wanted = {s.selected, s.settings.compare}
        if s.selected is None:
            newest = (summaries or self.summaries() or (None,))[0]
            if newest is not None:  # the newest run will be selected: read it now
                wanted.add(newest.run_id)
        more = False
        for run_id in wanted - {None}:
            assert run_id is not None
            if not (full or run_id in ids or not ids or self.more):
                continue
            with store.lock:
                try:
                    view = store.view(run_id)
                    first = not view.metrics.generation  # nothing read yet: a run just selected
                    parts = view.refresh(budget)
                except (NoSuchRun, ValueError):
                    continue
            more |= view.pending
            if first and parts:  # a selected run's first data is drawn at once, not at the next data tick
                self.scheduler.now("charts", "status", "log")
            if "metrics" in parts or "events" in parts:
                self.scheduler.data("charts", "status")
            if "meta" in parts:
                self.scheduler.data("status", "list")
            if "log" in parts:
                self.scheduler.data("log")
        return more


def _row(s: RunSummary) -> tuple[Any, ...]:
    """What the run list shows of a run: a change redraws the list."""
    return s.run_id, s.status, s.last_step, s.total_steps, s.meta.display_name
