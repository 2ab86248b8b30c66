"""Benchmark: reading metrics.jsonl with the run store vs a plain json.loads loop over the same file.

    python bench/bench_metrics_read.py [--lines 1000000]

Prints the full-read time of both and their ratio (baseline / ours: >1 means we are faster), the peak memory of the
full read (max RSS of a child process, and its increase over the same child with the modules imported only), the
time to reopen the file from the metrics cache a first read wrote (a fresh process, as a new dashboard), and the
time to read 1,000 newly appended lines.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES = ["loss", "grad_norm", "learning rate", "tokens/s", "reward", "train/accuracy_reward", "kl", "entropy",
         "completion_length", "epoch"]


def make_file(path: Path, lines: int, start: int = 0) -> None:
    rnd = random.Random(start)
    with open(path, "a") as f:
        for i in range(start, start + lines):
            rec = {"step": i, "ts": 1.7e9 + i * 0.25}
            for name in NAMES:
                rec[name] = rnd.random()
            f.write(json.dumps(rec) + "\n")


def plain_loop(path: Path) -> float:
    t = time.perf_counter()
    with open(path) as f:
        for line in f:
            json.loads(line)
    return time.perf_counter() - t


CHILD = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from twinkle_tui.runs.metrics import MetricsTable
from twinkle_tui.runs.metrics_cache import MetricsCache
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
cache = {cache!r}
table = MetricsTable(Path({path!r}), MetricsCache(Path(cache)) if cache else None)
if {read}:
    table.read_new()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, base, peak, len(table.series.get("loss", [])) if {read} else 0)
"""


def ours_in_child(path: Path, read: bool = True, cache: Path | None = None) -> tuple[float, float, float, int]:
    code = CHILD.format(repo=str(REPO), path=str(path), read=read, cache=str(cache) if cache else "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024, int(out[2]) / 1024, int(out[3])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ns = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from twinkle_tui.runs.metrics import MetricsTable

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        make_file(path, ns.lines)
        size_mb = path.stat().st_size / 1e6
        plain_loop(path)  # warm the page cache for both
        baseline = min(plain_loop(path) for _ in range(2))
        runs = [ours_in_child(path) for _ in range(2)]
        ours = min(r[0] for r in runs)
        _, _, idle_peak, _ = ours_in_child(path, read=False)
        peak = max(r[2] for r in runs)
        assert runs[0][3] == ns.lines, "not every line was read"
        print(f"file: {ns.lines:,} lines x {len(NAMES)} metrics, {size_mb:.0f} MB")
        print(f"full read   plain json.loads loop: {baseline:.2f} s   run store: {ours:.2f} s   "
              f"ratio (baseline/ours): {baseline / ours:.2f}x   [target >= 1.0x and < 3 s]")
        print(f"peak memory of the full read: {peak:.0f} MB max RSS ({peak - idle_peak:.0f} MB over the same "
              f"process without the read)   [target < 250 MB]")

        cache = Path(tmp) / "cache.metrics"
        written = ours_in_child(path, cache=cache)[0]  # a first open parses the file and writes the cache
        reopens = []
        for _ in range(3):
            loop = plain_loop(path)
            reopened = ours_in_child(path, cache=cache)
            assert reopened[3] == ns.lines, "the reopen lost lines"
            reopens.append((loop, reopened[0]))
        loop, reopen = statistics.median(r[0] for r in reopens), statistics.median(r[1] for r in reopens)
        print(f"reopen from the metrics cache ({cache.stat().st_size / 1e6:.0f} MB, written by a first open that took "
              f"{written:.2f} s): {reopen:.3f} s, vs the plain loop {loop:.2f} s: {reopen / loop:.3f}x the loop's time")

        table = MetricsTable(path)
        table.read_new()
        times = []
        for k in range(20):
            make_file(path, 1000, start=ns.lines + k * 1000)
            t = time.perf_counter()
            table.read_new()
            times.append(time.perf_counter() - t)
        assert len(table.series["loss"]) == ns.lines + 20_000
        # baseline for the increment: json.loads of the same 1,000 lines
        tail = path.read_bytes().splitlines()[-1000:]
        t = time.perf_counter()
        for line in tail:
            json.loads(line)
        inc_base = time.perf_counter() - t
        med = statistics.median(times)
        print(f"incremental read of 1,000 appended lines: median {med * 1000:.1f} ms (max {max(times) * 1000:.1f} ms); "
              f"json.loads of the same lines: {inc_base * 1000:.1f} ms, ratio {inc_base / med:.2f}x   [target < 20 ms]")


if __name__ == "__main__":
    main()
