"""What the monitor looks at for one run: process state, the log tail, recent metrics, the step timing and the
script, read from the run's files. The same snapshot feeds the rules, the LLM review, and the deduplication (a hash
of its content: an unchanged run is not reviewed again)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.process.exits import last_exception_line, launch_output
from twinkle_tui.process.scripts import ScriptError, read_script
from twinkle_tui.runs.store import RunCache

LOG_TAIL_CHARS = 1500
RECENT_POINTS = 400  # per metric, what the rules and the review see


@dataclass
class MetricData:
    name: str
    steps: np.ndarray
    values: np.ndarray

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
    exception: str | None
    metrics: dict[str, MetricData]
    last_step_age: float | None  # seconds since the newest metric line
    median_interval: float | None  # median seconds between steps over the last 50
    script: str | None
    script_version: int
    fix_attempts: int
    launches: int
    events: list[dict[str, Any]] = field(default_factory=list)

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
        payload = {
            "status": self.status.value, "exit": [self.exit_code, self.exit_signal], "step": self.last_step,
            "log": self.log_tail[-500:], "script_version": self.script_version, "launches": self.launches,
            "stalled": bool(self.last_step_age and self.median_interval and self.last_step_age > 10 * self.median_interval),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def for_llm(self, max_points: int = 12) -> str:
        """The snapshot as text for an LLM review (bounded)."""
        lines = [f"run {self.run_id}: {self.status.value}, step {self.last_step}"
                 + (f"/{self.total_steps}" if self.total_steps else "")
                 + (f", exit code {self.exit_code}" if self.exit_code is not None else "")
                 + (f" ({self.exit_signal})" if self.exit_signal else "")
                 + f", launch {self.launches}, fix attempts so far {self.fix_attempts}"]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.last_step_age is not None and self.median_interval:
            lines.append(f"last step {self.last_step_age:.0f}s ago; median step time {self.median_interval:.2f}s")
        for m in list(self.metrics.values())[:10]:
            idx = np.linspace(0, len(m.values) - 1, min(max_points, len(m.values))).astype(int)
            points = ", ".join(f"{int(m.steps[i])}:{m.values[i]:.4g}" for i in idx)
            lines.append(f"metric {m.name} (step:value): {points}")
        lines.append("log tail:\n" + self.log_tail)
        return "\n".join(lines)


def take_snapshot(view: RunCache, now: float | None = None) -> RunSnapshot:
    """A snapshot of a run from its view (refresh the view first)."""
    now = time.time() if now is None else now
    meta = view.meta
    metrics: dict[str, MetricData] = {}
    for name in view.metrics.names():
        steps, values = view.metrics.series[name].snapshot()
        metrics[name] = MetricData(name, steps[-RECENT_POINTS:].copy(), values[-RECENT_POINTS:].copy())
    ts_steps, ts = view.metrics.ts.snapshot()
    age = median = None
    if len(ts):
        age = max(0.0, now - float(ts[-1]))
        if len(ts) >= 3:
            intervals = np.diff(ts[-51:]) / np.maximum(np.diff(ts_steps[-51:]), 1)
            intervals = intervals[intervals > 0]
            median = float(np.median(intervals)) if len(intervals) else None
    lines = launch_output(view.paths.log)
    exception = last_exception_line(lines)
    text = "\n".join(lines)
    start = text.rfind("Traceback (most recent call last)")
    tail = text[start:][-4000:] if exception and start >= 0 else text[-LOG_TAIL_CHARS:]
    script = None
    if view.paths.script.is_file():
        try:
            script = read_script(view.paths.script)  # as Python reads it: in the encoding its coding line declares
        except ScriptError:
            script = None
    return RunSnapshot(
        run_id=view.run_id, status=view.status, claimed=meta.status,
        exit_code=meta.exit_code, exit_signal=meta.exit_signal, error=meta.error,
        last_step=view.last_step, total_steps=view.total_steps, log_tail=tail, exception=exception, metrics=metrics,
        last_step_age=age, median_interval=median, script=script,
        script_version=meta.script_version, fix_attempts=meta.fix_attempts,
        launches=meta.launches, events=[e.data for e in view.events.events[-50:]],
    )
