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

LLM_FLAGS = {  # flag attribute -> (environment variable, config key, default)
    "llm": ("TWINKLE_LLM", "mode", "auto"),
    "llm_base_url": ("TWINKLE_LLM_BASE_URL", "base_url", "http://localhost:11434/v1"),
    "llm_model": ("TWINKLE_LLM_MODEL", "model", "qwen3.5"),
    "llm_api_key": ("TWINKLE_LLM_API_KEY", None, "not-needed"),
    "llm_gguf": ("TWINKLE_LLM_GGUF", "gguf", None),
    "llm_deadline": ("TWINKLE_LLM_DEADLINE", "deadline", 120.0),
    "llm_threads": ("TWINKLE_LLM_THREADS", "threads", None),
    "llm_agent": ("TWINKLE_LLM_AGENT", "agent", "auto"),
}


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    """The agent's and the monitor's LLM (flag > environment > $TWINKLE_HOME/config.toml [llm] > default), for the
    dashboard, --ask and doctor alike."""
    p.add_argument("--llm", choices=("auto", "embedded", "none"), default=None,
                   help="auto: the endpoint below if it answers, else the embedded llama.cpp LLM; none: slash only "
                        "(TWINKLE_LLM; default auto)")
    p.add_argument("--llm-base-url", default=None,
                   help="an OpenAI-compatible endpoint: Ollama, vLLM, llama.cpp, OpenAI (TWINKLE_LLM_BASE_URL; "
                        "default http://localhost:11434/v1)")
    p.add_argument("--llm-model", default=None, help="the endpoint's model (TWINKLE_LLM_MODEL; default qwen3.5)")
    p.add_argument("--llm-api-key", default=None, help="the endpoint's key (TWINKLE_LLM_API_KEY)")
    p.add_argument("--llm-gguf", metavar="PATH", default=None,
                   help="the embedded LLM's GGUF model (TWINKLE_LLM_GGUF; default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--llm-deadline", metavar="SECONDS", type=float, default=None,
                   help="how long one answer may take (TWINKLE_LLM_DEADLINE; default 120)")
    p.add_argument("--llm-threads", metavar="N", type=int, default=None,
                   help="the embedded LLM's threads (TWINKLE_LLM_THREADS; default: all cores, half while a run trains)")
    p.add_argument("--llm-agent", choices=("auto", "tools", "intent"), default=None,
                   help="how the agent uses the LLM: tool calls, or one constrained intent request (small local "
                        "models); auto: intents on the embedded LLM, tools on endpoints (TWINKLE_LLM_AGENT)")


def llm_settings(ns: argparse.Namespace) -> Any:
    """LLMSettings from the parsed flags, the environment and $TWINKLE_HOME/config.toml; a bad value is one line
    (SystemExit 2, as argparse does)."""
    from twinkle_tui.agent.config import ConfigError, read_llm_config
    from twinkle_tui.agent.endpoint import LLMSettings

    try:
        config = read_llm_config(twinkle_home(getattr(ns, "home", None)))
    except ConfigError as exc:
        print(f"twinkle-tui: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    values: dict[str, Any] = {}
    for attr, (env, key, default) in LLM_FLAGS.items():
        value = getattr(ns, attr, None)
        where = f"--{attr.replace('_', '-')}"
        if value is None and os.environ.get(env):
            value, where = os.environ[env], env
        if value is None and key is not None and key in config:
            value, where = config[key], f"llm.{key} in config.toml"
        values[attr] = default if value is None else _checked(attr, value, where)
    return LLMSettings(values["llm_base_url"], values["llm_model"], values["llm_api_key"], mode=values["llm"],
                       gguf=values["llm_gguf"], deadline=values["llm_deadline"], threads=values["llm_threads"],
                       agent=values["llm_agent"])


def _checked(attr: str, value: Any, where: str) -> Any:
    choices = {"llm": ("auto", "embedded", "none"), "llm_agent": ("auto", "tools", "intent")}.get(attr)
    try:
        if attr == "llm_deadline":
            value = float(value)
            if not value > 0:
                raise ValueError
        elif attr == "llm_threads":
            value = int(value)
            if value < 1:
                raise ValueError
    except ValueError:
        what = "a number of seconds above 0" if attr == "llm_deadline" else "a whole number of at least 1"
        print(f"twinkle-tui: {where} must be {what}, not {value!r}", file=sys.stderr)
        raise SystemExit(2) from None
    if choices and value not in choices:
        print(f"twinkle-tui: {where} must be one of {', '.join(choices)}, not {value!r}", file=sys.stderr)
        raise SystemExit(2)
    return value


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

        return asyncio.run(ask_once(ns.ask, llm, twinkle_home(ns.home), yes=ns.yes, run_id=ns.run_id))
    if script_args and not ns.start:
        parser.error("arguments after -- go with --run SCRIPT or --start RECIPE")
    if ns.start and not os.path.isfile(ns.start):
        print(f"twinkle-tui: no such script or config: {ns.start}", file=sys.stderr)
        return 2
    from twinkle_tui.ui.app import TwinkleApp

    start = (ns.start, script_args) if ns.start else None
    app = TwinkleApp(home=ns.home, run_id=ns.run_id, llm=llm, grace=ns.grace, start=start, auto_yes=ns.yes,
                     monitor_interval=ns.monitor_interval, fix_mode=ns.fix_mode)
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
