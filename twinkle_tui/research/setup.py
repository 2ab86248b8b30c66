"""Starting or resuming a research: its directory and workspace, the settings (flags over the program), the
proposer, and where experiments run. Every refusal is one line (ResearchError)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.research.program import Program
from twinkle_tui.research.proposal import Proposer, ProposerError
from twinkle_tui.research.records import ResearchDir, hold_loop_lock
from twinkle_tui.research.workspace import Workspace, WorkspaceError

SMALL_LLM = ("the embedded SmolLM2-135M cannot write code edits: use --proposer optuna (it tunes the program's "
             "knobs, no LLM) or an endpoint that can (--llm-base-url, --llm-model), or --llm-gguf with a larger model")


class ResearchError(Exception):
    """A research cannot start or resume; the message is one line a user can act on."""


@dataclass(frozen=True)
class Overrides:
    """Flags given on the command line (None: not given, the program's or the stored value holds)."""

    experiments: int | None = None
    budget: float | None = None
    lanes: int | None = None
    proposer: str | None = None
    review: bool | None = None
    repeats: int | None = None
    cluster: str | None = None
    grace: float | None = None


def open_research(program: Program, home: Path, resume: bool, flags: Overrides) -> tuple[ResearchDir, Any, int]:
    """The research directory (created, or checked for resume), its Settings and the held loop lock."""
    from twinkle_tui.research.loop import Settings

    research = ResearchDir.of(program.name, home)
    if research.exists and not resume:
        state = research.read_state()
        raise ResearchError(f"research {program.name!r} already exists ({_count(research)} experiments, "
                            f"{state.get('status', '?')}); continue it with --resume, or set another name: in "
                            f"{program.path.name}")
    if resume and not research.exists:
        raise ResearchError(f"no research {program.name!r} to resume under {research.root.parent}; start it without "
                            "--resume")
    fd = hold_loop_lock(research)
    if fd is None:
        pid = research.read_state().get("pid")
        raise ResearchError(f"research {program.name!r} is already running (loop pid {pid}); stop it first")
    stored = research.read_state().get("settings") or {} if resume else {}

    def pick(name: str, program_value: Any) -> Any:
        given = getattr(flags, name)
        if given is not None:
            return given
        return stored.get(name, program_value)

    settings = Settings(experiments=pick("experiments", program.experiments), budget=pick("budget", program.budget),
                        lanes=pick("lanes", program.lanes), proposer=pick("proposer", program.default_proposer()),
                        review=bool(pick("review", False)), repeats=pick("repeats", program.repeats),
                        cluster=pick("cluster", None), grace=pick("grace", 10.0))
    if settings.proposer == "llm" and not program.editable:
        raise ResearchError(f"{program.path.name} names no editable files, so the llm proposer has nothing to change; "
                            "declare editable: files, or knobs: with --proposer optuna")
    if settings.cluster is None:
        settings = replace(settings, gpus=_gpu_count())
    if resume and (research.read_state().get("baseline") or {}).get("metric") is None:
        _rebase(research, program)  # no baseline measured yet: the program may have been fixed since
    elif resume:
        _check_harness(research, program)
    else:
        _create(research, program, settings)
    return research, settings, fd


def _create(research: ResearchDir, program: Program, settings: Any) -> None:
    research.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(program.path, research.program)
    try:
        base = Workspace(research.workspace).create(program.folder, exclude={program.path.name})
    except WorkspaceError as exc:
        shutil.rmtree(research.root, ignore_errors=True)
        raise ResearchError(str(exc)) from None
    research.write_state({"name": program.name, "program": str(program.path), "created": time.time(),
                          "status": "starting", "baseline": {"commit": base}, "best": None,
                          "harness": program.harness_hashes(), "next_number": 1, "inflight": {},
                          "settings": settings.to_json(), "metric": program.metric, "goal": program.goal})


def _rebase(research: ResearchDir, program: Program) -> None:
    state = research.read_state()
    try:
        base = Workspace(research.workspace).refresh(program.folder, exclude={program.path.name})
    except WorkspaceError as exc:
        raise ResearchError(str(exc)) from None
    state["baseline"] = {**(state.get("baseline") or {}), "commit": base}
    state["harness"] = program.harness_hashes()
    shutil.copyfile(program.path, research.program)
    research.write_state(state)


def _check_harness(research: ResearchDir, program: Program) -> None:
    stored = research.read_state().get("harness") or {}
    now = program.harness_hashes()
    changed = sorted(p for p in set(stored) | set(now) if stored.get(p) != now.get(p))
    if changed:
        raise ResearchError(f"the harness changed since research {program.name!r} started ({', '.join(changed)}): "
                            "its results would not compare; start a new research (set another name:)")


def _count(research: ResearchDir) -> int:
    return sum(1 for e in research.read_experiments() if e.is_run)


def _gpu_count() -> int:
    try:
        from twinkle_tui.gpu import GpuProbe

        return len(GpuProbe().snapshot().gpus)
    except Exception:  # no NVML, no driver: CPU lanes
        return 0


def make_proposer(kind: str, program: Program, research: ResearchDir, lanes: int,
                  llm: LLMSettings, home: Path) -> tuple[Proposer, Any]:
    """The proposer, and an object to close when the loop ends (the embedded LLM server), if any."""
    if kind == "optuna":
        from twinkle_tui.research.optuna_proposer import OptunaProposer

        try:
            return OptunaProposer(program, research.root / "optuna.journal", lanes), None
        except ProposerError as exc:
            raise ResearchError(str(exc)) from None
    from twinkle_tui.research.llm_proposer import LLMProposer

    settings, closer = connect_llm(llm, home)
    return LLMProposer(settings), closer


def connect_llm(llm: LLMSettings, home: Path) -> tuple[LLMSettings, Any]:
    """The endpoint if it answers; the embedded llama.cpp server only with a model of the user's choice."""
    import asyncio

    from twinkle_tui.agent.endpoint import EndpointError, probe

    if llm.mode == "none":
        raise ResearchError("the llm proposer needs an LLM (--llm none was given); use --proposer optuna")
    if llm.mode == "auto":
        try:
            asyncio.run(probe(llm))
            return llm, None
        except EndpointError as exc:
            if llm.gguf is None:
                raise ResearchError(f"{exc}; {SMALL_LLM}") from None
    if llm.gguf is None:
        raise ResearchError(SMALL_LLM)
    from twinkle_tui.agent.connect import connect

    connection = asyncio.run(connect(replace(llm, mode="embedded"), home))
    if connection.settings is None:
        raise ResearchError(connection.notice)
    return connection.settings, connection


def make_runner(cluster: str | None) -> Any:
    if not cluster:
        return None
    from twinkle_tui.research.ray_runner import RayRunner

    return RayRunner(cluster)

