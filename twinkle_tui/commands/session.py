"""Session: the UI-free state of one front end (the dashboard, `--ask`, headless, doctor): the run store and the
process controller it acts through, which run is selected, how its charts are set up, and its services.

Commands run over a session through the registry (registry.execute) and a CommandRunner; the session itself only
holds state and resolves run names.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import InvalidRunId, validate_run_id
from twinkle_tui.commands.chart_settings import ChartSettings, ChartSettingsStore
from twinkle_tui.commands.results import CommandError, Reply
from twinkle_tui.commands.services import Services
from twinkle_tui.gpu import GpuSnapshot, ProcessUsage
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.process.servers import ServerManager
from twinkle_tui.runs.store import RunCache, RunStore, RunSummary

log = logging.getLogger(__name__)

FRESH_READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Resources:
    """The newest GPU and process sample a front end has (the agent's get_cluster_info reads it)."""

    gpus: GpuSnapshot
    usage: ProcessUsage | None


class Session:
    """Selection, chart settings and every action, over one $TWINKLE_HOME."""

    def __init__(
        self,
        store: RunStore,
        controller: ProcessController,
        clock: Callable[[], float] = time.time,
        recipe_dirs: list[Path] | None = None,
        resources: Callable[[], Resources] | None = None,
        services: Services | None = None,
    ) -> None:
        self.store = store
        self.controller = controller
        self.clock = clock
        self.recipe_dirs = recipe_dirs or []
        self.views = ChartSettingsStore(store.home)
        self.selected: str | None = None
        self.settings = ChartSettings()
        self._resources = resources
        self.services = services or Services(ServerManager(store.home, controller))

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, grace: float = 30.0,
             clock: Callable[[], float] = time.time, recipe_dirs: list[Path] | None = None,
             resources: Callable[[], Resources] | None = None, store: RunStore | None = None) -> Session:
        """The session every front end starts from (the dashboard, `--ask`, headless, doctor): the run store (the
        one given, already reading: RunStore.prefetch) and the process controller over one $TWINKLE_HOME, and its
        services."""
        store = store or RunStore(home)
        return cls(store, ProcessController(store.home, grace=grace), clock, recipe_dirs, resources)

    def apply(self, reply: Reply) -> None:
        """Apply what a command asks of the view (on the owner thread)."""
        if reply.select and reply.select != self.selected:
            try:
                self.select(reply.select)
            except CommandError as exc:
                log.info("could not select %s: %s", reply.select, exc)

    # ------------------------------------------------------------------ selection and settings
    def select(self, run_id: str) -> None:
        run_id = self.resolve_run(run_id)
        if self.selected is not None and self.selected != run_id:
            self.save_settings()
        self.selected = run_id
        self.settings = self.views.load(run_id)
        if self.settings.compare == run_id:
            self.settings.compare = None

    def clear_selection(self) -> None:
        """The selected run is gone (deleted or archived elsewhere): nothing is selected until the next select."""
        self.selected = None

    def save_settings(self) -> None:
        if self.selected is not None:
            self.views.save(self.selected, self.settings)

    def resolve_run(self, text: str) -> str:
        """A run id from a full id or a unique prefix (then a unique substring); one-line errors otherwise."""
        text = text.strip()
        if not text:
            raise CommandError("no run id given")
        ids = self.store.run_ids()
        if text in ids:
            return text
        for matches in ([i for i in ids if i.startswith(text)], [i for i in ids if text in i]):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(sorted(matches)[:5]) + (" …" if len(matches) > 5 else "")
                raise CommandError(f"{text!r} matches {len(matches)} runs: {shown}; type more of the id")
        try:
            validate_run_id(text)
        except InvalidRunId as exc:
            raise CommandError(str(exc)) from None
        raise CommandError(f"no run {text!r} under {self.store.home}")

    def complete_run(self, prefix: str) -> list[str]:
        """Run ids that start with prefix (for Tab completion)."""
        return sorted(i for i in self.store.run_ids() if i.startswith(prefix))

    def target(self, args: dict[str, Any]) -> str:
        """The run a command acts on: its run_id argument, else the selected run, else the newest run."""
        if args.get("run_id"):
            return self.resolve_run(str(args["run_id"]))
        if self.selected is not None:
            return self.selected
        newest = self.newest_run()
        if newest is None:
            raise CommandError(f"no runs yet under {self.store.home}; start one with /new or n")
        return newest

    def newest_run(self) -> str | None:
        """The newest live run, else the newest run."""
        runs = self.summaries()
        live = [r for r in runs if r.status.is_active]
        pick = live or runs
        return pick[0].run_id if pick else None

    def summaries(self) -> list[RunSummary]:
        with self.store.lock:
            return self.store.list_runs()

    def view(self, run_id: str, fresh: bool = True) -> RunCache:
        """The run's view, with what is new read first (a bounded read: a huge file streams in over several)."""
        with self.store.lock:
            view = self.store.view(run_id)
            if fresh:
                view.refresh(FRESH_READ_BYTES)
            return view

    def resources(self) -> Resources | None:
        return self._resources() if self._resources else None



