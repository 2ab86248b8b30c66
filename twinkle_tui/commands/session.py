"""Session: the UI-free state of one dashboard (or one `--ask`) and the boundary every command passes through.

It owns which run is selected and how its charts are set up, and runs registered commands over the run store and
the process controller. Every failure leaves `execute` as a CommandError with one line of text: a bad run id, a
missing meta.json, an OSError from a launch, a signal that is not permitted. A front end shows that line; it never
sees a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkle_trainer.config import ConfigError
from twinkle_trainer.protocol import InvalidRunId, MetaError, RunStatus
from twinkle_tui.commands.registry import CommandError, Confirmation, Reply, get
from twinkle_tui.commands.view import ChartSettings, ViewStore
from twinkle_tui.gpu import GpuSnapshot, ProcessUsage
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.store import NoSuchRun, RunStore, RunSummary, RunView

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
    ) -> None:
        self.store = store
        self.controller = controller
        self.clock = clock
        self.recipe_dirs = recipe_dirs or []
        self.views = ViewStore(store.home)
        self.selected: str | None = None
        self.settings = ChartSettings()
        self._resources = resources
        self.services: dict[str, Any] = {}  # optional parts a front end adds (agent endpoint, LLM server, monitor)

    # ------------------------------------------------------------------ the command boundary
    def prepare(self, name: str, args: dict[str, Any] | None = None) -> tuple[dict[str, Any], Confirmation | None]:
        """Validate the arguments and say whether the user must confirm; raises CommandError when the command
        cannot run at all (so the user is never asked about something that would fail)."""
        cmd = get(name)
        valid = cmd.validate(args)
        if cmd.confirm is None:
            return valid, None
        return valid, self._guard(name, lambda: cmd.confirm(self, valid) if cmd.confirm else None)

    def execute(self, name: str, args: dict[str, Any] | None = None) -> Reply:
        """Run a command (already confirmed if it needed that); raises only CommandError."""
        cmd = get(name)
        valid = cmd.validate(args)
        reply = self._guard(name, lambda: cmd.handler(self, valid))
        return reply

    def _guard(self, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except CommandError:
            raise
        except (RunControlError, InvalidRunId, MetaError, NoSuchRun, ConfigError) as exc:
            raise CommandError(_one_line(exc)) from None
        except OSError as exc:
            raise CommandError(f"{name}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None
        except Exception as exc:
            log.exception("command %s failed", name)
            raise CommandError(f"{name} failed: {type(exc).__name__}: {_one_line(exc)} (details in the log)") from None

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
            from twinkle_trainer.protocol import validate_run_id

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

    def view(self, run_id: str, fresh: bool = True) -> RunView:
        """The run's view, with what is new read first (a bounded read: a huge file streams in over several)."""
        with self.store.lock:
            view = self.store.view(run_id)
            if fresh:
                view.refresh(FRESH_READ_BYTES)
            return view

    def resources(self) -> Resources | None:
        return self._resources() if self._resources else None

    def status_of(self, run_id: str) -> RunStatus:
        return self.view(run_id, fresh=False).status


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text.splitlines()[0]
