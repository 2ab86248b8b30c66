"""How often the chat agent does what was asked: a fixed set of requests over prepared runs (three ended runs with
known metrics and a monitor finding, and one live toy run for the control requests), each with a checker that
looks at what was done (the commands called, with which run, the confirmations asked) and what was said (the
answer and the results shown), never at wording.

    python bench/eval_agent.py                       # fast routes alone (no LLM), then the embedded LLM
    python bench/eval_agent.py --config routes --config embedded --config embedded-tools
    python bench/eval_agent.py --config embedded --gguf ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf
    python bench/eval_agent.py --config endpoint --base-url http://localhost:11434/v1 --model qwen2.5:0.5b

Configurations: `routes` (fast routes only: what needs no LLM), `embedded` (routes, then the constrained intent
step on the embedded llama.cpp server), `embedded-tools` (no routes, tool calling on the embedded server: the way
before routes and intents, the baseline), `endpoint` (routes, then tool calling on an OpenAI-compatible endpoint).
Destructive requests are answered "no" at the confirmation, so nothing is lost; a destructive request passes only
if it was confirmed. Prints success, valid-call rate (calls that validated and ran, of all calls made) and median
latency of routed requests and of the rest, per configuration; the machine's load is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from twinkle_trainer.protocol import RunPaths, read_meta, record_event  # noqa: E402
from twinkle_tui.agent import AgentLoop, History  # noqa: E402
from twinkle_tui.agent.connect import connect  # noqa: E402
from twinkle_tui.agent.endpoint import EndpointError, LLMSettings  # noqa: E402
from twinkle_tui.agent.loop import QuietEvents  # noqa: E402
from twinkle_tui.agent.routes import route  # noqa: E402
from twinkle_tui.commands import CommandRunner, Confirmation, Outcome, Session  # noqa: E402

from run_factory import make_run  # noqa: E402

SFT, DIV, GRPO, LIVE = "sft-smollm2-1526-a1b2", "toy-diverge-0900-ffff", "grpo-arith-1000-c3d4", "toy-live-1100-0000"
DESTRUCTIVE = {"stop_training", "kill_training", "delete_run", "archive_run", "start_training", "update_script",
               "start_server", "shutdown_server", "undo_fix"}
CONTROL = {"pause_training", "resume_training"} | DESTRUCTIVE


@dataclass
class Record:
    """What one request did and said."""

    calls: list[tuple[str, dict[str, Any], Outcome]] = field(default_factory=list)
    confirmations: list[str] = field(default_factory=list)
    answer: str = ""
    error: str = ""
    seconds: float = 0.0
    path: str = ""

    @property
    def shown(self) -> str:
        """What the user saw: the answer and each result's first lines (as the chat's tool lines show them)."""
        return self.answer + "\n" + "\n".join(o.text[:300] for _, _, o in self.calls)

    def called(self, name: str, run: str | None = None, **args: Any) -> bool:
        for n, a, _ in self.calls:
            if n != name:
                continue
            given = str(a.get("run_id") or "")
            if run is not None and not (given and run.startswith(given)):  # the id or a prefix of it
                continue
            if all(a.get(k) == v for k, v in args.items()):
                return True
        return False

    def says(self, *words: str) -> bool:
        low = self.shown.lower()
        return all(w.lower() in low for w in words)

    def did_control(self) -> bool:
        return any(n in CONTROL for n, _, _ in self.calls)


class RecordingRunner(CommandRunner):
    """A CommandRunner that keeps every call and answers every confirmation with no."""

    def __init__(self, session: Session) -> None:
        self.record = Record()

        async def decline(c: Confirmation) -> bool:
            self.record.confirmations.append(c.title)
            return False

        super().__init__(session, decline)

    async def run(self, name: str, args: dict[str, Any] | None = None, confirmed: bool = False) -> Outcome:
        outcome = await super().run(name, args, confirmed)
        self.record.calls.append((name, dict(args or {}), outcome))
        return outcome


Check = Callable[[Record], bool]


@dataclass(frozen=True)
class Task:
    text: str
    check: Check
    kind: str  # status, analysis, control, navigation, confirm, general
    select: str | None = None  # the run selected in the dashboard when it is asked


def lowest_loss(home: Path) -> str:
    best = min((float(json.loads(line)["loss"]), run)
               for run in (SFT, GRPO) for line in (home / run / "metrics.jsonl").read_text().splitlines()[-1:])
    return best[1]


def tasks(home: Path) -> list[Task]:
    low = lowest_loss(home)
    return [
        # status
        Task("list my runs", lambda r: r.called("list_training_runs") or r.says(SFT, DIV, GRPO), "status"),
        Task("which runs do I have?", lambda r: r.says(SFT, DIV, GRPO) and not r.did_control(), "status"),
        Task("how is my run going?", lambda r: r.called("get_training_status", LIVE) and not r.did_control(),
             "status", select=LIVE),
        Task("how is the grpo run going?", lambda r: (r.called("get_training_status", GRPO) or
                                                      r.called("get_metrics", GRPO)) and not r.did_control(), "status"),
        Task("what's the status of toy-diverge?", lambda r: r.says("failed") and r.called("get_training_status", DIV),
             "status"),
        Task("how many steps has the sft run done?", lambda r: r.says("100") and not r.did_control(), "status"),
        Task("is anything failing?", lambda r: r.says(DIV) and not r.did_control(), "status"),
        Task("did any of my runs crash?", lambda r: r.says(DIV) and not r.did_control(), "status"),
        # analysis
        Task("which run has the lowest loss?", lambda r: r.says(low) and not r.did_control(), "analysis"),
        Task("which run has the highest reward?", lambda r: r.says(GRPO) and not r.did_control(), "analysis"),
        Task("when did toy-diverge diverge?", lambda r: r.says("41") and not r.did_control(), "analysis"),
        Task("why did toy-diverge fail?", lambda r: (r.says("nan") or r.says("diverg")) and not r.did_control(),
             "analysis"),
        Task("what is the loss of the sft run?", lambda r: r.called("get_metrics", SFT) or
             (r.called("get_training_status", SFT) and r.says("loss")), "analysis"),
        Task("is the loss of grpo-arith still going down?", lambda r: (r.called("get_metrics", GRPO) or
                                                                      r.called("get_training_status", GRPO))
             and not r.did_control(), "analysis"),
        Task("what went wrong with the toy diverge run?", lambda r: r.says("41") and not r.did_control(), "analysis"),
        Task("when did the loss blow up in toy-diverge?", lambda r: r.says("41") and not r.did_control(), "analysis"),
        Task("do not pause the live run, just tell me its loss",
             lambda r: not r.did_control() and (r.called("get_metrics", LIVE) or r.called("get_training_status", LIVE)),
             "analysis"),
        # control (the live run)
        Task("pause the live toy run", lambda r: r.called("pause_training", LIVE), "control"),
        Task("resume toy-live", lambda r: r.called("resume_training", LIVE), "control"),
        Task("pause it", lambda r: r.called("pause_training", LIVE), "control", select=LIVE),
        Task("continue the training", lambda r: r.called("resume_training", LIVE), "control", select=LIVE),
        Task("could you please pause toy-live for me?", lambda r: r.called("pause_training", LIVE), "control"),
        Task("resume the live run please", lambda r: r.called("resume_training", LIVE), "control"),
        Task("don't stop anything, how far is the live run?",
             lambda r: not r.did_control() and r.called("get_training_status", LIVE), "control"),
        # confirmations (declined: nothing is lost)
        Task("stop the live run", lambda r: r.called("stop_training", LIVE) and len(r.confirmations) == 1, "confirm"),
        Task("kill toy-live", lambda r: r.called("kill_training", LIVE) and len(r.confirmations) == 1, "confirm"),
        Task("delete the toy diverge run", lambda r: r.called("delete_run", DIV) and r.confirmations ==
             [f"Delete run {DIV}?"], "confirm"),
        Task("archive grpo-arith", lambda r: r.called("archive_run", GRPO) and len(r.confirmations) == 1, "confirm"),
        # navigation
        Task("select the sft run", lambda r: r.called("select_run", SFT), "navigation"),
        Task("show toy-diverge", lambda r: r.called("select_run", DIV), "navigation"),
        Task("compare the sft run with grpo-arith", lambda r: r.called("compare_runs", GRPO) and
             r.called("select_run", SFT), "navigation"),
        Task("compare it with toy-diverge", lambda r: r.called("compare_runs", DIV), "navigation", select=SFT),
        Task("put the sft run next to the grpo one", lambda r: r.called("compare_runs"), "navigation"),
        Task("show the loss and grad norm", lambda r: r.called("select_metrics", names=["loss", "grad_norm"]),
             "navigation", select=SFT),
        Task("plot the learning rate", lambda r: r.called("select_metrics", names=["learning rate"]), "navigation",
             select=SFT),
        Task("zoom to steps 20-60", lambda r: r.called("zoom_metrics", start=20, end=60), "navigation", select=SFT),
        Task("show me steps 10 to 30", lambda r: r.called("zoom_metrics", start=10, end=30), "navigation",
             select=SFT),
        Task("reset the zoom", lambda r: r.called("zoom_metrics", reset=True), "navigation", select=SFT),
        Task("show all steps again", lambda r: r.called("zoom_metrics", reset=True), "navigation", select=SFT),
        Task("show me the log of toy-diverge", lambda r: r.called("read_log", DIV), "navigation"),
        Task("what GPUs does this machine have?", lambda r: r.called("get_cluster_info"), "navigation"),
        # general
        Task("what is a learning rate?", lambda r: len(r.answer.strip()) > 20 and not r.did_control(), "general"),
    ]


def prepare(home: Path) -> subprocess.Popen[bytes] | None:
    """Three ended runs with known data (one diverged, with the monitor's finding) and one live toy run."""
    make_run(home, SFT, steps=100)
    root = make_run(home, DIV, steps=60, start=1_790_001_000, metrics=("loss", "grad_norm"), status="failed",
                    nan_at=tuple(range(41, 61)), extra_meta={"error": "loss became NaN"})
    record_event(RunPaths(root), "error", clock=lambda: 1_790_001_020.0, rule="nan_loss", severity="critical",
                 message="the loss is NaN from step 41 on", evidence=["loss NaN at step 41"], step=41,
                 source="monitor")
    make_run(home, GRPO, steps=80, start=1_790_002_000, metrics=("loss", "reward"))
    from twinkle_tui.process.controller import ProcessController

    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(REPO / "examples" / "toy_regression.py", ["--steps", "1000000", "--sleep", "0.5"],
                                 run_id=LIVE)
    deadline = time.monotonic() + 60
    while read_meta(ctl.paths(LIVE)).status != "running":
        if time.monotonic() > deadline:
            raise SystemExit("the live toy run did not start")
        time.sleep(0.2)
    return launched.supervisor


async def evaluate(name: str, home: Path, settings: LLMSettings | None, routes: bool,
                   only: int | None) -> list[tuple[Task, Record, bool]]:
    session = Session.open(home)
    connection = None
    if settings is not None:
        connection = await connect(settings, home)
        if connection.settings is None:
            raise SystemExit(f"{name}: {connection.notice}")
        settings = connection.settings
        print(f"[{name}] {connection.notice.split('. ')[0]}", flush=True)
    out = []
    try:
        for task in tasks(home)[:only]:
            if task.select:
                session.select(task.select)
            runner = RecordingRunner(session)
            record = runner.record
            started = time.perf_counter()
            if settings is None:  # routes alone: what needs no LLM
                plan = route(task.text, session)
                record.path = "route" if plan else "none"
                for step in plan.steps if plan else ():
                    outcome = await runner.run(step.command, step.args)
                    if not outcome.ok:
                        break
                record.answer = record.calls[-1][2].text if record.calls else ""
            else:
                loop = AgentLoop(settings, runner, History(), routes=routes)
                try:
                    record.answer = await loop.ask(task.text, QuietEvents())
                except EndpointError as exc:
                    record.error = str(exc)
                record.path = loop.path
            record.seconds = time.perf_counter() - started
            ok = task.check(record)
            out.append((task, record, ok))
            mark = "ok  " if ok else "FAIL"
            print(f"[{name}] {mark} {record.seconds:6.2f}s {record.path:12} {task.text!r}"
                  + ("" if ok else f" -> {[(n, a) for n, a, _ in record.calls]} {record.answer[:100]!r}"
                     f"{' ' + record.error if record.error else ''}"), flush=True)
            session.clear_selection()
            session.settings.zoom = None
    finally:
        if connection is not None:
            connection.close()
    return out


def summarize(name: str, results: list[tuple[Task, Record, bool]]) -> str:
    done = sum(ok for _, _, ok in results)
    calls = [o for _, r, _ in results for _, _, o in r.calls]
    valid = sum(o.ok or o.refused for o in calls)
    destructive = [(t, r) for t, r, _ in results if t.kind == "confirm"]
    confirmed = sum(bool(r.confirmations) for _, r in destructive)
    unasked = sum(1 for _, r, _ in results for n, _, o in r.calls if n in DESTRUCTIVE and not r.confirmations)
    routed = [r.seconds for _, r, _ in results if r.path == "route"]
    rest = [r.seconds for _, r, _ in results if r.path not in ("route", "none")]

    def median(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}s (n={len(xs)})" if xs else "–"

    return (f"{name:15} done {done}/{len(results)} ({done / max(len(results), 1):.0%}) · valid calls "
            f"{valid}/{len(calls)} · destructive confirmed {confirmed}/{len(destructive)}, run unasked {unasked} · "
            f"median routed {median(routed)} · median LLM {median(rest)}")


async def main(ns: argparse.Namespace) -> None:
    summaries = []
    for name in ns.config:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            supervisor = prepare(home)
            try:
                if name == "routes":
                    results = await evaluate(name, home, None, True, ns.limit)
                else:
                    settings = LLMSettings(mode="embedded", gguf=ns.gguf, deadline=ns.deadline, threads=ns.threads,
                                           agent="auto" if name == "embedded" else "tools")
                    if name == "endpoint":
                        settings = LLMSettings(base_url=ns.base_url, model=ns.model, api_key=ns.api_key, mode="auto",
                                               deadline=ns.deadline, agent="tools")
                    results = await evaluate(name, home, settings, name != "embedded-tools", ns.limit)
            finally:
                from conftest import kill_live_runs

                kill_live_runs(home)
                if supervisor is not None:
                    supervisor.wait(timeout=30)
            summaries.append(summarize(name, results))
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print("\n".join(summaries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=("routes", "embedded", "embedded-tools", "endpoint"))
    parser.add_argument("--gguf", default=None, help="the embedded LLM's GGUF (default: the bundled SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--base-url", default="http://localhost:11434/v1")
    parser.add_argument("--model", default="qwen2.5:0.5b")
    parser.add_argument("--api-key", default="not-needed")
    args = parser.parse_args()
    args.config = args.config or ["routes", "embedded"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped evaluation still kills its live run
    if not math.isfinite(args.deadline) or args.deadline <= 0:
        parser.error("--deadline must be a positive number of seconds")
    asyncio.run(main(args))
