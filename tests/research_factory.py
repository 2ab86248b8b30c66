"""Research programs for the tests: a standard-library training script (no torch: a run takes well under a second)
whose metric the harness computes from one number the proposers change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

TRAIN = '''"""The editable file: X is what the LLM proposer changes, --x what the optuna proposer tunes."""
import argparse
import time

from evaluation import evaluate
from trainer.runtime import TrainingRuntime

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
