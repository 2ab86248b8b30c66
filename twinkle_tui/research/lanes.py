"""Running one experiment as an ordinary run: launched through the ProcessController (so it is in the run list,
watched by the monitor, pausable like any run), followed until it ends, stopped (then killed by its supervisor
after the grace period) when its time is up or the loop asks, with its peak memory sampled on the way.

`execute` is the same code for a local lane (a thread of the loop) and for a Ray task on another node.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twinkle_trainer.protocol import MetaError, RunKind, RunMeta, RunStatus, read_meta
from twinkle_tui.process.controller import CONFIG_SUFFIXES, Launched, ProcessController, RunControlError
from twinkle_tui.research.program import file_hash
from twinkle_tui.runs.store import NoSuchRun, effective_status

META_FIELD = "research"  # the one meta.json field that marks a run as a research experiment


def experiment_meta(name: str, experiment: str, node: str | None = None) -> dict[str, Any]:
    """What a research experiment's run carries in meta.json (one place, so it can become a typed run kind): the
    research, the experiment, and on a Ray cluster the node that runs it."""
    mark: dict[str, Any] = {"name": name, "experiment": experiment}
    if node is not None:
        mark["node"] = node
    return {META_FIELD: mark}


@dataclass(frozen=True)
class Job:
    """Everything a node needs to run one experiment (plain data: it travels to Ray workers)."""

    home: str
    run_id: str
    checkout: str
    target: str
    args: list[str]
    budget: float
    grace: float
    research: dict[str, Any]
    harness: dict[str, str]  # relative path -> sha256 it must keep
    env: dict[str, str] = field(default_factory=dict)
    poll: float = 0.25

    @property
    def stop_file(self) -> Path:
        """Written by the loop to stop the run early (pruned, or the user stopped the research)."""
        return Path(self.checkout).parent / f".{Path(self.checkout).name}.stop"


@dataclass
class Outcome:
    """How the run of an experiment ended."""

    run_id: str
    status: str  # the run's final status (completed, failed, stopped, killed), or "not-run"
    started: float
    ended: float
    timed_out: bool = False
    stopped: str | None = None  # why the loop stopped it early
    error: str | None = None
    steps: int = 0
    peak_rss: int = 0
    peak_gpu: int = 0
    harness_changed: list[str] = field(default_factory=list)
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def peak_memory_gb(self) -> float:
        return max(self.peak_rss, self.peak_gpu) / 2**30


def changed_harness(job: Job) -> list[str]:
    return sorted(p for p, digest in job.harness.items() if file_hash(Path(job.checkout) / p) != digest)


def read_stop_file(job: Job) -> str | None:
    try:
        return job.stop_file.read_text().strip() or "stopped by the loop"
    except OSError:
        return None


def execute(job: Job, on_poll: Callable[[], str | None] | None = None, clock: Callable[[], float] = time.time,
            sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Launch the experiment's run (or follow it if it already exists: a resumed loop) and wait for its end.

    `on_poll` is asked on every poll whether the loop wants the run stopped (a reason, or None); the stop file is
    read too. The harness is hashed before the launch and after the end."""
    controller = ProcessController(job.home, grace=job.grace)
    paths = controller.paths(job.run_id)
    node = socket.gethostname()
    launched: Launched | None = None
    started: float | None = None
    interrupted = paths.meta.exists() and _cut_off(paths)
    if not paths.meta.exists() or interrupted:
        stop = read_stop_file(job)
        if stop:  # the loop was stopped before this experiment started: it never runs
            now = clock()
            return Outcome(job.run_id, "not-run", now, now, stopped=stop, node=node)
        changed = changed_harness(job)
        if changed:
            now = clock()
            return Outcome(job.run_id, "not-run", now, now, harness_changed=changed, node=node,
                           error=f"the harness differs before the run: {', '.join(changed)}")
        try:
            launched = relaunch(controller, job) if interrupted else launch(controller, job)
        except (RunControlError, OSError, ValueError) as exc:
            now = clock()
            return Outcome(job.run_id, "not-run", now, now, error=str(exc).splitlines()[0], node=node)
        if interrupted:
            started = clock()  # a fresh budget for the relaunch: the time before the machine went down is lost
    from twinkle_tui.gpu import UsageSampler

    sampler = UsageSampler()
    started = started if started is not None else _start_time(paths, clock())
    outcome = Outcome(job.run_id, "starting", started, started, node=node)
    stopping = False
    while True:
        meta: RunMeta | None
        try:
            meta = read_meta(paths)
        except MetaError:
            meta = None
        if launched is not None:
            launched.supervisor.poll()  # reaped as soon as it ends
        status = effective_status(meta) if meta is not None else RunStatus.STARTING
        if meta is not None and not status.is_active:
            break
        _sample(sampler, meta, outcome)
        reason = None
        if clock() - started > job.budget:
            outcome.timed_out, reason = True, f"over its budget of {job.budget:g} s"
        if reason is None:
            reason = read_stop_file(job) or (on_poll() if on_poll else None)
        if reason and not stopping:
            outcome.stopped = None if outcome.timed_out else reason
            stopping = _stop(controller, job.run_id)
        sleep(job.poll)
    if launched is not None:
        try:
            launched.supervisor.wait(timeout=job.grace + 30)
        except Exception:  # a supervisor that outlives its run still records it; nothing to wait for here
            pass
    outcome.status = status.value
    outcome.ended = float(meta.end_time or clock()) if meta is not None else clock()
    outcome.steps = meta.progress.last_step if meta is not None else 0
    outcome.error = meta.error if meta is not None else None
    outcome.harness_changed = changed_harness(job)
    return outcome


def launch(controller: ProcessController, job: Job) -> Launched:
    target = Path(job.checkout) / job.target
    env = {**job.env, "TWINKLE_RESEARCH_BUDGET": f"{job.budget:g}"}
    mark = dict(job.research[META_FIELD])

    def annotate(meta: RunMeta) -> None:  # the one place an experiment's run is marked as one
        meta.kind = RunKind.EXPERIMENT
        meta.research = mark

    if target.suffix.lower() in CONFIG_SUFFIXES:
        return controller.launch_config(target, job.args, job.run_id, cwd=job.checkout, env=env, annotate=annotate)
    return controller.launch_script(target, job.args, job.run_id, cwd=job.checkout, env=env, annotate=annotate)


def _cut_off(paths: Any) -> bool:
    """The run claims to be running but none of its processes is left: the machine went down (or everything was
    killed) while it ran, and no exit was recorded. It is not a crash of the experiment."""
    try:
        meta = read_meta(paths)
    except MetaError:
        return False
    return meta.status.is_active and effective_status(meta) == RunStatus.FAILED


def relaunch(controller: ProcessController, job: Job) -> Launched:
    """Go on with a cut-off experiment's run: record how it ended, then relaunch it from its last checkpoint."""
    controller.recover(job.run_id)
    launched = controller.resume(job.run_id)
    if launched is None:
        raise RunControlError(f"run {job.run_id!r} could not be relaunched")
    return launched


def _start_time(paths: Any, default: float) -> float:
    try:
        return float(read_meta(paths).start_time or default)
    except MetaError:
        return default


def _stop(controller: ProcessController, run_id: str) -> bool:
    """Ask the run to stop (SIGTERM; its supervisor kills it after the grace period). False if it could not be
    asked yet (still starting): the next poll tries again."""
    try:
        controller.stop(run_id)
        return True
    except (RunControlError, NoSuchRun):
        return False


def _sample(sampler: Any, meta: RunMeta | None, outcome: Outcome) -> None:
    pid = meta.pid if meta is not None else None
    if not pid:
        return
    usage = sampler.sample(pid)
    if usage is not None:
        outcome.peak_rss = max(outcome.peak_rss, int(usage.rss))
        outcome.peak_gpu = max(outcome.peak_gpu, int(getattr(usage, "gpu_memory", 0) or 0))


def lane_env(lane: int, lanes: int, gpus: int, cpus: int | None = None,
             environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """One GPU per lane when there are GPUs (CUDA_VISIBLE_DEVICES, taken from the user's own list if set);
    otherwise the CPU cores shared out, so K experiments at once do not each start a thread per core and fight over
    them. Thread counts the user set in the environment are kept."""
    environ = os.environ if environ is None else environ
    if gpus > 0:
        visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        return {"CUDA_VISIBLE_DEVICES": visible[lane % len(visible)] if visible else str(lane % gpus)}
    threads = str(max(1, (cpus or os.cpu_count() or 1) // max(1, lanes)))
    return {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k not in environ}


class Runner(Protocol):
    """Where experiments run: local lanes (threads of this process) or a Ray cluster."""

    def run(self, job: Job, watch: Callable[[], str | None]) -> Outcome: ...

    def close(self) -> None: ...


class LocalRunner:
    def run(self, job: Job, watch: Callable[[], str | None]) -> Outcome:
        return execute(job, on_poll=watch)

    def close(self) -> None:
        pass
