"""The research's commands in the one command layer: start_research (asks first; the loop runs detached, like a
run, and outlives the dashboard), control_research (pause, resume, stop, approve, reject) and research_status, with
the chat's /research.

A front end opens the research view when a reply's data names a research (`{"open_research": NAME}`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.commands.registry import command, slash
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.research.program import Program, ProgramError, load_program
from twinkle_tui.research.records import ResearchDir, list_researches
from twinkle_tui.research.summary import format_metric

START_WAIT = 20.0  # seconds the loop gets to say it runs (or why it cannot) before the command answers


def _program(s: Session, a: dict[str, Any]) -> Program:
    path = Path(str(a["program"])).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        return load_program(path)
    except ProgramError as exc:
        raise CommandError(str(exc)) from None


def _confirm_start(s: Session, a: dict[str, Any]) -> Confirmation:
    program = _program(s, a)
    research = ResearchDir.of(program.name, s.store.home)
    _check_startable(research, program, bool(a.get("resume")))
    proposer = a.get("proposer") or program.default_proposer()
    n = a.get("experiments") or program.experiments
    lanes = a.get("lanes") or program.lanes
    budget = a.get("budget") or program.budget
    return Confirmation(
        f"{'Resume' if a.get('resume') else 'Start'} research {program.name}?",
        f"Up to {n} experiments of {program.target} ({budget:g} s each, {lanes} at once), proposed by "
        f"{'the LLM (code edits to ' + ', '.join(program.editable) + ')' if proposer == 'llm' else 'Optuna (knobs)'}"
        f"{', each after your yes' if a.get('review') else ''}. Each is a training run; the loop keeps running "
        "when the dashboard closes.", "Start")


def _check_startable(research: ResearchDir, program: Program, resume: bool) -> None:
    from twinkle_trainer.protocol import process_is

    state = research.read_state()
    if state and process_is(state.get("pid"), state.get("pid_start_time")):
        raise CommandError(f"research {program.name!r} is already running; /research opens its view")
    if research.exists and not resume:
        raise CommandError(f"research {program.name!r} already exists ({state.get('status')}); resume it "
                           f"(/research {program.path} --resume) or give the program another name:")
    if resume and not research.exists:
        raise CommandError(f"no research {program.name!r} to resume; start it without --resume")


@command("start_research", "Start (or resume) an auto-research loop on a PROGRAM.md: experiments on a training "
         "program that keep what improves its metric. Asks the user first.", "control",
         {"program": {"type": "string", "description": "path of the PROGRAM.md"},
          "proposer": {"type": "string", "enum": ["llm", "optuna"]},
          "experiments": {"type": "integer", "minimum": 1, "maximum": 10000},
          "lanes": {"type": "integer", "minimum": 1, "maximum": 64},
          "budget": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per experiment"},
          "review": {"type": "boolean", "description": "each proposal waits for the user's yes"},
          "resume": {"type": "boolean"}},
         ("program",), destructive=True, confirm=_confirm_start)
def start_research(s: Session, a: dict[str, Any]) -> Reply:
    program = _program(s, a)
    research = ResearchDir.of(program.name, s.store.home)
    _check_startable(research, program, bool(a.get("resume")))
    proposer = a.get("proposer") or program.default_proposer()
    llm = s.services.llm_settings if isinstance(s.services.llm_settings, LLMSettings) else None
    command_line = [sys.executable, "-m", "twinkle_tui.research", str(program.path), "--home", str(s.store.home),
                    "--wait-when-paused", "--proposer", proposer]
    for flag in ("experiments", "lanes", "budget"):
        if a.get(flag) is not None:
            command_line += [f"--{flag}", str(a[flag])]
    command_line += ["--review"] if a.get("review") else []
    command_line += ["--resume"] if a.get("resume") else []
    env = dict(os.environ)
    if llm is not None:  # the dashboard's LLM; the key only through the environment, never a command line
        command_line += ["--llm", llm.mode, "--llm-base-url", llm.base_url, "--llm-model", llm.model]
        command_line += ["--llm-gguf", llm.gguf] if llm.gguf else []
        env["TWINKLE_LLM_API_KEY"] = llm.api_key
    research.root.mkdir(parents=True, exist_ok=True)
    log_path = research.root / "loop.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command_line, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=str(program.folder), start_new_session=True)
    threading.Thread(target=proc.wait, name=f"reap-research-{program.name}", daemon=True).start()  # no zombie
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = _last_line(log_path) or f"the loop exited with code {proc.returncode}"
            if not research.exists:
                _remove_if_only_log(research)
            raise CommandError(reason.removeprefix("twinkle-tui research: "))
        if research.read_state().get("pid") == proc.pid:
            break
        time.sleep(0.1)
    return Reply(f"research **{program.name}** {'resumed' if a.get('resume') else 'started'}: {proposer} "
                 f"proposer on {program.target}, metric {program.metric} ({program.goal}); its view is open "
                 f"(R opens it again), its log {log_path}", data={"open_research": program.name})


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _remove_if_only_log(research: ResearchDir) -> None:
    try:
        if {p.name for p in research.root.iterdir()} <= {"loop.log"}:
            (research.root / "loop.log").unlink(missing_ok=True)
            research.root.rmdir()
    except OSError:
        pass


def _research(s: Session, name: str | None) -> ResearchDir:
    if name:
        research = ResearchDir.of(name, s.store.home)
        if not research.exists:
            known = ", ".join(r.name for r in list_researches(s.store.home)[:6]) or "none yet"
            raise CommandError(f"no research {name!r} (researches: {known})")
        return research
    found = list_researches(s.store.home)
    if not found:
        raise CommandError("no research yet; start one with /research PROGRAM.md")
    return found[0]


@command("research_status", "The state of an auto-research: experiments done, kept, best metric, what is running.",
         "read", {"name": {"type": "string", "description": "the research (default: the newest)"}})
def research_status(s: Session, a: dict[str, Any]) -> Reply:
    from twinkle_tui.research.watch import read_snapshot

    research = _research(s, a.get("name"))
    snap = read_snapshot(research, s.store)
    lines = [snap.header()]
    for live in snap.live:
        lines.append(f"- running {live.experiment} ({live.run_id}): {live.description}")
    if snap.review:
        lines.append(f"- waiting for review: {snap.review['id']}: {snap.review.get('description')}")
    for e in snap.summary.leaderboard()[:5]:
        lines.append(f"- {e.id} {e.status} {format_metric(e.metric)}: {e.description}")
    if snap.state.get("reason"):
        lines.append(f"reason: {snap.state['reason']}")
    return Reply("\n".join(lines), data={"research": research.name, "status": snap.status})


def _confirm_control(s: Session, a: dict[str, Any]) -> Confirmation | None:
    if a["action"] != "stop":
        return None
    research = _research(s, a.get("name"))
    running = len(research.read_state().get("inflight") or {})
    return Confirmation(f"Stop research {research.name}?", f"The {running} experiment(s) running are stopped (a "
                        "checkpoint, then exit) and the loop ends; `--resume` continues later.", "Stop")


@command("control_research", "Pause, resume or stop an auto-research loop, or approve or reject the proposal "
         "waiting for review.", "control",
         {"action": {"type": "string", "enum": ["pause", "resume", "stop", "approve", "reject"]},
          "name": {"type": "string", "description": "the research (default: the newest)"}},
         ("action",), confirm=_confirm_control)
def control_research(s: Session, a: dict[str, Any]) -> Reply:
    research = _research(s, a.get("name"))
    action = a["action"]
    if action in ("approve", "reject"):
        pending = research.pending_reviews()
        if not pending:
            raise CommandError(f"no proposal of research {research.name!r} is waiting for review")
        research.decide(pending[0]["id"], action == "approve")
        return Reply(f"{pending[0]['id']}: {action}d", data={"research": research.name})
    if action == "stop":
        research.update_control(stop=True)
    else:
        research.update_control(pause=action == "pause", auto=False, reason=None)
    return Reply(f"research {research.name}: {action} asked", data={"research": research.name})


USAGE = "/research PROGRAM.md [--proposer llm|optuna] [--experiments N] [--lanes K] [--budget S] [--review] [--resume]"


def _parse_research(args: list[str]) -> dict[str, Any]:
    if not args:
        raise CommandError(f"usage: {USAGE}; R opens the view of the newest research")
    out: dict[str, Any] = {"program": args[0]}
    rest = args[1:]
    while rest:
        flag = rest.pop(0)
        if flag in ("--review", "--resume"):
            out[flag[2:]] = True
        elif flag in ("--proposer", "--experiments", "--lanes", "--budget") and rest:
            value = rest.pop(0)
            try:
                out[flag[2:]] = value if flag == "--proposer" else (float(value) if flag == "--budget" else int(value))
            except ValueError:
                raise CommandError(f"/research: {flag} takes a number, not {value!r}") from None
        else:
            raise CommandError(f"/research: unknown or incomplete option {flag!r}; usage: {USAGE}")
    return out


slash("research", "start_research", "/research PROGRAM.md [--proposer P] [--review] [--resume]",
      "start (or resume) an auto-research on a PROGRAM.md, after you agree; its view opens (R opens it again)",
      _parse_research)

