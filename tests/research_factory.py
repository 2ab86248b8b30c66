"""Research programs for the tests: a standard-library training script (no torch: a run takes well under a second)
whose metric the harness computes from one number the proposers change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import environment

REPO = Path(__file__).resolve().parents[1]

TRAIN = '''"""The editable file: X is what the LLM proposer changes, --x what the optuna proposer tunes."""
import argparse
import time

from evaluation import evaluate
from twinkle_trainer.runtime import TrainingRuntime

X = 0.0

ap = argparse.ArgumentParser()
ap.add_argument("--x", type=float, default=0.0)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--sleep", type=float, default=0.0)
args = ap.parse_args()
rt = TrainingRuntime().start(model_id="toy", total_steps=args.steps)
for step in range(1, args.steps + 1):
    rt.log_metrics(step=step, loss=1.0 / step)
    evaluate(rt, step, args.x + X)
    time.sleep(args.sleep)
    rt.step_boundary(step)
rt.finish("completed")
'''

EVALUATION = '''"""The harness: the score is the squared distance of x from 3 (plus a term that shrinks with the steps)."""


def evaluate(rt, step, x):
    rt.log_metrics(step=step, score=(x - 3.0) ** 2 + 1.0 / step)
'''


def write_program(folder: Path, name: str = "toy", extra: str = "", args: str = '["--steps", "4"]') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "evaluation.py").write_text(EVALUATION)
    (folder / "PROGRAM.md").write_text(
        f"---\nname: {name}\ntarget: train.py\nargs: {args}\neditable: [train.py]\nharness: [evaluation.py]\n"
        f"metric: score\ngoal: minimize\nbudget: 20\nexperiments: 6\n{extra}---\n"
        "Bring the score down: it is lowest when x is 3.\n")
    return folder / "PROGRAM.md"


def with_x(value: str, tail: str = "") -> str:
    """train.py with X set to `value` (and extra code before the loop)."""
    return TRAIN.replace("X = 0.0", f"X = {value}{tail}")


def research_cmd(program: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "twinkle_tui.research", str(program), *args]


def start_research(program: Path, *args: str) -> subprocess.Popen[str]:
    """The loop in the background (to stop, kill or interrupt it mid-experiment)."""
    return subprocess.Popen(research_cmd(program, *args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_research(program: Path, *args: str, timeout: float = 240, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(research_cmd(program, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO, input=stdin)


def records(home: Path, name: str = "toy") -> list[dict[str, Any]]:
    path = home / "research" / name / "experiments.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def state(home: Path, name: str = "toy") -> dict[str, Any]:
    return json.loads((home / "research" / name / "state.json").read_text())


def git(home: Path, *args: str, name: str = "toy") -> str:
    return subprocess.run(["git", "-C", str(home / "research" / name / "workspace"), *args], capture_output=True,
                          text=True, check=True).stdout


T0 = 1_790_000_000.0


def make_research(home: Path, tmp: Path, name: str = "toy", pid: int | None = None,
                  pid_start_time: int | None = None, inflight_run: str | None = None,
                  review: bool = False) -> Path:
    """A research as a loop leaves it, without running one: real git commits, records with fixed times."""
    # the same commits every time: the snapshot shows their diffs
    with environment(GIT_AUTHOR_DATE="2026-01-01T00:00:00", GIT_COMMITTER_DATE="2026-01-01T00:00:00"):
        return _make_research(home, tmp, name, pid, pid_start_time, inflight_run, review)


def _make_research(home: Path, tmp: Path, name: str, pid: int | None, pid_start_time: int | None,
                   inflight_run: str | None, review: bool) -> Path:
    from twinkle_tui.research.program import load_program
    from twinkle_tui.research.records import Experiment, ResearchDir
    from twinkle_tui.research.workspace import Workspace

    program = load_program(write_program(tmp / f"{name}-program", name=name))
    research = ResearchDir.of(name, home)
    research.root.mkdir(parents=True)
    ws = Workspace(research.workspace)
    base = ws.create(program.folder, exclude={"PROGRAM.md"})
    plan = [("baseline", None, 9.25, "keep"), ("x to 2.5", "2.5", 0.5, "keep"), ("x to -2", "-2.0", 25.25, "discard"),
            ("x to 2.8", "2.8", 0.29, "keep"), ("crash", "2.9\nraise RuntimeError('boom')", None, "crash"),
            ("x to 3.5", "3.5", 0.5, "discard")]
    best = base
    for i, (description, x, metric, status) in enumerate(plan, start=1):
        eid = f"e{i:03d}"
        commit = base if x is None else ws.commit(best, {"train.py": with_x(x)}, f"{eid}: {description}")
        ws.tag_experiment(eid, commit)
        stat = ws.diffstat(best, commit)
        research.record(Experiment(eid, i, status, description, "baseline" if x is None else "llm", run_id=f"{name}-{eid}",
                                   commit=commit, parent=None if x is None else best, metric=metric,
                                   best_before=None if x is None else 9.25, started=T0 + 10 * i,
                                   ended=T0 + 10 * i + 4, duration=4.0, steps=4, peak_memory_gb=0.1,
                                   added=stat.added, removed=stat.removed, baseline=x is None,
                                   reason="RuntimeError: boom" if status == "crash" else None))
        if status == "keep":
            best = commit
            ws.advance(commit)
    research.record(Experiment("e007-r1", 7, "refused", "edit the harness", "llm",
                               reason="evaluation.py is part of the harness (the evaluation); it may not change"))
    inflight = {}
    if inflight_run:
        inflight["e007"] = {"id": "e007", "number": 7, "lane": 0, "run_id": inflight_run, "commit": best,
                            "parent": best, "description": "x to 2.95", "params": {}, "baseline": False}
    research.write_state({
        "name": name, "program": str(program.path), "status": "running", "pid": pid, "pid_start_time": pid_start_time,
        "baseline": {"commit": base, "metric": 9.25, "noise": 0.0}, "best": {"experiment": "e004", "commit": best,
                                                                            "metric": 0.29},
        "next_number": 8, "inflight": inflight, "metric": "score", "goal": "minimize",
        "settings": {"experiments": 10, "budget": 20, "lanes": 1, "proposer": "llm", "review": review}})
    if review:
        research.request_review("e008", {"id": "e008", "description": "x to 3.0", "params": {},
                                         "diff": "--- a/train.py\n+++ b/train.py\n@@ -8 +8 @@\n-X = 2.8\n+X = 3.0\n"})
    return research.root
