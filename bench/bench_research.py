"""Auto-research lanes: experiments per hour with two lanes against one, on the CPU, in the same run.

    python bench/bench_research.py [--experiments 9] [--program examples/research/PROGRAM.md]

The same program (examples/research: a small torch MLP, a few seconds per experiment, most of it Python and torch
start-up) runs twice with the Optuna proposer in a fresh $TWINKLE_HOME: with one lane, then with two. Experiments
per hour count the experiments after the baseline (the baseline runs alone in both) over the time from the
baseline's end to the last experiment's end. The two settings alternate (1, 2, 2, 1, ...: ABBA), so a load that
other work puts on a shared machine falls on both alike. Target: about 2x on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(program: Path, lanes: int, experiments: int) -> tuple[float, int, float]:
    """(seconds after the baseline, experiments counted after it, best metric) of one research."""
    with tempfile.TemporaryDirectory(prefix="bench-research-") as home:
        env = {**os.environ, "TWINKLE_HOME": home}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "twinkle_tui.research", str(program), "--proposer", "optuna",
                               "--lanes", str(lanes), "--experiments", str(experiments)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"the research failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        name = next(p.name for p in (Path(home) / "research").iterdir())
        rows = [json.loads(line) for line in (Path(home) / "research" / name / "experiments.jsonl").open()]
    runs = [r for r in rows if r["status"] in ("keep", "discard", "crash", "timeout")]
    baseline_end = max(r["ended"] for r in runs if r["baseline"])
    after = [r for r in runs if not r["baseline"]]
    span = max(r["ended"] for r in after) - baseline_end
    best = min(r["metric"] for r in runs if r["metric"] is not None)
    print(f"  {lanes} lane(s): {len(runs)} experiments in {wall:.1f} s; {len(after)} after the baseline in "
          f"{span:.1f} s; best metric {best:.4g}")
    return span, len(after), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both settings twice)")
    ap.add_argument("--program", default=str(REPO / "examples" / "research" / "PROGRAM.md"))
    ns = ap.parse_args()
    program = Path(ns.program).resolve()
    print(f"research lanes on {os.cpu_count()} CPU cores: {program.relative_to(REPO)}, {ns.experiments} experiments")
    totals = {1: [0.0, 0], 2: [0.0, 0]}
    for lanes in [1, 2, 2, 1] * ns.rounds:
        span, count, _ = run(program, lanes, ns.experiments)
        totals[lanes][0] += span
        totals[lanes][1] += count
    one, two = (totals[k][1] / totals[k][0] * 3600 for k in (1, 2))
    print(f"experiments per hour: 1 lane {one:.0f}, 2 lanes {two:.0f}; ratio {two / one:.2f}x (target about 2x)")


if __name__ == "__main__":
    main()
