"""Dashboard benchmarks, each against a baseline measured in the same run.

    python bench/bench_dashboard.py [chart] [startup] [idle] [reopen] [many]

chart    redraw of one full-width chart as the series grows 1k -> 1M points (target: 1M within 1.5x of 1k), and the
         ratio against handing the raw series to plotext (the textual-plotext default).
startup  launch to first full frame with 50 runs of 100k steps on disk vs an empty $TWINKLE_HOME (target: within
         2x, and under 1.5 s).
idle     CPU used by the dashboard while one run appends 10 metric lines a second (target: under 10% of one
         core), vs the same dashboard with nothing being written.
reopen   a finished 1M-step run opened in a fresh dashboard, launch to its full chart on screen: the first open
         (no metrics cache) and a reopen (from the cache), each against a plain json.loads loop over its
         metrics.jsonl (target: reopen <= 0.3x), and the reopen against the same first frame with the run already
         in memory, i.e. an empty home's first frame plus drawing the run (target: <= 1.0x). Rounds interleave the
         sides; medians are printed.
many     a home of 1,000 runs (most ended, a few live): launch to first full frame vs an empty home (target: within
         1.5x), and the run list's lag, key to frame, against a home of 20 runs with the same 10 live runs at the
         top: moving down the list (each key selects and draws another run), a page down, and typing a filter
         (target: within 1.2x of 20 runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_metrics(path: Path, steps: int, metrics: tuple[str, ...] = ("loss", "grad_norm", "learning rate", "reward")) -> None:
    """The same picture at every length: a decaying, noisy loss-like curve with one one-step spike halfway."""
    import math

    with open(path, "w") as f:
        for s in range(1, steps + 1):
            noise = (math.sin(s * 12.9898) * 43758.5453) % 1.0
            base = math.exp(-5 * s / steps) + 0.05 * noise
            vals = ", ".join(f'"{m}": {(i + 1) * base + (5.0 if s == steps // 2 else 0.0):.6f}' for i, m in enumerate(metrics))
            f.write(f'{{"step": {s}, "ts": {1.7e9 + s * 0.1:.3f}, {vals}}}\n')


def write_run(home: Path, run_id: str, steps: int, metrics_file: Path | None = None) -> None:
    root = home / run_id
    root.mkdir(parents=True)
    if metrics_file is not None:
        shutil.copy(metrics_file, root / "metrics.jsonl")
    else:
        write_metrics(root / "metrics.jsonl", steps)
    (root / "meta.json").write_text(json.dumps({
        "run_id": run_id, "status": "completed", "model_id": "toy", "start_time": 1.7e9,
        "progress": {"last_step": steps, "total_steps": steps}}))
    (root / "output.log").write_text("hello\n" * 100)


# ---------------------------------------------------------------------------------------------------- chart
def bench_chart() -> None:
    from textual.app import App

    from twinkle_tui.commands.chart_settings import ChartSettings
    from twinkle_tui.runs.store import RunStore
    from twinkle_tui.ui.widgets.charts import MetricChart

    sizes = [1_000, 10_000, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for n in sizes:
            write_run(home, f"r{n}", n)
        store = RunStore(home)

        class One(App[None]):
            def compose(self):
                yield MetricChart("loss")

        results: dict[int, tuple[float, float | None]] = {}

        async def run() -> None:
            app = One()
            async with app.run_test(size=(200, 30)) as pilot:
                chart = app.query_one(MetricChart)
                await pilot.pause()
                settings = ChartSettings(metrics=["loss"])
                for n in sizes:
                    view = store.view(f"r{n}")
                    view.refresh()
                    ours = _time(lambda view=view: [chart.draw(view, settings, None), chart.plt.build()])  # type: ignore[func-returns-value]
                    raw = None
                    if n <= 100_000:  # the raw 1M case takes minutes
                        steps, values = view.metrics.series["loss"].snapshot()

                        def draw_raw(steps=steps, values=values) -> None:
                            plt = chart.plt
                            plt.clear_data()
                            plt.plot(steps.tolist(), values.tolist(), marker="braille")
                            plt.build()

                        raw = _time(draw_raw, repeat=1 if n >= 100_000 else 3)
                    results[n] = (ours, raw)

        asyncio.run(run())
    base = results[1_000][0]
    print("chart redraw, one 200-column chart (draw + plotext build), median of 5:")
    for n, (ours, raw) in results.items():
        raw_text = f"raw series to plotext: {raw * 1000:8.1f} ms, ratio raw/ours {raw / ours:6.1f}x" if raw else "raw series: not run (minutes)"
        print(f"  {n:>9,} points: {ours * 1000:6.1f} ms ({ours / base:4.2f}x the 1k case)   {raw_text}")
    print(f"  1M vs 1k: {results[1_000_000][0] / base:.2f}x   [target <= 1.5x]")


def _time(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------------- startup
STARTUP_CHILD = r"""
import asyncio, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.ui.app import TwinkleApp

async def main():
    app = TwinkleApp(home={home!r}, watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        want = {runs}
        while True:
            view = app.current_view()
            listed = len(app.run_list._rows) == want
            drawn = want == 0 or (view is not None and view.metrics.names() and app.chart_grid.charts()
                                  and all(c.title_text for c in app.chart_grid.charts()))
            if listed and drawn:
                break
            await pilot.pause(0.005)
        print(time.perf_counter() - t0)
asyncio.run(main())
"""


def bench_startup() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        empty.mkdir()
        template = Path(tmp) / "template.jsonl"
        write_metrics(template, 100_000)
        for i in range(50):
            write_run(full, f"run-{i:02d}", 100_000, metrics_file=template)
        size_mb = sum(f.stat().st_size for f in full.rglob("*")) / 1e6

        def once(home: Path, runs: int) -> float:
            code = STARTUP_CHILD.format(repo=str(REPO), home=str(home), runs=runs)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            return float(out.stdout.strip().splitlines()[-1])

        once(empty, 0)  # warm the import caches
        base = min(once(empty, 0) for _ in range(3))
        ours = min(once(full, 50) for _ in range(3))
    print("launch to first full frame (process start -> run list + charts drawn), best of 3:")
    print(f"  empty $TWINKLE_HOME: {base:.2f} s   50 runs x 100k steps ({size_mb:.0f} MB): {ours:.2f} s   "
          f"ratio {ours / base:.2f}x   [target <= 2x and < 1.5 s]")


# ---------------------------------------------------------------------------------------------------- idle
IDLE_CHILD = r"""
import asyncio, resource, sys, time
sys.path.insert(0, {repo!r})
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.ui.app import TwinkleApp

async def main():
    app = TwinkleApp(home={home!r}, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(3.0)  # start-up done
        print("ready", flush=True)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await pilot.pause({seconds})
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(cpu / (t1 - t0), app.current_view().last_step, flush=True)
asyncio.run(main())
"""


def bench_idle(seconds: float = 20.0) -> None:
    def measure(write: bool) -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            write_run(home, "live", 2_000)
            meta = home / "live" / "meta.json"
            m = json.loads(meta.read_text())
            m["status"] = "running"
            meta.write_text(json.dumps(m))
            code = IDLE_CHILD.format(repo=str(REPO), home=str(home), seconds=seconds)
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            step = 2_000
            deadline = time.monotonic() + seconds + 1
            fd = os.open(home / "live" / "metrics.jsonl", os.O_WRONLY | os.O_APPEND)
            while write and time.monotonic() < deadline:
                step += 1
                os.write(fd, f'{{"step": {step}, "ts": {time.time()}, "loss": {1 / step}, "grad_norm": 1.0}}\n'.encode())
                time.sleep(0.1)
            os.close(fd)
            out, _ = proc.communicate(timeout=seconds + 60)
            cpu, last = out.split()
            return float(cpu), int(last)

    quiet, _ = measure(False)
    busy, last = measure(True)
    print(f"dashboard CPU over {seconds:.0f} s (fraction of one core):")
    print(f"  nothing written: {quiet:.1%}   one run appending 10 lines/s: {busy:.1%} (the chart reached step {last})   "
          f"ratio {busy / max(quiet, 1e-9):.1f}x   [target < 10%]")


# ---------------------------------------------------------------------------------------------------- reopen
# A child that starts as twinkle-tui does: the first run is read (RunStore.prefetch) while the UI's modules load.
# With preread, the run is read completely first and that time is not counted: the first frame of a run that is
# already in memory, i.e. an empty home's first frame plus drawing the run, with nothing left to read.
PREFETCHED_APP = r"""
import asyncio, statistics, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
from twinkle_tui.runs.store import RunStore
store = RunStore({home!r})
if {preread}:
    before = time.perf_counter()
    store.prefetch().join()
    t0 += time.perf_counter() - before
else:
    store.prefetch()
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.ui.app import TwinkleApp
"""
REOPEN_CHILD = PREFETCHED_APP + r"""
from twinkle_tui.ui.widgets.charts import MetricChart

drawing = {{}}  # per chart: its latest draw (decimation) and the plotext builds (renders) after it
chart_draw, chart_render = MetricChart.draw, MetricChart.render

def draw(self, *args):
    t = time.perf_counter()
    chart_draw(self, *args)
    drawing[id(self)] = time.perf_counter() - t

def render(self):
    t = time.perf_counter()
    out = chart_render(self)
    drawing[id(self)] = drawing.get(id(self), 0.0) + time.perf_counter() - t
    return out

MetricChart.draw, MetricChart.render = draw, render

async def main():
    app = TwinkleApp(store=store, watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        want = {last_step}
        while True:
            view = app.current_view()
            charts = app.chart_grid.charts()
            if want == 0:  # the empty home: its first frame, as in the startup bench
                done = not app.run_list._rows
            else:
                done = (view is not None and view.metrics.last_step() == want and charts
                        and all(c.x_range[1] >= want and c._built is not None for c in charts))
            if done:
                break
            await pilot.pause(0.005)
        print(time.perf_counter() - t0, sum(drawing.values()))
asyncio.run(main())
"""


def bench_reopen(steps: int = 1_000_000, rounds: int = 7) -> None:
    import statistics

    from twinkle_tui.runs.metrics_cache import CACHE_DIR

    with tempfile.TemporaryDirectory() as tmp:
        home, empty = Path(tmp) / "home", Path(tmp) / "empty"
        empty.mkdir()
        write_run(home, "big", steps)
        metrics = home / "big" / "metrics.jsonl"
        size_mb = metrics.stat().st_size / 1e6

        def child(h: Path, last_step: int, preread: bool = False) -> tuple[float, float]:
            code = REOPEN_CHILD.format(repo=str(REPO), home=str(h), last_step=last_step, preread=preread)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            total, drawing = out.stdout.strip().splitlines()[-1].split()
            return float(total), float(drawing)

        def json_loop() -> float:
            t = time.perf_counter()
            with open(metrics, "rb") as f:
                for line in f:
                    json.loads(line)
            return time.perf_counter() - t

        json_loop()  # the page cache holds the file for every side
        child(empty, 0)  # and the import caches
        loops, firsts, reopens, in_memory, empties, draws = [], [], [], [], [], []
        for _ in range(rounds):
            loops.append(json_loop())
            shutil.rmtree(home / CACHE_DIR, ignore_errors=True)
            firsts.append(child(home, steps)[0])  # no cache: parses the whole file (and writes the cache)
            assert (home / CACHE_DIR / "big.metrics").is_file(), "the first open wrote no cache"
            total, drawing = child(home, steps)
            reopens.append(total)
            draws.append(drawing)
            in_memory.append(child(home, steps, preread=True)[0])
            empties.append(child(empty, 0)[0])
    loop, first, reopen = statistics.median(loops), statistics.median(firsts), statistics.median(reopens)
    memory, empty_frame, draw = statistics.median(in_memory), statistics.median(empties), statistics.median(draws)
    print(f"reopen a finished {steps:,}-step run ({size_mb:.0f} MB of metrics.jsonl), launch to its full chart on "
          f"screen, median of {rounds} interleaved rounds:")
    print(f"  json.loads loop over the file: {loop:.2f} s   first open (no cache): {first:.2f} s = {first / loop:.2f}x   "
          f"reopen (cache): {reopen:.2f} s = {reopen / loop:.2f}x   [target reopen <= 0.3x]")
    print(f"  the same first frame with the run already in memory (an empty home's first frame plus drawing the run): "
          f"{memory:.2f} s   reopen / that: {reopen / memory:.2f}x   [target <= 1.0x]")
    print(f"  (empty home, first frame: {empty_frame:.2f} s; the charts' draw and plotext build in the reopen: "
          f"{draw * 1000:.0f} ms; the rest of drawing a run is the log, status, list and layout)")


# ---------------------------------------------------------------------------------------------------- many
MANY_CHILD = PREFETCHED_APP + r"""

async def main():
    app = TwinkleApp(store=store, watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"),
                     monitor_interval=None)
    async with app.run_test(size=(160, 48)) as pilot:
        want = {runs}

        def drawn(run_id):
            view = app.current_view()
            charts = app.chart_grid.charts()
            return (app.selected == run_id and view is not None and view.metrics.names() and charts
                    and all(c._last is not None and c._last[0] is view and c._built is not None for c in charts))

        async def until(condition):
            deadline = time.monotonic() + 60
            while not condition():
                if time.monotonic() > deadline:
                    raise TimeoutError("the dashboard never got there")
                await pilot.pause(0.002)

        await until(lambda: len(app.run_list._rows) == want and (want == 0 or drawn(app.run_list._rows[0])))
        first = time.perf_counter() - t0
        if not {lag}:
            print(first, 0, 0, 0)
            return
        down, page, typing = [], [], []
        for _ in range(12):  # each key selects the next run: its metrics are read and its charts drawn
            nxt = app.run_list._rows[app.run_list._cursor + 1]
            t = time.perf_counter()
            await pilot.press("down")
            await until(lambda: drawn(nxt))
            down.append(time.perf_counter() - t)
        for key in ("pagedown", "pageup") * 2:  # a page down and back (a list of 20 runs has room for one page)
            row = app.run_list._cursor
            t = time.perf_counter()
            await pilot.press(key)
            await until(lambda: app.run_list._cursor != row and drawn(app.run_list._rows[app.run_list._cursor]))
            page.append(time.perf_counter() - t)
        await pilot.press("f")
        for text in ("r", "ru", "run", "run-", "run-0", "run-00", "run-001"):  # fewer matches at every key
            expected = [r for r in app.run_list._rows if text in r] if len(text) > 1 else None
            t = time.perf_counter()
            await pilot.press(text[-1])
            await until(lambda: app.run_list.filter_text == text)
            await pilot.pause(0)  # the frame that shows the filtered list
            typing.append(time.perf_counter() - t)
        assert app.run_list._rows and all("run-001" in r for r in app.run_list._rows), app.run_list._rows[:3]
        print(first, statistics.median(down), statistics.median(page), statistics.median(typing))
asyncio.run(main())
"""


def write_home(home: Path, runs: int, live: int, steps: int = 200) -> list[subprocess.Popen[bytes]]:
    """`runs` runs, the newest `live` of them running (a real process each), the others completed, failed or
    stopped; returns the live processes (the caller ends them)."""
    from twinkle_trainer.protocol import process_start_time

    home.mkdir(parents=True)
    template = home / ".template.jsonl"
    write_metrics(template, steps)
    procs = []
    for i in range(runs):
        run_id = f"run-{i:04d}"
        write_run(home, run_id, steps, metrics_file=template)
        meta_path = home / run_id / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta.update(start_time=1.7e9 + i * 600, end_time=1.7e9 + i * 600 + 300, model_id=
                    ("builtin:smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B")[i % 3],
                    status=("completed", "failed", "stopped", "completed")[i % 4])
        if i >= runs - live:
            proc = subprocess.Popen(["sleep", "3600"])
            procs.append(proc)
            meta.update(status="running", end_time=None, pid=proc.pid, pid_start_time=process_start_time(proc.pid))
        meta_path.write_text(json.dumps(meta))
    template.unlink()
    return procs


def bench_many(rounds: int = 5) -> None:
    import statistics

    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            many, few, empty = Path(tmp) / "many", Path(tmp) / "few", Path(tmp) / "empty"
            procs += write_home(many, 1000, 10)
            procs += write_home(few, 20, 10)  # the same live runs at the top as the big home: like for like
            empty.mkdir()

            def child(home: Path, runs: int, lag: bool = False) -> list[float]:
                code = MANY_CHILD.format(repo=str(REPO), home=str(home), runs=runs, lag=lag, preread=False)
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]

            child(empty, 0)  # warm the import caches
            firsts: dict[str, list[float]] = {"many": [], "empty": []}
            lags: dict[str, list[list[float]]] = {"many": [], "few": []}
            for _ in range(rounds):
                firsts["empty"].append(child(empty, 0)[0])
                firsts["many"].append(child(many, 1000)[0])
                lags["few"].append(child(few, 20, lag=True)[1:])
                lags["many"].append(child(many, 1000, lag=True)[1:])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    e, m = statistics.median(firsts["empty"]), statistics.median(firsts["many"])
    print(f"a home of 1,000 runs (990 ended, 10 live), median of {rounds} interleaved rounds:")
    print(f"  launch to first full frame: empty home {e:.2f} s   1,000 runs {m:.2f} s   ratio {m / e:.2f}x   "
          f"[target <= 1.5x]")
    names = ("down (select and draw the next run)", "page down", "a key typed in the filter")
    for k, name in enumerate(names):
        f = statistics.median(r[k] for r in lags["few"])
        g = statistics.median(r[k] for r in lags["many"])
        print(f"  {name}: 20 runs {f * 1000:.0f} ms   1,000 runs {g * 1000:.0f} ms   ratio {g / f:.2f}x   "
              f"[target <= 1.2x]")


if __name__ == "__main__":
    which = sys.argv[1:] or ["chart", "startup", "idle", "reopen", "many"]
    for name in which:
        if name.startswith("reopen="):  # reopen=STEPS, for a quick look at a smaller run
            bench_reopen(int(name.split("=", 1)[1]))
            continue
        {"chart": bench_chart, "startup": bench_startup, "idle": bench_idle, "reopen": bench_reopen,
         "many": bench_many}[name]()
