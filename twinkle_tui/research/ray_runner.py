"""Experiments as Ray tasks on an existing Ray cluster (`--cluster ray` or `--cluster ray://ADDRESS`; the
`cluster` extra).

Each task runs `lanes.execute` on whichever node Ray picks: the run is launched there through that node's process
controller, under the same $TWINKLE_HOME, which must be storage every node mounts at the same path (the run
directory, the experiment's checkout and its stop file live there). The loop reads the metric from the run's files
as it does for a local run; to stop a task's run early it writes the stop file the task watches. A resumed loop
follows an experiment that was running with a new task pinned to the node its run's meta.json names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from twinkle_tui.research.lanes import META_FIELD, Job, Outcome, execute, experiment_meta

log = logging.getLogger(__name__)

INSTALL = "pip install 'twinkle-tui[cluster]'"


INIT_ATTEMPTS = 3


def one_line(exc: BaseException) -> str:
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(text[:2]) if text else type(exc).__name__


class ClusterError(Exception):
    """The Ray cluster cannot be used; the message is one line."""


def run_on_node(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run one experiment on this node and report how it ended. The run's meta.json names the node,
    so a resumed loop can follow the run where it runs."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    mark = job["research"][META_FIELD]
    outcome = execute(Job(**{**job, "research": experiment_meta(mark["name"], mark["experiment"], node)}))
    outcome.node = node[:12]
    return outcome.to_json()


def node_of(job: Job) -> str | None:
    """The Ray node an experiment's run was launched on (None if it has not been launched)."""
    from twinkle_trainer.protocol import MetaError, RunPaths, read_meta

    try:
        meta = read_meta(RunPaths(Path(job.home) / job.run_id))
    except MetaError:
        return None
    mark = meta.research
    return str(mark["node"]) if mark and mark.get("node") else None


def ray_address(cluster: str) -> str:
    """`ray` -> the cluster RAY_ADDRESS names or the one running on this machine; `ray://HOST:PORT` as given."""
    if cluster == "ray":
        return "auto"
    if cluster.startswith("ray://"):
        return cluster
    raise ClusterError(f"--cluster takes ray or ray://ADDRESS, not {cluster!r}")


class RayRunner:
    def __init__(self, cluster: str, poll: float = 0.5) -> None:
        address = ray_address(cluster)
        try:
            import ray
        except ImportError:
            raise ClusterError(f"--cluster {cluster} needs Ray: {INSTALL}") from None
        for attempt in range(1, INIT_ATTEMPTS + 1):
            try:
                ray.init(address=address, log_to_driver=False, ignore_reinit_error=True,
                         logging_level=logging.WARNING)
                break
            except ConnectionAbortedError as exc:  # the head's client server could not start this client's own
                if attempt == INIT_ATTEMPTS:  # server process (it exits without a word now and then): ask again
                    raise ClusterError(f"cannot connect to the Ray cluster at {address} "
                                       f"({attempt} tries): {one_line(exc)}") from None
                log.warning("Ray client at %s: %s; trying again", address, one_line(exc))
                time.sleep(attempt)
            except Exception as exc:
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: {one_line(exc)}") from None
        self.ray = ray
        self.poll = poll
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_on_node)

    def run(self, job: Job, watch: Callable[[], str | None]) -> Outcome:
        node = node_of(job)
        options: dict[str, Any] = {}
        if node is not None:  # a resumed loop: follow the run on the node that runs it
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ref = self.task.options(**options).remote(asdict(job))
        while True:
            ready, _ = self.ray.wait([ref], timeout=self.poll)
            if ready:
                try:
                    return Outcome(**self.ray.get(ref))
                except Exception as exc:  # the task or its node died: the experiment crashed
                    import time

                    now = time.time()
                    first = str(exc).strip().splitlines()
                    return Outcome(job.run_id, "not-run", now, now,
                                   error=f"the Ray task failed: {first[-1] if first else type(exc).__name__}")
            reason = watch()
            if reason and not job.stop_file.exists():
                job.stop_file.write_text(reason)

    def close(self) -> None:
        try:
            self.ray.shutdown()
        except Exception:  # already disconnected
            log.debug("ray.shutdown failed", exc_info=True)
