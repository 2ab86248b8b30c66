"""The `twinkle-tui` command: the dashboard, `--run script.py` headless, or `--ask "question"` for the agent alone."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from twinkle_trainer.protocol import HOME_ENV, InvalidRunId, twinkle_home, validate_run_id
from twinkle_tui import __version__
from twinkle_tui.agent.flags import add_llm_arguments, llm_settings
from twinkle_tui.runs.home import home_problem, setup_logging

if TYPE_CHECKING:
    from twinkle_tui.agent.endpoint import LLMSettings
    from twinkle_tui.runs.store import RunSummary


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="twinkle-tui",
        description="Dashboard for local LLM fine-tuning runs. `twinkle-tui --run train.py [-- args]` runs headless.",
        epilog="other commands:\n"
               "  twinkle-tui doctor RUN_ID     the monitor's findings for one run (a unique prefix is enough);\n"
               "                                exit 1 on a warning or worse (twinkle-tui doctor --help)\n"
               "  twinkle-tui serve [--port P]  the tinker-compatible training service (twinkle-tui serve --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", metavar="SCRIPT", help="run SCRIPT as a managed run without the dashboard")
    p.add_argument("--start", metavar="RECIPE",
                   help="start a run (a .py script, or a .toml/.yaml config for the embedded trainer) and open the dashboard on it")
    p.add_argument("-r", "--run-id", default=env("TWINKLE_AUTO_RUN_ID"), help="run id to select (or to create with --run)")
    p.add_argument("--home", default=None, help=f"runs directory (default ${HOME_ENV} or ~/.cache/twinkle)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds a stopping run gets before it is killed")
    p.add_argument("--ask", metavar="TEXT", help="ask the agent once without the dashboard: prints the tools it used "
                   "and its answer (destructive tools need --yes)")
    p.add_argument("--yes", action="store_true", help="approve destructive actions without asking")
    add_llm_arguments(p)
    p.add_argument("--monitor", action="store_true", help="with --run: watch the run with the health monitor")
    p.add_argument("--auto-fix", action="store_true",
                   help="with --run --monitor: apply the monitor's fixes of code errors and out-of-memory crashes")
    p.add_argument("--monitor-interval", type=float, default=30.0, help="seconds between the monitor's checks")
    p.add_argument("--fix-mode", choices=("off", "ask", "auto"), default="ask",
                   help="the dashboard's monitor: off, ask before applying a fix (default), or auto")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (to the log file)")
    p.add_argument("-V", "--version", action="version", version=f"twinkle-tui {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        return doctor_main(argv[1:])
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] == ["research"]:
        from twinkle_tui.research.cli import research_main

        return research_main(argv[1:])
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.run_id:
        try:
            validate_run_id(ns.run_id)
        except InvalidRunId as exc:
            print(f"twinkle-tui: {exc}", file=sys.stderr)
            return 2
    problem = home_problem(ns.home)
    if problem:
        print(f"twinkle-tui: {problem}", file=sys.stderr)
        return 2
    setup_logging(ns.home, ns.verbose)
    store = None
    if not ns.run and ns.ask is None:
        from twinkle_tui.runs.store import RunStore

        store = RunStore(ns.home)
        store.prefetch(ns.run_id)  # the first run shown is read while the UI's modules load
    llm = llm_settings(ns)
    if ns.run:
        from twinkle_tui.commands import Session
        from twinkle_tui.headless import run_headless
        from twinkle_tui.monitor.headless import HeadlessMonitor

        if ns.auto_fix and not ns.monitor:
            parser.error("--auto-fix goes with --monitor")
        session = Session.open(ns.home, grace=ns.grace)
        watch = None
        if ns.monitor:
            reviewer = monitor_llm(llm, twinkle_home(ns.home))
            watch = HeadlessMonitor(session, ns.monitor_interval, reviewer, ns.auto_fix)
        return run_headless(ns.run, script_args, ns.run_id, watch=watch, controller=session.controller)
    if ns.ask is not None:
        import asyncio

        from twinkle_tui.agent.ask import ask_once
        from twinkle_tui.research import commands as _research_commands  # noqa: F401  (start_research for the agent)

        return asyncio.run(ask_once(ns.ask, llm, twinkle_home(ns.home), yes=ns.yes, run_id=ns.run_id))
    if script_args and not ns.start:
        parser.error("arguments after -- go with --run SCRIPT or --start RECIPE")
    if ns.start and not os.path.isfile(ns.start):
        print(f"twinkle-tui: no such script or config: {ns.start}", file=sys.stderr)
        return 2
    from twinkle_tui.ui.app import TwinkleApp

    start = (ns.start, script_args) if ns.start else None
    app = TwinkleApp(home=ns.home, run_id=ns.run_id, llm=llm, grace=ns.grace, start=start, auto_yes=ns.yes,
                     monitor_interval=ns.monitor_interval, fix_mode=ns.fix_mode, store=store)
    app.run()
    message = live_runs_message(app.summaries)
    if message:  # they do keep training: say so, and how to get back to them
        print(message, file=sys.stderr)
    return app.return_code or 0


def monitor_llm(llm: LLMSettings, home: Path) -> LLMSettings | None:
    """The LLM the monitor reviews with outside the dashboard: the configured endpoint if it answers; the embedded
    one only when asked for (--llm embedded), since it competes with training for the CPU; None otherwise."""
    import asyncio

    from twinkle_tui.agent.connect import connect
    from twinkle_tui.agent.endpoint import EndpointError, probe

    if llm.mode == "none":
        return None
    if llm.mode == "embedded":
        connection = asyncio.run(connect(llm, home))
        if connection.embedded is not None:
            import atexit

            atexit.register(connection.close)
        return connection.settings
    try:
        asyncio.run(probe(llm))
        return llm
    except EndpointError as exc:
        print(f"twinkle-tui: monitor: rules only ({exc})", file=sys.stderr)
        return None


def doctor_main(argv: list[str]) -> int:
    """`twinkle-tui doctor RUN_ID`: the monitor's findings for one run (live or finished), with an LLM review when
    an endpoint answers; exit 1 when any finding is a warning or worse, 2 for bad input."""
    parser = argparse.ArgumentParser(prog="twinkle-tui doctor", description=doctor_main.__doc__)
    parser.add_argument("run_id")
    parser.add_argument("--home", default=None)
    add_llm_arguments(parser)
    ns = parser.parse_args(argv)
    import asyncio

    from twinkle_tui.commands import CommandError, CommandRunner, Confirmation, Session
    from twinkle_tui.monitor import Notice, Report, ReviewFlow, run_rules, take_snapshot

    session = Session.open(ns.home)
    try:
        run_id = session.resolve_run(ns.run_id)
    except CommandError as exc:
        print(f"twinkle-tui: {exc}", file=sys.stderr)
        return 2
    view = session.view(run_id)
    snapshot = take_snapshot(view)
    findings = sorted(run_rules(snapshot), key=lambda f: -f.level)
    print(f"{run_id}: {snapshot.status.value}, step {snapshot.last_step}"
          + (f"/{snapshot.total_steps}" if snapshot.total_steps else "")
          + (f", {snapshot.error}" if snapshot.error else ""))

    class PrintPort:
        def say(self, notice: Notice) -> None:
            print("\n".join(notice.plain()))

    async def decline(confirmation: Confirmation) -> bool:
        return False

    flow = ReviewFlow(CommandRunner(session, decline), PrintPort(), "off",
                      off_note="doctor only reports: a fix is applied by the dashboard or --run --monitor")
    report = Report(snapshot, findings)
    asyncio.run(flow.findings(report))
    if not findings:
        print("no findings")
    worst = max((f.level for f in findings), default=-1)
    reviewer = monitor_llm(llm_settings(ns), twinkle_home(ns.home))
    if reviewer is not None:
        outcome = asyncio.run(flow.review(report, reviewer))
        if outcome.decision in ("WARNING", "FIX"):
            worst = max(worst, 1)
    return 1 if worst >= 1 else 0


def live_runs_message(summaries: Sequence[RunSummary]) -> str | None:
    live = [s.run_id for s in summaries if s.status.is_active]
    if not live:
        return None
    shown = ", ".join(live[:3]) + (" …" if len(live) > 3 else "")
    return f"twinkle-tui: {len(live)} run(s) keep training ({shown}); run twinkle-tui again to watch them"


def serve_main(argv: list[str]) -> int:
    """`twinkle-tui serve`: the tinker-compatible training service, as a supervised run followed in this terminal
    (twinkle_tui/serve.py)."""
    from twinkle_tui.serve import serve_main as serve

    return serve(argv)
