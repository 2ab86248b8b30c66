"""Auto-research lanes: experiments per hour with two lanes against one, on the CPU, in the same run.

    python bench/bench_research.py [--experiments 9] [--rounds 1] [--program examples/research/PROGRAM.md]

The same program (examples/research: a small torch MLP, a few seconds per experiment, most of it Python and torch
start-up) runs with the Optuna proposer, each time in a fresh $TWINKLE_HOME, with one lane and with two. Experiments
per hour count the experiments after the baseline (the baseline runs alone in both) over the time from the
baseline's end to the last experiment's end. One lane runs twice: as the loop sets it (all cores to its one
experiment) and with one thread (as each of two lanes has), so the ratio of parallelism alone is seen too. The
settings alternate (A B C C B A), so a load that other work puts on a shared machine falls on all alike.
Target: about 2x on two cores.
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


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SETTINGS = {  # name: (lanes, environment)
    "1 lane": (1, {}),  # the loop's default: the one lane gets every core
    "1 lane, 1 thread": (1, ONE_THREAD),  # what each of two lanes gets: parallelism alone, threads aside
    "2 lanes": (2, {}),
}


def run(program: Path, lanes: int, experiments: int, extra_env: dict[str, str]) -> tuple[float, int]:
    """(seconds after the baseline, experiments after it) of one research."""
    with tempfile.TemporaryDirectory(prefix="bench-research-") as home:
        env = {**os.environ, **extra_env, "TWINKLE_HOME": home}
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
    each = sorted(r["duration"] for r in after)[len(after) // 2]
    print(f"  {lanes} lane(s) {extra_env or ''}: {len(runs)} experiments in {wall:.1f} s; {len(after)} after the "
          f"baseline in {span:.1f} s (median {each:.1f} s each)")
    return span, len(after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of A B C C B A")
    ap.add_argument("--program", default=str(REPO / "examples" / "research" / "PROGRAM.md"))
    ns = ap.parse_args()
    program = Path(ns.program).resolve()
    print(f"research lanes on {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}): "
          f"{program.relative_to(REPO)}, {ns.experiments} experiments")
    totals = {name: [0.0, 0] for name in SETTINGS}
    names = list(SETTINGS)
    for name in (names + names[::-1]) * ns.rounds:
        lanes, env = SETTINGS[name]
        span, count = run(program, lanes, ns.experiments, env)
        totals[name][0] += span
        totals[name][1] += count
    per_hour = {name: count / span * 3600 for name, (span, count) in totals.items()}
    print("experiments per hour: " + ", ".join(f"{name} {v:.0f}" for name, v in per_hour.items()))
    print(f"2 lanes / 1 lane: {per_hour['2 lanes'] / per_hour['1 lane']:.2f}x; 2 lanes / 1 lane with one thread: "
          f"{per_hour['2 lanes'] / per_hour['1 lane, 1 thread']:.2f}x (target about 2x; load average now "
          f"{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
