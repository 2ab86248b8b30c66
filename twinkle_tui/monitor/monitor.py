"""TrainingMonitor: checks runs on a timer and on change, raises findings with evidence, and reviews with an LLM.

A run is checked while it is active and once more when it has just ended. Each check takes a snapshot; an unchanged
snapshot (same hash) is skipped. Rules run first; a finding is raised once and then held back for COOLDOWN_STEPS
steps (per rule), and a run gets at most MAX_FINDINGS, so a bad run is not a wall of alerts. Every finding goes to
the run's events.jsonl ("warning" for warnings, "error" for critical ones: both are chart markers; "finding" for
info), which also tells a restarted monitor what was already said.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from twinkle_trainer.protocol import RunPaths, RunStatus, record_event
from twinkle_tui.monitor.rules import Finding, run_rules
from twinkle_tui.monitor.snapshot import RunSnapshot, take_snapshot
from twinkle_tui.runs.store import NoSuchRun, RunEvent, RunStore

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0
COOLDOWN_STEPS = 100
MAX_FINDINGS = 20
JUST_ENDED = 600.0  # seconds after its end a run found at start-up is still checked once
EVENT_KIND = {"info": "finding", "warning": "warning", "critical": "error"}


@dataclass
class RunState:
    digest: str | None = None
    raised: dict[str, int] = field(default_factory=dict)  # rule -> step it was last raised at
    count: int = 0
    was_active: bool = False
    reviewed: str | None = None  # digest of the last snapshot sent for review


@dataclass(frozen=True)
class Report:
    """What one check found new for one run, and whether it is due for an LLM review (decided by the check)."""

    snapshot: RunSnapshot
    findings: list[Finding]
    review: bool = False

    @property
    def worst(self) -> int:
        return max((f.level for f in self.findings), default=-1)


class TrainingMonitor:
    def __init__(self, home: RunStore | str | os.PathLike[str], interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.time,
                 cooldown_steps: int = COOLDOWN_STEPS, max_findings: int = MAX_FINDINGS) -> None:
        self.store = home if isinstance(home, RunStore) else RunStore(home)  # its own: no lock shared with a UI
        self.interval = interval
        self.clock = clock
        self.cooldown_steps = cooldown_steps
        self.max_findings = max_findings
        self.states: dict[str, RunState] = {}

    def watched(self) -> list[str]:
        """Active runs, runs that ended since we last saw them active, and runs that ended a moment ago."""
        now = self.clock()
        out = []
        for summary in self.store.list_runs():
            state = self.states.get(summary.run_id)
            if summary.status.is_active:
                out.append(summary.run_id)
            elif state is not None and state.was_active:
                out.append(summary.run_id)
            elif state is None and summary.end_time and now - summary.end_time < JUST_ENDED:
                out.append(summary.run_id)
        return out

    def check(self, run_ids: Iterable[str] | None = None, review: bool = False) -> list[Report]:
        """Check runs (by default the watched ones); returns the new findings of each run that has any, marked for
        an LLM review when `review` is on and the report is serious and new. The monitor's memory is only ever
        touched here, on the one thread that checks."""
        reports = []
        for run_id in list(run_ids if run_ids is not None else self.watched()):
            try:
                report = self.check_run(run_id)
            except NoSuchRun:
                self.states.pop(run_id, None)
                continue
            if report is not None and report.findings:
                reports.append(replace(report, review=True) if review and self._needs_review(report) else report)
        return reports

    def check_run(self, run_id: str) -> Report | None:
        view = self.store.view(run_id)
        view.refresh()
        snapshot = take_snapshot(view, self.clock())
        state = self.states.get(run_id)
        if state is None:
            state = self.states[run_id] = self._restore(view.events.events)
        state.was_active = snapshot.alive
        digest = snapshot.digest()
        if digest == state.digest and snapshot.status != RunStatus.RUNNING:
            return None  # nothing new to look at (a live run is still checked: stalls happen without changes)
        state.digest = digest
        if snapshot.status in (RunStatus.STOPPED, RunStatus.KILLED, RunStatus.STOPPING):
            return None  # the user ended it: no finding, no fix
        new = [f for f in run_rules(snapshot) if self._due(state, f)]
        for finding in new:
            self._raise(view.paths, state, finding)
        return Report(snapshot, new)

    def _due(self, state: RunState, finding: Finding) -> bool:
        if state.count >= self.max_findings:
            return False
        last = state.raised.get(finding.rule)
        step = finding.step if finding.step is not None else 0
        if last is not None and step < last + self.cooldown_steps:
            return False
        return True

    def _raise(self, paths: RunPaths, state: RunState, finding: Finding) -> None:
        state.raised[finding.rule] = finding.step if finding.step is not None else 0
        state.count += 1
        try:
            record_event(paths, EVENT_KIND[finding.severity], self.clock, rule=finding.rule,
                         severity=finding.severity, message=finding.summary, evidence=list(finding.evidence),
                         step=finding.step, source="monitor")
        except OSError as exc:
            log.warning("cannot record a finding: %s", exc)
        if state.count == self.max_findings:
            log.info("monitor: %s reached %d findings; quiet from now on", paths, self.max_findings)

    def _restore(self, events: list[RunEvent]) -> RunState:
        """What a monitor before us already raised for this run (from its events), so a restart does not repeat."""
        state = RunState()
        for ev in events:
            rule = ev.data.get("rule")
            if ev.data.get("source") == "monitor" and rule:
                state.raised[rule] = ev.step if ev.step is not None else 0
                state.count += 1
        return state

    def _needs_review(self, report: Report) -> bool:
        """Review a report once per snapshot, when it is serious (a warning or worse, or a failure)."""
        state = self.states[report.snapshot.run_id]
        serious = report.worst >= 1 or report.snapshot.status == RunStatus.FAILED
        if not serious or state.reviewed == report.snapshot.digest():
            return False
        state.reviewed = report.snapshot.digest()
        return True
