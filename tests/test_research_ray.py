"""The Ray path: the same program on a real local Ray cluster of two nodes on the loopback address (the `cluster`
extra; skipped without Ray). Both nodes share this machine's $TWINKLE_HOME, as cluster nodes share storage."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta

from research_factory import records, run_research, state, write_program

ray = pytest.importorskip("ray")


@pytest.fixture
def two_nodes(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    # Loopback only: without this Ray binds its services to the machine's outward address.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    node: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}
    client_port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False,
                                                            "ray_client_server_port": client_port})
    cluster.client_port = client_port  # type: ignore[attr-defined]
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ray", "ray://"])
def test_experiments_run_as_ray_tasks_on_both_nodes(home: Path, tmp_path: Path, two_nodes: Any, how: str) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n",
                            args='["--steps", "6", "--sleep", "0.3"]')
    if how == "ray":  # the cluster RAY_ADDRESS names
        cluster, env = "ray", {"RAY_ADDRESS": two_nodes.address}
    else:  # Ray Client, as from a laptop to a cluster's head
        cluster, env = f"ray://127.0.0.1:{two_nodes.client_port}", {}
    proc = run_research(program, "--proposer", "optuna", "--cluster", cluster, "--lanes", "2", "--experiments", "5",
                        env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"2 lane(s) on {cluster}" in proc.stdout
    recs = records(home)
    said = proc.stdout + "\n" + "\n".join(str(r) for r in recs)
    assert {r["status"] for r in recs} <= {"keep", "discard"}, said
    assert len({r["node"] for r in recs}) == 2  # two experiments at once: one on each node
    assert len(recs) == 5 and state(home)["status"] == "done"
    for r in recs:  # ordinary runs in the shared $TWINKLE_HOME, marked as the research's experiments
        meta = read_meta(RunPaths(home / r["run_id"]))
        # Optuna's pruner stops an experiment whose score lags the median (how often depends on the machine's speed)
        pruned = (r["reason"] or "").startswith("pruned at step")
        assert meta.status == ("stopped" if pruned else "completed"), (meta.status, said)
        assert meta.research["experiment"] == r["id"]
        assert meta.research["node"].startswith(r["node"])  # where a resumed loop would follow it
    assert os.path.isdir(home / "research" / "toy" / "workspace" / ".git")


def test_a_cluster_that_does_not_answer_is_one_line(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n")
    proc = run_research(program, "--proposer", "optuna", "--cluster", "ray://127.0.0.1:9", timeout=120,
                        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1"})
    assert proc.returncode == 2
    assert "cannot connect to the Ray cluster at ray://127.0.0.1:9" in proc.stderr, proc.stderr
    assert not (home / "research" / "toy").exists()
    proc = run_research(program, "--proposer", "optuna", "--cluster", "slurm")
    assert proc.returncode == 2 and "--cluster takes ray or ray://ADDRESS, not 'slurm'" in proc.stderr
