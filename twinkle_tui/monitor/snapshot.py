"""What the monitor looks at for one run: process state, why it failed (the log reader's root cause), its metrics
(each a window of recent points with a summary of the whole run), the step timing with paused time taken out, and
the script, read from the run's files. The same snapshot feeds the rules, the LLM review (`for_llm`) and the
deduplication (a hash of its content: an unchanged run is not reviewed again)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.monitor.history import RunHistory, SeriesSummary, history_for
from twinkle_tui.process.exits import launch_output
from twinkle_tui.process.scripts import ScriptError, read_script
from twinkle_tui.runs.log_reader import LogReading, read_failure, strip_prefix
from twinkle_tui.runs.store import RunCache, RunEvent

LOG_TAIL_CHARS = 1500
EXCERPT_CHARS = 3000  # the root-cause excerpt a review gets
CLOCK_RESTARTS = ("launch", "adopt")  # events after which the stall clock starts again
STARTUP_FLOOR = 120.0  # seconds a relaunched run may take to its first step before that counts as a stall


@dataclass
class MetricData:
    """One metric as the rules see it: a window of its latest points (the whole series when it is short, and
    every point not scanned before) and a summary of all of it."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    summary: SeriesSummary = field(default_factory=SeriesSummary)
    total: int = 0  # points in the whole series when the snapshot was taken

    @property
    def finite(self) -> np.ndarray:
        return np.asarray(np.isfinite(self.values))


@dataclass
class RunSnapshot:
    run_id: str
    status: RunStatus
    claimed: RunStatus  # what meta.json says (a dead run may still claim "running")
    exit_code: int | None
    exit_signal: str | None
    error: str | None
    last_step: int
    total_steps: int | None
    log_tail: str
    exception: str | None  # the root cause's line, when the log has a traceback
    metrics: dict[str, MetricData]
    last_step_age: float | None  # seconds since the newest metric line
    median_interval: float | None  # median seconds between steps over the last 50
    script: str | None
    script_version: int
    fix_attempts: int
    launches: int
    events: list[dict[str, Any]] = field(default_factory=list)
    reading: LogReading | None = None  # why a failed launch failed (None while it runs)
    active_age: float | None = None  # like last_step_age, without time spent paused, stopping or starting
    relaunched: bool = False  # launched again since its last step and not stepped yet
    startup: float | None = None  # seconds its first launch took to its first step
    metrics_source: str = "metrics.jsonl"  # or "output.log" (console dicts of a script without our callback)
    history: RunHistory | None = field(default=None, repr=False, compare=False)

    @property
    def alive(self) -> bool:
        return self.status.is_active

    def find(self, *names: str) -> MetricData | None:
        """The first metric whose name is one of names (exactly, then by its last path part)."""
        for name in names:
            if name in self.metrics:
                return self.metrics[name]
        leaves = {key.rsplit("/", 1)[-1]: m for key, m in self.metrics.items()}
        for name in names:
            if name in leaves:
                return leaves[name]
        return None

    def loss_like(self) -> list[MetricData]:
        return [m for name, m in self.metrics.items() if "loss" in name.lower()]

    def digest(self) -> str:
        """A hash of what a review would see: the same snapshot is never reviewed twice."""
        age = self.active_age if self.active_age is not None else self.last_step_age
        payload = {
            "status": self.status.value, "exit": [self.exit_code, self.exit_signal], "step": self.last_step,
            "log": self.log_tail[-500:], "script_version": self.script_version, "launches": self.launches,
            "stalled": bool(age and self.median_interval and age > 10 * self.median_interval),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def for_llm(self, max_points: int = 12) -> str:
        """The snapshot as text for an LLM review (bounded): the state, why it failed (the root-cause excerpt:
        prefix-stripped, one copy of an error several ranks raised, with the lines that explain it), each metric's
        whole-run summary and recent points, and the end of the log only when there is no root cause."""
        lines = [f"run {self.run_id}: {self.status.value}, step {self.last_step}"
                 + (f"/{self.total_steps}" if self.total_steps else "")
                 + (f", exit code {self.exit_code}" if self.exit_code is not None else "")
                 + (f" ({self.exit_signal})" if self.exit_signal else "")
                 + f", launch {self.launches}, fix attempts so far {self.fix_attempts}"]
        if self.error:
            lines.append(f"error: {self.error}")
        age = self.active_age if self.active_age is not None else self.last_step_age
        if age is not None and self.median_interval:
            lines.append(f"last step {age:.0f}s ago (running time); median step time {self.median_interval:.2f}s")
        if self.metrics_source != "metrics.jsonl":
            lines.append(f"metrics read from {self.metrics_source} (the script writes no metrics.jsonl)")
        for m in list(self.metrics.values())[:10]:
            lines.append(_describe_metric(m, max_points))
        reading = self.reading
        if reading is not None and (reading.root is not None or reading.fatal_line or reading.signal):
            lines.append("why it failed (from its log; prefixes stripped, repeated ranks folded):\n"
                         + reading.excerpt(EXCERPT_CHARS))
        else:
            lines.append("log tail:\n" + self.log_tail)
        return "\n".join(lines)


def _describe_metric(m: MetricData, max_points: int) -> str:
    s = m.summary
    parts = [f"metric {m.name}"]
    if s.count:
        parts.append(f"({s.count} points, steps {s.first_step}-{s.last_step}")
        if s.early is not None:
            parts.append(f"early level {s.early:.4g}")
        if s.best is not None:
            parts.append(f"lowest level {s.best:.4g} at step {s.best_step}")
        if s.first_bad is not None:
            parts.append(f"first NaN/Inf at step {s.first_bad[0]}")
        parts[-1] += ")"
    idx: list[int] = []
    if len(m.values):
        idx = np.linspace(0, len(m.values) - 1, min(max_points, len(m.values))).astype(int).tolist()
    points = ", ".join(f"{int(m.steps[i])}:{m.values[i]:.4g}" for i in idx)
    return ", ".join(parts) + f"; recent (step:value): {points}"


def stall_clock(events: list[RunEvent], last_ts: float | None, now: float) -> tuple[float | None, bool]:
    """Seconds of running time since the last step (or since a relaunch without a step yet): time spent paused,
    stopping or starting is not stall time. Also whether the run was launched again after its last step."""
    if last_ts is None:
        return None, False
    start, paused, paused_since, relaunched = last_ts, 0.0, None, False
    for ev in _events_after(events, last_ts):
        if ev.kind in CLOCK_RESTARTS or ev.kind == "resume" and ev.data.get("relaunch"):
            start, paused, paused_since, relaunched = ev.ts, 0.0, None, True
        elif ev.kind == "pause" and paused_since is None:
            paused_since = ev.ts
        elif ev.kind == "resume" and paused_since is not None:
            paused += ev.ts - paused_since
            paused_since = None
    if paused_since is not None:
        paused += now - paused_since
    return max(0.0, now - start - paused), relaunched


def _events_after(events: list[RunEvent], ts: float) -> list[RunEvent]:
    """The events newer than ts, read from the end (a check reads only what is recent)."""
    i = len(events)
    while i > 0 and events[i - 1].ts >= ts:
        i -= 1
    return events[i:]


def _startup_seconds(events: list[RunEvent], first_ts: float | None) -> float | None:
    if first_ts is None:
        return None
    for ev in events[:20]:
        if ev.kind == "launch":
            return max(0.0, first_ts - ev.ts)
    return None


def take_snapshot(view: RunCache, now: float | None = None) -> RunSnapshot:
    """A snapshot of a run from its view (refresh the view first). Metrics are folded into the view's history, so
    the next snapshot of the same view reads only what is new."""
    now = time.time() if now is None else now
    meta = view.meta
    history = history_for(view)
    with history.lock:
        history.read_log(view.log)
        source = {name: view.metrics.series[name] for name in view.metrics.names()}
        metrics_source = "metrics.jsonl"
        if not source and history.console.series:
            source, metrics_source = dict(history.console.series), "output.log"
        states = history.sync(source)
        metrics: dict[str, MetricData] = {}
        for name, state in states.items():
            steps, values = history.window(state)
            metrics[name] = MetricData(name, steps, values, state.summary(), state.n)
    ts_steps, ts = view.metrics.ts.snapshot()
    age = median = None
    if len(ts):
        age = max(0.0, now - float(ts[-1]))
        if len(ts) >= 3:
            intervals = np.diff(ts[-51:]) / np.maximum(np.diff(ts_steps[-51:]), 1)
            intervals = intervals[intervals > 0]
            median = float(np.median(intervals)) if len(intervals) else None
    events = view.events.events
    active, relaunched = stall_clock(events, float(ts[-1]) if len(ts) else None, now)
    status = view.status
    lines = launch_output(view.paths.log)
    reading = None
    if status == RunStatus.FAILED:
        reading = read_failure(lines, meta.exit_code, meta.exit_signal)
    tail = "\n".join(strip_prefix(line).text for line in lines)[-LOG_TAIL_CHARS:]
    script = None
    if view.paths.script.is_file():
        try:
            script = read_script(view.paths.script)  # as Python reads it: in the encoding its coding line declares
        except ScriptError:
            script = None
    return RunSnapshot(
        run_id=view.run_id, status=status, claimed=meta.status,
        exit_code=meta.exit_code, exit_signal=meta.exit_signal, error=meta.error,
        last_step=view.last_step, total_steps=view.total_steps, log_tail=tail,
        exception=reading.error_line() if reading is not None and reading.root is not None else None,
        metrics=metrics, last_step_age=age, median_interval=median, script=script,
        script_version=meta.script_version, fix_attempts=meta.fix_attempts,
        launches=meta.launches, events=[e.data for e in events[-50:]], reading=reading,
        active_age=active, relaunched=relaunched, startup=_startup_seconds(events, float(ts[0]) if len(ts) else None),
        metrics_source=metrics_source, history=history,
    )
