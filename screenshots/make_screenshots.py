"""Regenerate screenshots/ from the real app over real runs of the bundled example.

    python screenshots/make_screenshots.py

Three runs are made in a temporary $TWINKLE_HOME: one finished, one that crashed, and one live (for the stop
confirmation). The app is driven with Textual's Pilot; each screen is saved as SVG, and as PNG when cairosvg is
installed (pip install cairosvg).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
TOY = REPO / "examples" / "toy_regression.py"


def make_runs(home: Path) -> str:
    from twinkle_tui.process.controller import ProcessController

    ctl = ProcessController(home, grace=10)
    done = ctl.launch_script(TOY, ["--steps", "1500", "--lr", "0.01"], run_id="toy-sft-lr1e-2")
    crash = ctl.launch_script(TOY, ["--steps", "600", "--fail-at", "377"], run_id="toy-crash")
    done.supervisor.wait(timeout=300)
    crash.supervisor.wait(timeout=300)
    ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.01"], run_id="toy-live")
    deadline = time.time() + 60
    while time.time() < deadline and not (home / "toy-live" / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(3)
    return "toy-live"


async def shoot(home: Path, out: Path) -> list[Path]:
    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp

    shots: list[Path] = []

    async def save(app: TwinkleApp, name: str) -> None:
        path = out / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
        shots.append(path)

    app = TwinkleApp(home=home, run_id="toy-sft-lr1e-2", watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(2.0)
        await save(app, "main")
        await pilot.press("e")  # smoothing on, zoomed to the first third
        app.set_zoom(1, 500)
        await pilot.pause(1.0)
        await save(app, "zoom-smoothing")
        app.action_reset_zoom()
        app.settings.smoothing = False
        await pilot.press("m")
        await pilot.pause(0.8)
        await save(app, "metric-picker")
        await pilot.press("escape", "question_mark")
        await pilot.pause(0.8)
        await save(app, "help")
    app = TwinkleApp(home=home, run_id="toy-crash", watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(2.0)
        await save(app, "failed-run")
    app = TwinkleApp(home=home, run_id="toy-live", gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(3.0)
        await save(app, "live-run")
        await pilot.press("s")
        await pilot.pause(0.8)
        await save(app, "stop-confirmation")
        await pilot.press("y")
        await pilot.pause(2.0)
    app = TwinkleApp(home=home, run_id="toy-live", watch=False, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(2.0)
        await save(app, "small-terminal")
    return shots


def to_png(svgs: list[Path]) -> None:
    try:
        import cairosvg
    except ImportError:
        print("cairosvg is not installed: SVG only (pip install cairosvg for PNG)")
        return
    for svg in svgs:
        cairosvg.svg2png(url=str(svg), write_to=str(svg.with_suffix(".png")), output_width=1600)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["TWINKLE_HOME"] = str(home)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        make_runs(home)
        shots = asyncio.run(shoot(home, HERE))
        to_png(shots)
    for s in shots:
        print(f"wrote {s.relative_to(REPO)}")


if __name__ == "__main__":
    main()
