"""The `twinkle-tui` command: the dashboard, `--run script.py` headless, or `--ask "question"` for the agent alone."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence
from typing import Any

from twinkle_trainer.protocol import HOME_ENV, InvalidRunId, twinkle_home, validate_run_id
from twinkle_tui import __version__


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    """The agent's and the monitor's LLM (flag > environment > default), for the dashboard and doctor alike."""
    env = os.environ.get
    p.add_argument("--llm", choices=("auto", "embedded", "none"), default=env("TWINKLE_LLM", "auto"),
                   help="auto: the endpoint below if it answers, else the embedded llama.cpp LLM; none: slash only")
    p.add_argument("--llm-base-url", default=env("TWINKLE_LLM_BASE_URL", "http://localhost:11434/v1"),
                   help="an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, OpenAI)")
    p.add_argument("--llm-model", default=env("TWINKLE_LLM_MODEL", "qwen3.5"))
    p.add_argument("--llm-api-key", default=env("TWINKLE_LLM_API_KEY", "not-needed"))
    p.add_argument("--llm-gguf", metavar="PATH", default=env("TWINKLE_LLM_GGUF"),
                   help="the embedded LLM's GGUF model (default: the bundled SmolLM2-135M-Instruct)")


def llm_settings(ns: argparse.Namespace) -> Any:
    from twinkle_tui.agent.endpoint import LLMSettings

    return LLMSettings(ns.llm_base_url, ns.llm_model, ns.llm_api_key, mode=ns.llm, gguf=ns.llm_gguf)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="twinkle-tui",
        description="Dashboard for local LLM fine-tuning runs. `twinkle-tui --run train.py [-- args]` runs headless.",
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


def setup_logging(home: str | None, verbose: bool) -> str:
    """Log to a rotating file (5 MB x 3), never to the terminal the dashboard draws on."""
    log_dir = twinkle_home(home) / ".logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "twinkle-tui.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        return doctor_main(argv[1:])
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
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
        from twinkle_tui.headless import MonitorLoop, run_headless
        from twinkle_tui.process.controller import ProcessController

        if ns.auto_fix and not ns.monitor:
            parser.error("--auto-fix goes with --monitor")
        controller = ProcessController(ns.home, grace=ns.grace)
        watch = None
        if ns.monitor:
            reviewer = monitor_llm(llm, twinkle_home(ns.home))
            watch = MonitorLoop(controller, ns.monitor_interval, reviewer, ns.auto_fix)
        return run_headless(ns.run, script_args, ns.run_id, watch=watch, controller=controller)
    if ns.ask is not None:
        import asyncio

        from twinkle_tui.agent.ask import ask_once

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


def monitor_llm(llm: Any, home: Any) -> Any:
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
    from twinkle_tui.monitor import run_rules, take_snapshot
    from twinkle_tui.runs.store import NoSuchRun, RunStore

    try:
        view = RunStore(ns.home).view(validate_run_id(ns.run_id))
    except (InvalidRunId, NoSuchRun) as exc:
        print(f"twinkle-tui: {exc}", file=sys.stderr)
        return 2
    view.refresh()
    snapshot = take_snapshot(view)
    findings = sorted(run_rules(snapshot), key=lambda f: -f.level)
    print(f"{ns.run_id}: {snapshot.status.value}, step {snapshot.last_step}"
          + (f"/{snapshot.total_steps}" if snapshot.total_steps else "")
          + (f", {snapshot.error}" if snapshot.error else ""))
    for finding in findings:
        print(finding.line())
        for line in finding.evidence[:4]:
            print(f"    evidence: {line}")
    if not findings:
        print("no findings")
    worst = max((f.level for f in findings), default=-1)
    reviewer = monitor_llm(llm_settings(ns), twinkle_home(ns.home))
    if reviewer is not None:
        import asyncio

        from twinkle_tui.monitor import review

        result = asyncio.run(review(reviewer, snapshot, findings))
        if result is not None:
            print(f"review: {result.decision}: {result.summary}")
            if result.diagnosis:
                print(f"    {result.diagnosis}")
            if result.decision != "LGTM":
                worst = max(worst, 1)
    return 1 if worst >= 1 else 0


def live_runs_message(summaries: Sequence[Any]) -> str | None:
    live = [s.run_id for s in summaries if s.status.is_active]
    if not live:
        return None
    shown = ", ".join(live[:3]) + (" …" if len(live) > 3 else "")
    return f"twinkle-tui: {len(live)} run(s) keep training ({shown}); run twinkle-tui again to watch them"


def home_problem(home: str | None) -> str | None:
    """Why the runs directory cannot be used, in one line (None if it can)."""
    path = twinkle_home(home)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the runs directory {path}: {exc.strerror or exc}"
    if not path.is_dir():
        return f"the runs directory {path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the runs directory {path} is not writable (set --home or TWINKLE_HOME to another one)"
    return None


def serve_main(argv: list[str]) -> int:
    """`twinkle-tui serve`: the tinker-compatible training service, as a supervised run followed in this terminal
    (its log here; Ctrl-C stops it; the dashboard shows it and the runs of its clients)."""
    from twinkle_trainer.protocol import RunKind, new_run_id
    from twinkle_trainer.service.__main__ import KEY_ENV, check_key, missing_packages

    p = argparse.ArgumentParser(prog="twinkle-tui serve",
                                description="The tinker-compatible training service, as a run followed here.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default; others need a key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"key clients must send (starts with tml-); also ${KEY_ENV}")
    p.add_argument("--zstd", action="store_true", help="ask clients to zstd-compress forward_backward bodies")
    p.add_argument("--sampler", default="auto", choices=("auto", "hf", "vllm"),
                   help="auto: vLLM on an NVIDIA GPU with the gpu extra, else HF generate")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="GPU memory share of the vLLM engine")
    p.add_argument("--home", default=None, help=f"runs directory (default ${HOME_ENV} or ~/.cache/twinkle)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds the service gets to stop before it is killed")
    ns = p.parse_args(argv)
    key = ns.api_key or os.environ.get(KEY_ENV) or None
    problem = missing_packages() or home_problem(ns.home) or check_key(ns.host, key)
    if problem:
        print(f"twinkle-tui serve: {problem}", file=sys.stderr)
        return 2
    if not 0 < ns.port < 65536:
        print(f"twinkle-tui serve: port {ns.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    setup_logging(ns.home, False)
    from twinkle_tui.headless import HeadlessRun
    from twinkle_tui.process.controller import ProcessController

    if key:  # to the service through the environment only: never on a command line, in meta.json or a log
        os.environ[KEY_ENV] = key
    controller = ProcessController(ns.home, grace=ns.grace)
    args = ["--host", ns.host, "--port", str(ns.port), "--sampler", ns.sampler, "--gpu-memory-utilization",
            str(ns.gpu_memory_utilization), *(["--zstd"] if ns.zstd else [])]
    return HeadlessRun(controller).follow(
        lambda: controller.launch_module("twinkle_trainer.service", args, new_run_id(f"service-{ns.port}"),
                                         model_id="tinker training service", kind=RunKind.SERVICE))
