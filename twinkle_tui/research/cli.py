"""`twinkle-tui research PROGRAM.md ...` (headless: progress lines, exit 0 when the experiments are done) and
`twinkle-tui research report NAME` (the summary, and a PNG of the progress chart)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from twinkle_trainer.protocol import twinkle_home

PROG = "twinkle-tui research"
EXIT_BAD_INPUT = 2


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from twinkle_tui.agent.flags import add_llm_arguments

    p = argparse.ArgumentParser(prog=PROG, description="Run experiments on a training program, keep what improves "
                                "its metric (see PROGRAM.md's front matter). `twinkle-tui research report NAME` "
                                "summarizes one.")
    p.add_argument("program", metavar="PROGRAM.md")
    p.add_argument("--experiments", type=positive_int, help="experiments to run, the baseline included")
    p.add_argument("--budget", type=positive_float, metavar="SECONDS", help="time limit of each experiment")
    p.add_argument("--lanes", type=positive_int, help="experiments at once (one per GPU, or CPU processes)")
    p.add_argument("--proposer", choices=("llm", "optuna"), help="llm: code edits; optuna: tune the knobs")
    p.add_argument("--review", action="store_true", default=None, help="each proposal waits for your yes")
    p.add_argument("--resume", action="store_true", help="continue the research where it stopped")
    p.add_argument("--repeats", type=positive_int, help="baseline runs, to measure the run-to-run noise")
    p.add_argument("--cluster", metavar="ray|ray://ADDRESS", help="run experiments as tasks on a Ray cluster")
    p.add_argument("--grace", type=positive_float, help="seconds a stopped experiment gets before it is killed")
    p.add_argument("--home", default=None, help="runs directory (default $TWINKLE_HOME or ~/.cache/twinkle)")
    p.add_argument("--wait-when-paused", action="store_true", help=argparse.SUPPRESS)  # the dashboard's loop
    add_llm_arguments(p)
    return p


def research_main(argv: Sequence[str], out: TextIO | None = None) -> int:
    argv = list(argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:], out or sys.stdout)
    ns = build_parser().parse_args(argv)
    return run_research(ns, out or sys.stdout)


def run_research(ns: argparse.Namespace, out: TextIO) -> int:
    from twinkle_tui.agent.flags import llm_settings
    from twinkle_tui.research.loop import EXIT_FAILED, ResearchLoop
    from twinkle_tui.research.program import ProgramError, load_program
    from twinkle_tui.research.ray_runner import ClusterError
    from twinkle_tui.research.setup import Overrides, ResearchError, make_proposer, make_runner, open_research
    from twinkle_tui.runs.home import home_problem, setup_logging

    def fail(text: str) -> int:
        print(f"{PROG}: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT

    problem = home_problem(ns.home)
    if problem:
        return fail(problem)
    setup_logging(ns.home, False)
    home = twinkle_home(ns.home).resolve()
    try:
        program = load_program(ns.program)
        flags = Overrides(ns.experiments, ns.budget, ns.lanes, ns.proposer, ns.review, ns.repeats, ns.cluster,
                          ns.grace)
        research, settings, loop_lock = open_research(program, home, ns.resume, flags)
    except (ProgramError, ResearchError) as exc:
        return fail(str(exc))
    closer = None
    try:
        proposer, closer = make_proposer(settings.proposer, program, research, settings.lanes, llm_settings(ns), home)
        runner = make_runner(settings.cluster)
    except (ResearchError, ClusterError) as exc:
        if closer is not None:
            closer.close()
        os.close(loop_lock)
        if not ns.resume:  # nothing ran: a new research that cannot start leaves nothing behind
            shutil.rmtree(research.root, ignore_errors=True)
        return fail(str(exc))
    say = Printer(out)
    say(f"research {research.name}: {settings.proposer} proposer · {settings.experiments} experiments · "
        f"{settings.lanes} lane(s){' on ' + settings.cluster if settings.cluster else ''} · budget "
        f"{settings.budget:g} s each · {program.metric} ({program.goal}) · {research.root}")
    loop = ResearchLoop(research, program, settings, proposer, home, say, runner,
                        wait_when_paused=ns.wait_when_paused)
    interrupts = Interrupts(loop)
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    previous_term = signal.signal(signal.SIGTERM, interrupts.handle)
    if settings.review and sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=read_answers, args=(research, sys.stdin, say), daemon=True).start()
    try:
        return loop.run()
    except Exception as exc:  # the loop's own failure: one line here, the traceback in the log
        import logging

        logging.getLogger(__name__).exception("the research loop failed")
        say(f"{PROG}: the loop failed: {type(exc).__name__}: {exc} (details in the log; --resume continues)")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        if closer is not None:
            closer.close()
        os.close(loop_lock)


class Printer:
    """Progress lines to stdout; a closed pipe does not stop the research."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.RLock()  # reentrant: a Ctrl-C handler may print while the main thread prints

    def __call__(self, text: str) -> None:
        with self.lock:
            try:
                self.out.write(text + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass


class Interrupts:
    """Ctrl-C (or SIGTERM) once: stop the experiments gracefully and end the loop; twice: kill them."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.count = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.loop.say(f"{PROG}: stopping the experiments (checkpoint, then exit); Ctrl-C again to kill them")
            self.loop.request_stop("interrupted (Ctrl-C)" if signum == signal.SIGINT else "interrupted (SIGTERM)")
            return
        from twinkle_tui.process.controller import ProcessController, RunControlError
        from twinkle_tui.runs.store import NoSuchRun

        controller = ProcessController(self.loop.home)
        for slot in list(self.loop.state.get("inflight", {}).values()):
            try:
                controller.kill(slot["run_id"])
            except (RunControlError, NoSuchRun):
                pass


def read_answers(research: Any, stream: TextIO, say: Any) -> None:
    """--review in a terminal: y or n answers the oldest proposal waiting for review (the next one, if none
    waits yet)."""
    import time

    for line in stream:
        answer = line.strip().lower()
        if not answer:
            continue
        while not (pending := research.pending_reviews()):
            time.sleep(0.1)
        if answer not in ("y", "yes", "n", "no"):
            say(f"{PROG}: answer y or n for {pending[0]['id']}")
            continue
        research.decide(pending[0]["id"], answer.startswith("y"))


def report_main(argv: Sequence[str], out: TextIO) -> int:
    from twinkle_tui.research.report import ReportError, write_report

    p = argparse.ArgumentParser(prog=f"{PROG} report", description="The summary of a research, and a PNG of its "
                                "progress chart (progress.png in the research's folder unless --png says where).")
    p.add_argument("name", help="the research's name (its folder under $TWINKLE_HOME/research/)")
    p.add_argument("--png", metavar="PATH", help="where to write the chart")
    p.add_argument("--home", default=None)
    ns = p.parse_args(argv)
    try:
        text, png = write_report(ns.name, twinkle_home(ns.home), Path(ns.png) if ns.png else None)
    except ReportError as exc:
        print(f"{PROG} report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.write(text + f"\nchart: {png}\n")
    return 0
