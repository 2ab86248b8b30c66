"""What a front end shows of a research, read from its files without a UI: the loop's state, the experiments, the
live metric of the experiments in flight, a proposal waiting for review, and any experiment's diff. Commands go
back through control.json and reviews/ (records.py), so a view works the same for a loop it started and for a
headless one."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import process_is
from twinkle_tui.research.records import Experiment, ResearchDir, list_researches
from twinkle_tui.research.summary import Summary, best_so_far, format_metric, summarize
from twinkle_tui.research.workspace import Workspace, WorkspaceError
from twinkle_tui.runs.store import NoSuchRun, RunStore


@dataclass(frozen=True)
class LiveRun:
    """An experiment in flight and its metric so far."""

    experiment: str
    run_id: str
    description: str
    steps: list[int]
    values: list[float]
    lane: int


@dataclass(frozen=True)
class Snapshot:
    name: str
    state: dict[str, Any]
    control: dict[str, Any]
    summary: Summary
    live: list[LiveRun]
    review: dict[str, Any] | None
    loop_alive: bool
    metric: str
    experiments: int
    read_at: float = field(default_factory=time.time)

    @property
    def status(self) -> str:
        status = str(self.state.get("status") or "?")
        if status in ("running", "paused", "stopping", "starting") and not self.loop_alive:
            return "not running"  # the loop died (or the machine restarted): --resume continues it
        if self.review is not None and status == "running":
            return "waiting for review"
        return status

    @property
    def done(self) -> int:
        return len(self.summary.runs)

    def budget_left(self) -> str:
        left = max(0, self.experiments - self.done)
        durations = [e.duration for e in self.summary.runs if e.duration]
        what = f"{left} experiment{'' if left == 1 else 's'} left"
        if not left or not durations:
            return what
        lanes = int((self.state.get("settings") or {}).get("lanes") or 1)
        seconds = sum(durations) / len(durations) * left / max(1, lanes)
        return f"{what} (~{_duration(seconds)})"

    def header(self) -> str:
        s = self.summary
        settings = self.state.get("settings") or {}
        rate = f"{s.keep_rate:.0%}" if s.keep_rate is not None else "—"
        parts = [f"research {self.name}", self.status, f"{settings.get('proposer', '?')} proposer",
                 f"{settings.get('lanes', 1)} lane(s)", f"{self.done}/{self.experiments} done",
                 f"kept {s.kept} of {s.tried} ({rate})",
                 f"best {self.metric} {format_metric(s.best_metric)} (baseline {format_metric(s.baseline)})"]
        if self.done < self.experiments:  # "0 experiments left" beside "12/12 done" says it twice
            parts.append(self.budget_left())
        return " · ".join(parts)


def read_snapshot(research: ResearchDir, store: RunStore) -> Snapshot:
    state = research.read_state()
    experiments = research.read_experiments()
    summary = summarize(experiments, state.get("goal") == "maximize", state)
    metric = str(state.get("metric") or "metric")
    live = []
    for slot in sorted((state.get("inflight") or {}).values(), key=lambda s: str(s.get("id"))):
        steps: list[int] = []
        values: list[float] = []
        try:
            with store.lock:
                view = store.view(str(slot.get("run_id")))
                view.refresh()
                series = view.metrics.series.get(metric) or view.metrics.series.get("loss")
                if series is not None:
                    xs, ys = series.snapshot()
                    steps, values = xs.tolist(), ys.tolist()
        except (NoSuchRun, ValueError):
            pass
        live.append(LiveRun(str(slot.get("id")), str(slot.get("run_id")), str(slot.get("description") or ""),
                            steps, values, int(slot.get("lane") or 0)))
    pending = research.pending_reviews()
    alive = process_is(state.get("pid"), state.get("pid_start_time"))
    total = int((state.get("settings") or {}).get("experiments") or 0)
    return Snapshot(research.name, state, research.read_control(), summary, live, pending[0] if pending else None,
                    alive, metric, total)


def experiment_diff(research: ResearchDir, experiment: Experiment) -> str:
    """The experiment's change against its parent: the diff of its files, or the knob values it ran with."""
    lines = [f"{experiment.id} · {experiment.status} · {experiment.description}"]
    if experiment.reason:
        lines.append(f"reason: {experiment.reason}")
    if experiment.params:
        lines.append("knobs: " + ", ".join(f"--{k} {v}" for k, v in experiment.params.items()))
    diff = ""
    if experiment.commit and experiment.parent:
        try:
            diff = Workspace(research.workspace).diff(experiment.parent, experiment.commit)
        except WorkspaceError as exc:
            diff = f"(no diff: {exc})"
    if not diff and not experiment.params:
        diff = "(the files are the parent's: no change)" if experiment.commit else "(never committed: not run)"
    return "\n".join(lines) + ("\n\n" + diff if diff else "")


def progress_points(summary: Summary) -> dict[str, list[tuple[float, float]]]:
    """The progress chart's series: kept points, the best-so-far line, discarded points, failed experiments."""
    finite = [e for e in summary.runs if e.metric is not None and math.isfinite(e.metric)
              and e.status in ("keep", "discard")]
    kept = [(float(e.number), float(e.metric or 0)) for e in finite if e.status == "keep"]
    last = max((float(e.number) for e in summary.runs), default=None)
    line = best_so_far(kept, summary.maximize, last)
    discarded = [(float(e.number), float(e.metric or 0)) for e in finite if e.status == "discard"]
    values = [y for _, y in kept + discarded]
    floor = min(values) if values else 0.0
    failed = [(float(e.number), floor) for e in summary.runs if e.status in ("crash", "timeout")]
    return {"kept": kept, "best": line, "discarded": discarded, "failed": failed}


def newest_research(home: Path) -> ResearchDir | None:
    found = list_researches(home)
    return found[0] if found else None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
