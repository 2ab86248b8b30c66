"""The monitor's check costs what changed since the last check, not the run's length or the number of runs.

    python bench/bench_monitor_check.py [--long 1000000] [--short 10000] [--checks 20] [--runs 1000]

1. A run of --short steps and one of --long steps are each read once (a monitor's first check reads everything),
   then grow by 100 steps before each of --checks checks; the median check of the long run is divided by the median
   check of the short one, measured in the same run (goal: about 1x, at most 1.5x).
2. The check of all active runs (5 live ones growing by 10 steps) in a home of --runs runs, most of them finished,
   divided by the same check in a home of 10 runs.

Each check is the monitor's own: refresh the run's view, take a snapshot (every rule judges the whole run from the
run's history plus a window of the new points), run the rules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLUMNS = "{{\"step\": {s}, \"ts\": {ts:.3f}, \"loss\": {loss:.5f}, \"grad_norm\": {g:.4f}, \"learning rate\": {lr:.3e}}}\n"


def rows(start: int, stop: int) -> str:
    """Metric lines of a healthy run: a slowly falling loss with a little noise (no finding to report)."""
    out = []
    for s in range(start, stop):
        wobble = ((s * 7919) % 101) / 1000
        out.append(COLUMNS.format(s=s, ts=1.7e9 + s * 0.01, loss=1.0 + 1.0 / (1 + s / 1000) + wobble,
                                  g=1.0 + wobble, lr=1e-4))
    return "".join(out)


def make_run(home: Path, run_id: str, steps: int, live: bool) -> Path:
    from twinkle_trainer.protocol import process_start_time

    root = home / run_id
    root.mkdir(parents=True)
    pid = os.getpid() if live else None
    meta = {"schema": 1, "run_id": run_id, "model_id": "m", "status": "running" if live else "completed",
            "pid": pid, "pid_start_time": process_start_time(pid) if pid else None,
            "start_time": time.time() - 86400, "end_time": None if live else time.time() - 80000,
            "progress": {"last_step": steps, "total_steps": 10 * steps}, "launches": 1}
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "output.log").write_text("===== twinkle launch 1 =====\nstep 1\n")
    with open(root / "metrics.jsonl", "w") as f:
        for start in range(1, steps + 1, 100_000):
            f.write(rows(start, min(start + 100_000, steps + 1)))
    return root


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check_times(home: Path, run_id: str, steps: int, checks: int) -> tuple[float, list[float]]:
    """The first check's time, and each later check's after the run grew by 100 steps."""
    from twinkle_tui.monitor import TrainingMonitor

    monitor = TrainingMonitor(home)
    first = timed(lambda: monitor.check_run(run_id))
    times = []
    for k in range(checks):
        with open(home / run_id / "metrics.jsonl", "a") as f:
            f.write(rows(steps + 1 + 100 * k, steps + 1 + 100 * (k + 1)))
        times.append(timed(lambda: monitor.check_run(run_id)))
    return first, times


def all_runs_times(home: Path, runs: int, checks: int) -> list[float]:
    """Checks of every watched run in a home of `runs` runs, 5 of them live and growing by 10 steps each time."""
    from twinkle_tui.monitor import TrainingMonitor

    live = [f"live-{i}" for i in range(5)]
    for i in range(runs - len(live)):
        make_run(home, f"done-{i:04d}", 200, live=False)
    for run_id in live:
        make_run(home, run_id, 2000, live=True)
    monitor = TrainingMonitor(home)
    monitor.check()  # the first look reads every live run whole
    times = []
    for k in range(checks):
        for run_id in live:
            with open(home / run_id / "metrics.jsonl", "a") as f:
                f.write(rows(2001 + 10 * k, 2001 + 10 * (k + 1)))
        times.append(timed(monitor.check))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", type=int, default=1_000_000)
    ap.add_argument("--short", type=int, default=10_000)
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        make_run(home, "short", args.short, live=True)
        make_run(home, "long", args.long, live=True)
        print(f"wrote runs of {args.short:,} and {args.long:,} steps in {time.perf_counter() - t0:.1f}s")
        first_short, short = check_times(home, "short", args.short, args.checks)
        first_long, long = check_times(home, "long", args.long, args.checks)
    ms, ml = statistics.median(short), statistics.median(long)
    print(f"first check (reads the whole run): {args.short:,} steps {first_short * 1e3:.0f} ms, "
          f"{args.long:,} steps {first_long * 1e3:.0f} ms")
    print(f"check after 100 new steps (median of {args.checks}): {args.short:,} steps {ms * 1e3:.2f} ms, "
          f"{args.long:,} steps {ml * 1e3:.2f} ms")
    print(f"ratio {args.long:,} / {args.short:,} steps: {ml / ms:.2f}x (goal: about 1x; the run is "
          f"{args.long / args.short:.0f}x longer)")
    with tempfile.TemporaryDirectory() as small, tempfile.TemporaryDirectory() as big:
        few = statistics.median(all_runs_times(Path(small), 10, args.checks))
        many = statistics.median(all_runs_times(Path(big), args.runs, args.checks))
    print(f"check of all active runs (5 live, 10 new steps each): home of 10 runs {few * 1e3:.2f} ms, "
          f"home of {args.runs:,} runs {many * 1e3:.2f} ms; ratio {many / few:.2f}x")


if __name__ == "__main__":
    main()
