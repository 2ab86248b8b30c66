"""Regenerate screenshots/ from the real app over real runs of the bundled example.

    python screenshots/make_screenshots.py            # all of them
    python screenshots/make_screenshots.py research   # only the research view (a real research of examples/research)

Runs are made in a temporary $TWINKLE_HOME: one finished, one that crashed, one live (for the stop confirmation),
and one that crashes while the dashboard watches it (the monitor's finding in the chat). The app is driven with
Textual's Pilot, without an LLM (slash commands only), so every screen is the same from one regeneration to the
next; each is saved as SVG, and as PNG when cairosvg is installed (pip install cairosvg).
"""

from __future__ import annotations

import asyncio
import html
import os
import re
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
    from twinkle_tui.process.controller import ProcessController
    from twinkle_tui.ui.app import TwinkleApp
    from twinkle_tui.ui.widgets.chat import ChatMessage

    shots: list[Path] = []

    def app_for(run_id: str, **kw: object) -> TwinkleApp:
        kw.setdefault("monitor_interval", None)
        return TwinkleApp(home=home, run_id=run_id, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"),
                          data_interval=0.0, **kw)  # type: ignore[arg-type]

    async def save(app: TwinkleApp, name: str) -> None:
        path = out / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
        shots.append(path)

    app = app_for("toy-sft-lr1e-2")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(2.0)
        await save(app, "main")
        app.action_view_command("set_chart_options", {"smoothing": True})
        app.action_view_command("zoom_metrics", {"start": 1, "end": 500})
        await pilot.pause(1.0)
        await save(app, "zoom-smoothing")
        app.action_view_command("zoom_metrics", {"reset": True})
        app.action_view_command("set_chart_options", {"smoothing": False})
        await pilot.press("m")
        await pilot.pause(0.8)
        await save(app, "metric-picker")
        await pilot.press("escape", "question_mark")
        await pilot.pause(0.8)
        await save(app, "help")
        await pilot.press("escape", "slash")
        for line in ("/status", "/runs"):
            await pilot.press(*line, "enter")
            await pilot.pause(0.5)
        await pilot.pause(0.5)
        await save(app, "chat-commands")
    app = app_for("toy-crash", watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(2.0)
        await save(app, "failed-run")
    app = app_for("toy-live")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(3.0)
        await save(app, "live-run")
        await pilot.press("s")
        await pilot.pause(0.8)
        await save(app, "stop-confirmation")
        await pilot.press("y")
        await pilot.pause(2.0)
    app = app_for("toy-live", watch=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(2.0)
        await save(app, "small-terminal")
    ctl = ProcessController(home, grace=10)
    diverging = ctl.launch_script(TOY, ["--steps", "400", "--diverge-at", "260", "--sleep", "0.01"],
                                  run_id="toy-diverge")
    app = app_for("toy-diverge", monitor_interval=0.5)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("toy-diverge" in str(m._markdown) for m in app.query(ChatMessage) if m.has_class("error")):
                break
            await pilot.pause(0.2)
        else:
            raise SystemExit("the monitor reported nothing on toy-diverge within 120 s")
        await pilot.pause(1.5)
        await save(app, "monitor-finding")
    diverging.supervisor.wait(timeout=120)  # before the temporary home is removed
    return shots


BRAILLE_SPAN = re.compile(r'<text class="([^"]+)" x="([0-9.]+)" y="([0-9.]+)" textLength="([0-9.]+)" '
                          r'clip-path="([^"]+)">([^<]*[\u2800-\u28ff][^<]*)</text>')


def one_cell_per_glyph(svg: str) -> str:
    """Place each character of a span with braille (the charts' lines) in its own cell. The monospace fonts here
    have no braille, the fallback's glyphs are wider, and cairosvg ignores textLength: a chart's line would run
    past its frame in the PNG, though not in the terminal or in the SVG in a browser."""

    def split(m: re.Match[str]) -> str:
        cls, x, y, length, clip, text = m.groups()
        chars = html.unescape(text)
        cell = float(length) / max(1, len(chars))
        return "".join(f'<text class="{cls}" x="{float(x) + i * cell:.1f}" y="{y}" clip-path="{clip}">'
                       f"{html.escape(c)}</text>" for i, c in enumerate(chars) if not c.isspace())

    return BRAILLE_SPAN.sub(split, svg)


def to_png(svgs: list[Path]) -> None:
    try:
        import cairosvg
    except ImportError:
        print("cairosvg is not installed: SVG only (pip install cairosvg for PNG)")
        return
    for svg in svgs:
        cairosvg.svg2png(bytestring=one_cell_per_glyph(svg.read_text()).encode(),
                         write_to=str(svg.with_suffix(".png")), output_width=1600)


async def shoot_research(home: Path, out: Path) -> list[Path]:
    """The research view over a real research of examples/research (Optuna, two lanes), taken while its last
    experiments run, so the live chart has something to show."""
    import json
    import subprocess

    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp

    program = REPO / "examples" / "research" / "PROGRAM.md"
    loop = subprocess.Popen([sys.executable, "-m", "twinkle_tui.research", str(program), "--proposer", "optuna",
                             "--experiments", "12", "--lanes", "2"], stdout=subprocess.DEVNULL, cwd=REPO)
    state = home / "research" / "toy-regression" / "state.json"
    results = home / "research" / "toy-regression" / "results.tsv"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rows = len(results.read_text().splitlines()) - 1 if results.exists() else 0
        inflight = json.loads(state.read_text()).get("inflight") if state.exists() else None
        if rows >= 8 and inflight and all((home / s["run_id"] / "metrics.jsonl").exists() for s in inflight.values()):
            break
        time.sleep(0.3)
    time.sleep(2.5)
    app = TwinkleApp(home=home, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"), data_interval=0.0,
                     monitor_interval=None, watch=False)
    path = out / "research.svg"
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(1.0)
        await pilot.press("R")
        await pilot.pause(2.0)
        await pilot.press("down")  # the second best: its knobs in the diff panel
        await pilot.pause(1.0)
        app.save_screenshot(filename=path.name, path=str(out))
    loop.wait(timeout=600)
    return [path]


def main() -> None:
    only_research = sys.argv[1:] == ["research"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["TWINKLE_HOME"] = str(home)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        shots = []
        if not only_research:
            make_runs(home)
            shots += asyncio.run(shoot(home, HERE))
        shots += asyncio.run(shoot_research(home, HERE))
        to_png(shots)
    for s in shots:
        print(f"wrote {s.relative_to(REPO)}")


if __name__ == "__main__":
    main()
