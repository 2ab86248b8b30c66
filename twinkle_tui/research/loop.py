"""The research loop: propose -> validate -> (review) -> commit -> run as an ordinary run -> read the metric the
harness logged -> keep or discard -> record -> repeat, with K experiments at once (lanes).

Its state lives on disk (records.py) and is written before each step that cannot be undone, so a loop that is
killed at any point and started again with --resume runs no experiment twice and loses none: an experiment is in
state.json's `inflight` from the moment it is committed until it is recorded; a resumed loop follows the run of each
such experiment (launching it only if it never started) and records it once.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import process_start_time
from twinkle_tui.research.judge import baseline_result, judge
from twinkle_tui.research.lanes import Job, LocalRunner, Outcome, Runner, experiment_meta, lane_env
from twinkle_tui.research.program import Program, knob_args
from twinkle_tui.research.proposal import Context, Proposal, Proposer, ProposerError, normalized_files, validate
from twinkle_tui.research.records import Experiment, ResearchDir
from twinkle_tui.research.summary import Summary, experiment_line, final_line, format_metric, summarize
from twinkle_tui.research.workspace import Workspace, WorkspaceError
from twinkle_tui.runs.store import NoSuchRun, RunStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # proposals refused in a row before the loop pauses
MAX_CRASHES = 3  # crashes in a row before the loop pauses
TICK = 0.2
EXIT_DONE, EXIT_FAILED, EXIT_PAUSED, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass(frozen=True)
class Settings:
    """How the loop runs (flags over the program's front matter); kept in state.json for --resume."""

    experiments: int
    budget: float
    lanes: int
    proposer: str
    review: bool = False
    repeats: int = 1
    cluster: str | None = None
    grace: float = 10.0
    gpus: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ResearchLoop:
    def __init__(self, research: ResearchDir, program: Program, settings: Settings, proposer: Proposer,
                 home: Path, say: Callable[[str], None] = print, runner: Runner | None = None,
                 wait_when_paused: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.research = research
        self.program = program
        self.settings = settings
        self.proposer = proposer
        self.home = home
        self.say = say
        self.runner = runner or LocalRunner()
        self.wait_when_paused = wait_when_paused
        self.clock = clock
        self.workspace = Workspace(research.workspace)
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.state: dict[str, Any] = research.read_state()
        self.experiments: list[Experiment] = research.read_experiments()
        self.proposals: dict[str, Proposal] = {}
        self._stop_reason: str | None = None

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Run until the experiments are done (0), the loop pauses on its own (3) or is stopped."""
        self._write_state(status="running", reason=None, pid=os.getpid(),
                          pid_start_time=process_start_time(os.getpid()), settings=self.settings.to_json())
        # Starting (or --resume) is the user's "go on": a pause of the loop before is lifted.
        self.research.update_control(stop=False, pause=False, auto=False, reason=None)
        self._write_state(crashes=0, auto_paused=False)
        for stale in self.research.pending_reviews():  # proposals a dead loop waited on: never experiments
            self.research.close_review(stale["id"])
        forget = getattr(self.proposer, "forget_others", None)
        if forget is not None:  # Optuna trials asked by a loop that died before they became experiments
            forget({int(s["trial"]) for s in self.state.get("inflight", {}).values() if s.get("trial") is not None})
        for eid in list(self.state.get("inflight", {})):
            self._resume(eid)
        try:
            return self._main()
        finally:
            for thread in list(self.threads.values()):
                thread.join()
            self.runner.close()

    def _main(self) -> int:
        while True:
            self._read_control()
            if self._stop_reason is not None:
                return self._finish_stopped()
            with self.lock:
                done = self._runs_done()
                busy = len(self.state.get("inflight", {}))
            if done >= self.settings.experiments and not busy:
                self._write_state(status="done", reason=f"{done} experiments done")
                self.say(self._final_line())
                return EXIT_DONE
            if self.state.get("status") == "paused":
                if not busy and not self.wait_when_paused and self.state.get("auto_paused"):
                    self.say(f"research {self.research.name}: paused: {self.state.get('reason')}; continue with "
                             f"`twinkle-tui research {self.program.path} --resume`")
                    return EXIT_PAUSED
                self.wake.wait(TICK)
                self.wake.clear()
                continue
            if busy < self.settings.lanes and done + busy < self.settings.experiments:
                if self._start_next():
                    continue
            self.wake.wait(TICK)
            self.wake.clear()

    def request_stop(self, reason: str = "stopped by the user") -> None:
        self._stop_reason = reason
        self.wake.set()

    def _read_control(self) -> None:
        """Take in what a front end asked (control.json): stop, pause, resume. Lanes call it too (a pause of their
        own), hence the lock around reading the status and changing it."""
        control = self.research.read_control()
        if control.get("stop") and self._stop_reason is None:
            self._stop_reason = "stopped from the dashboard"
        paused = bool(control.get("pause"))
        said = None
        with self.lock:
            status = self.state.get("status")
            if paused and status == "running":
                self._write_state(status="paused", reason=control.get("reason") or "paused by the user",
                                  auto_paused=bool(control.get("auto")))
                said = f"research {self.research.name}: paused ({self.state['reason']})"
            elif not paused and status == "paused":
                self._write_state(status="running", reason=None, auto_paused=False, crashes=0)
                said = f"research {self.research.name}: running again"
        if said:
            self.say(said)

    def _pause(self, reason: str) -> None:
        """The loop pauses itself (crashes in a row, proposals refused, the LLM unreachable) and says why."""
        self.research.update_control(pause=True, auto=True, reason=reason)
        self._read_control()

    def _finish_stopped(self) -> int:
        reason = self._stop_reason or "stopped"
        self._write_state(status="stopping", reason=reason)
        with self.lock:
            inflight = list(self.state.get("inflight", {}).values())
        for slot in inflight:
            stop_file = self._job(slot).stop_file
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.write_text(reason)
        for thread in list(self.threads.values()):
            thread.join()
        self._write_state(status="stopped", reason=reason)
        self.research.update_control(stop=False)
        self.say(f"research {self.research.name}: {reason}; {self._runs_done()} experiments recorded "
                 f"(continue with --resume)")
        return EXIT_INTERRUPTED if reason.startswith("interrupted") else EXIT_DONE

    # ------------------------------------------------------------------ proposing
    def _start_next(self) -> bool:
        """Propose, validate, (review,) commit and start one experiment; False if none could be started."""
        with self.lock:
            number = int(self.state.get("next_number") or 1)
            eid = f"e{number:03d}"
            baseline = self._needs_baseline()
        if baseline is None:
            return False  # baseline runs still in flight: their metric comes first
        parent = self.state["best"]["commit"] if self.state.get("best") else self.state["baseline"]["commit"]
        proposal = Proposal(f"baseline{self._repeat_note()}") if baseline else self._propose(eid, number, parent)
        if proposal is None:
            return False
        try:
            files = normalized_files(proposal)
            commit = self.workspace.commit(parent, files, f"{eid}: {proposal.description}")
            self.workspace.tag_experiment(eid, commit)
            stat = self.workspace.diffstat(parent, commit)
        except WorkspaceError as exc:
            self._pause(f"the workspace failed: {exc}")
            return False
        slot = {"id": eid, "number": number, "lane": self._free_lane(), "run_id": f"{self.research.name}-{eid}",
                "commit": commit, "parent": parent, "description": proposal.description, "params": proposal.params,
                "trial": proposal.trial, "baseline": baseline, "proposer": "baseline" if baseline else
                self.proposer.name, "added": stat.added, "removed": stat.removed, "files": list(stat.files),
                "queued": self.clock()}
        with self.lock:
            inflight = dict(self.state.get("inflight", {}))
            inflight[eid] = slot
            self._write_state(inflight=inflight, next_number=number + 1)
        self.proposals[eid] = proposal
        self.say(f"{eid} lane {slot['lane']}: {proposal.description} (+{stat.added} -{stat.removed})")
        self._launch_thread(slot)
        return True

    def _propose(self, eid: str, number: int, parent: str) -> Proposal | None:
        best_files = {p: self.workspace.read(parent, p) or "" for p in self.program.editable}
        prior = sum(1 for e in self.experiments if e.status == "refused" and e.number == number)
        reason = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            context = Context(self.program, eid, attempt, best_files, self._summary())
            try:
                proposal = self._interruptible(functools.partial(self.proposer.propose, context))
            except ProposerError as exc:
                self._pause(f"the {self.proposer.name} proposer failed: {exc}")
                return None
            if proposal is None:
                return None  # stopped while the proposer was thinking
            reason = validate(self.program, proposal, best_files) or ""
            if not reason and self.settings.review:
                verdict = self._review(eid, parent, proposal)
                if verdict is None:
                    return None
                reason = "" if verdict else "rejected by the user in review"
            if not reason:
                return proposal
            prior += 1
            self._record(Experiment(f"{eid}-r{prior}", number, "refused", proposal.description or "(none)",
                                    self.proposer.name, reason=reason, files=sorted(proposal.files),
                                    params=proposal.params, started=self.clock(), ended=self.clock()))
            self.say(f"{eid}: proposal refused: {reason}")
            self.proposer.refused(eid, reason)
            self.proposer.tell(proposal, "refused", None)
        self._pause(f"{MAX_ATTEMPTS} proposals in a row were refused (last: {reason})")
        return None

    def _interruptible(self, propose: Callable[[], Proposal]) -> Proposal | None:
        """Ask the proposer in a thread, so a stop (Ctrl-C, the view's s) does not wait for a slow LLM; None when
        the loop was stopped first (the answer, when it comes, is dropped)."""
        done = threading.Event()
        result: list[Proposal | BaseException] = []

        def ask() -> None:
            try:
                result.append(propose())
            except BaseException as exc:  # handed to the loop's thread below
                result.append(exc)
            finally:
                done.set()
                self.wake.set()

        threading.Thread(target=ask, name="research-proposer", daemon=True).start()
        while not done.wait(TICK):
            self._read_control()
            if self._stop_reason is not None:
                return None
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _review(self, eid: str, parent: str, proposal: Proposal) -> bool | None:
        """Wait for the user's yes or no (a front end answers through reviews/); None if the loop is stopped."""
        try:
            commit = self.workspace.commit(parent, normalized_files(proposal), f"{eid} (proposed)")
            diff = self.workspace.diff(parent, commit)
        except WorkspaceError as exc:
            diff = f"(no diff: {exc})"
        self.research.request_review(eid, {"id": eid, "description": proposal.description, "diff": diff,
                                           "params": proposal.params, "asked": self.clock()})
        self._write_state(review=eid)
        self.say(f"{eid}: waiting for review: {proposal.description}\n{diff.rstrip() or proposal.params}\n"
                 f"approve {eid}? (y/n here, or y/n in the dashboard's research view)")
        try:
            while True:
                answer = self.research.decision(eid)
                if answer is not None:
                    self.say(f"{eid}: {'approved' if answer else 'rejected'}")
                    return answer
                self._read_control()
                if self._stop_reason is not None:
                    return None
                self.wake.wait(TICK)
                self.wake.clear()
        finally:
            self.research.close_review(eid)
            self._write_state(review=None)

    def _needs_baseline(self) -> bool | None:
        """True: run (another) baseline; False: the baseline is measured; None: wait for baseline runs."""
        runs = [e for e in self.experiments if e.baseline and e.is_run]
        inflight = [s for s in self.state.get("inflight", {}).values() if s.get("baseline")]
        finite = [e for e in runs if e.metric is not None and math.isfinite(e.metric)]
        if len(runs) >= self.settings.repeats and finite:
            return False
        if len(runs) + len(inflight) < self.settings.repeats or (not finite and not inflight):
            return True
        return None

    def _baseline_failed(self) -> bool:
        """Every baseline run so far ended without a metric, and none is left running."""
        runs = [e for e in self.experiments if e.baseline and e.is_run]
        running = any(s.get("baseline") for s in self.state.get("inflight", {}).values())
        finite = any(e.metric is not None and math.isfinite(e.metric) for e in runs)
        return not finite and not running and len(runs) >= self.settings.repeats

    def _repeat_note(self) -> str:
        if self.settings.repeats <= 1:
            return ""
        n = sum(1 for e in self.experiments if e.baseline and e.is_run)
        n += sum(1 for s in self.state.get("inflight", {}).values() if s.get("baseline"))
        return f" (repeat {n + 1} of {self.settings.repeats})"

    def _free_lane(self) -> int:
        used = {int(s["lane"]) for s in self.state.get("inflight", {}).values()}
        return next(i for i in range(self.settings.lanes + len(used) + 1) if i not in used)

    # ------------------------------------------------------------------ running
    def _job(self, slot: dict[str, Any]) -> Job:
        params = slot.get("params") or {}
        env = lane_env(int(slot["lane"]), self.settings.lanes, self.settings.gpus)
        return Job(home=str(self.home), run_id=slot["run_id"], checkout=str(self.research.checkout(slot["id"])),
                   target=self.program.target, args=[*self.program.args, *knob_args(params)],
                   budget=self.settings.budget, grace=self.settings.grace,
                   research=experiment_meta(self.research.name, slot["id"]),
                   harness=self.state.get("harness", {}), env=env)

    def _resume(self, eid: str) -> None:
        slot = self.state["inflight"][eid]
        if any(e.id == eid for e in self.experiments):  # recorded before the loop died: only the state lagged
            with self.lock:
                inflight = dict(self.state["inflight"])
                inflight.pop(eid)
                self._write_state(inflight=inflight)
            return
        self.proposals[eid] = Proposal(slot["description"], params=slot.get("params") or {}, trial=slot.get("trial"))
        self.say(f"{eid}: resumed (run {slot['run_id']})")
        self._launch_thread(slot)

    def _launch_thread(self, slot: dict[str, Any]) -> None:
        thread = threading.Thread(target=self._lane, args=(slot,), name=f"research-{slot['id']}", daemon=True)
        self.threads[slot["id"]] = thread
        thread.start()

    def _lane(self, slot: dict[str, Any]) -> None:
        eid = slot["id"]
        try:
            job = self._job(slot)
            if not (self.home / job.run_id).exists():
                self.workspace.export(slot["commit"], Path(job.checkout))
            outcome = self.runner.run(job, self._watcher(slot))
        except Exception as exc:  # an experiment that could not run at all is a crash, never a dead lane
            log.exception("experiment %s failed to run", eid)
            now = self.clock()
            outcome = Outcome(slot["run_id"], "not-run", now, now, error=f"{type(exc).__name__}: {exc}")
        try:
            self._conclude(slot, outcome)
        finally:
            self.threads.pop(eid, None)
            self.wake.set()

    def _watcher(self, slot: dict[str, Any]) -> Callable[[], str | None]:
        """Reads the run's intermediate metric for the proposer's pruning, about once a second."""
        proposal = self.proposals.get(slot["id"]) or Proposal(slot["description"])
        if proposal.trial is None:
            return lambda: None
        store = RunStore(self.home)
        seen: set[int] = set()
        last = [0.0]

        def watch() -> str | None:
            if self.clock() - last[0] < 1.0:
                return None
            last[0] = self.clock()
            try:
                view = store.view(slot["run_id"])
                view.refresh()
            except (NoSuchRun, ValueError):
                return None
            series = view.metrics.series.get(self.program.metric)
            if series is None:
                return None
            steps, values = series.snapshot()
            for step, value in zip(steps.tolist(), values.tolist(), strict=True):
                if step in seen or not math.isfinite(value):
                    continue
                seen.add(step)
                if self.proposer.report(proposal, int(step), float(value)):
                    return f"pruned at step {step} ({self.program.metric} {format_metric(value)} behind the median)"
            return None

        return watch

    # ------------------------------------------------------------------ deciding
    def _conclude(self, slot: dict[str, Any], outcome: Outcome) -> None:
        eid = slot["id"]
        metric = self._read_metric(slot["run_id"]) if outcome.status != "not-run" else None
        with self.lock:
            status, reason = self._judge(slot, outcome, metric)
            best_before = (self.state.get("best") or {}).get("metric")
            if status == "keep":
                if slot.get("baseline"):
                    pass  # the baseline's best is set once all its repeats are in (_baseline_done)
                else:
                    self.workspace.advance(slot["commit"])
                    self._write_state(best={"experiment": eid, "commit": slot["commit"], "metric": metric})
            experiment = Experiment(
                eid, int(slot["number"]), status, slot["description"], slot.get("proposer") or self.proposer.name,
                lane=int(slot["lane"]), run_id=slot["run_id"], commit=slot["commit"], parent=slot["parent"],
                metric=metric, best_before=best_before, started=outcome.started, ended=outcome.ended,
                duration=round(outcome.ended - outcome.started, 3), steps=outcome.steps,
                peak_memory_gb=round(outcome.peak_memory_gb, 3), added=int(slot.get("added") or 0),
                removed=int(slot.get("removed") or 0), files=list(slot.get("files") or []),
                params=slot.get("params") or {}, reason=reason, node=outcome.node, baseline=bool(slot.get("baseline")))
            self._record(experiment)
            if slot.get("baseline"):
                self._baseline_done()
            inflight = dict(self.state.get("inflight", {}))
            inflight.pop(eid, None)
            crashes = int(self.state.get("crashes") or 0) + 1 if status == "crash" else 0
            self._write_state(inflight=inflight, crashes=crashes)
        proposal = self.proposals.pop(eid, None)
        if proposal is not None and not slot.get("baseline"):
            pruned = bool(outcome.stopped and outcome.stopped.startswith("pruned"))
            self.proposer.tell(proposal, "pruned" if pruned else status, metric)
        shutil.rmtree(self.research.checkout(eid), ignore_errors=True)
        Path(self._job(slot).stop_file).unlink(missing_ok=True)
        self.say(self._line(experiment))
        if crashes >= MAX_CRASHES:
            last = [e for e in self.experiments if e.is_run][-MAX_CRASHES:]
            why = "; ".join(f"{e.id}: {e.reason}" for e in last)
            self._pause(f"{MAX_CRASHES} crashes in a row ({why})")
        elif slot.get("baseline") and status != "keep" and self._baseline_failed():
            self._pause(f"the baseline gave no {self.program.metric}: {reason}; fix the program, then resume")

    def _judge(self, slot: dict[str, Any], outcome: Outcome, metric: float | None) -> tuple[str, str | None]:
        best = (self.state.get("best") or {}).get("metric")
        return judge(self.program, outcome, metric, baseline=bool(slot.get("baseline")),
                     baseline_kept=any(e.baseline and e.status == "keep" for e in self.experiments),
                     best=None if best is None else float(best), budget=self.settings.budget,
                     noise=float((self.state.get("baseline") or {}).get("noise") or 0.0))

    def _baseline_done(self) -> None:
        runs = [e for e in self.experiments if e.baseline and e.is_run]
        measured = baseline_result(runs, self.settings.repeats)
        if measured is None:
            return
        mean, noise, first = measured
        baseline = {**self.state["baseline"], "metric": mean, "noise": noise, "runs": [e.id for e in runs]}
        self._write_state(baseline=baseline, best={"experiment": first.id, "commit": first.commit, "metric": mean})
        if noise:
            self.say(f"baseline {self.program.metric} {format_metric(mean)} ± {format_metric(noise)} "
                     f"over {len(runs)} runs: an improvement must beat the noise")

    def _read_metric(self, run_id: str) -> float | None:
        """The metric as the harness logged it: the last value of its series in the run's metrics."""
        try:
            view = RunStore(self.home).view(run_id)
            view.refresh()
        except (NoSuchRun, ValueError):
            return None
        series = view.metrics.series.get(self.program.metric)
        last = series.last() if series is not None else None
        return float(last[1]) if last is not None else None

    # ------------------------------------------------------------------ records and state
    def _record(self, experiment: Experiment) -> None:
        with self.lock:
            self.research.record(experiment)
            self.experiments.append(experiment)

    def _write_state(self, **changes: Any) -> None:
        with self.lock:
            self.state.update(changes)
            self.state["updated"] = self.clock()
            self.research.write_state(self.state)

    def _runs_done(self) -> int:
        return sum(1 for e in self.experiments if e.is_run)

    def _summary(self) -> Summary:
        with self.lock:
            return summarize(self.experiments, self.program.maximize, self.state)

    def _line(self, e: Experiment) -> str:
        return experiment_line(e, self._summary(), self.program.metric, self.settings.experiments)

    def _final_line(self) -> str:
        return final_line(self.research.name, self._summary(), self.program.metric)
