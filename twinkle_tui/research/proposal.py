"""A proposal (what one experiment changes), what proposers have in common, and the validation every proposal
passes before it may run: it compiles, it changes only editable files, it leaves the harness alone, and it does not
write the metric itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from twinkle_tui.research.program import Program, relative_path
from twinkle_tui.research.summary import Summary

MAX_FILE_BYTES = 1024 * 1024


class ProposerError(Exception):
    """The proposer cannot propose at all (an unreachable LLM, no knobs); the message is one line."""


@dataclass
class Proposal:
    description: str
    files: dict[str, str] = field(default_factory=dict)  # editable path -> full new content
    params: dict[str, Any] = field(default_factory=dict)  # knob values (passed as --name VALUE)
    trial: int | None = None  # the Optuna trial it is
    problem: str | None = None  # a malformed answer (no tool call, bad JSON): refused with this reason


@dataclass(frozen=True)
class Context:
    """What a proposer sees: the program, the best files, the results so far."""

    program: Program
    experiment: str
    attempt: int  # 1 for a fresh proposal; 2, 3 after refusals (the LLM hears why)
    best_files: dict[str, str]
    summary: Summary


class Proposer(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal: ...

    def refused(self, experiment: str, reason: str) -> None: ...

    def report(self, proposal: Proposal, step: int, value: float) -> bool: ...

    def tell(self, proposal: Proposal, status: str, metric: float | None) -> None: ...


def validate(program: Program, proposal: Proposal, parent_files: dict[str, str]) -> str | None:
    """Why the proposal may not run (one line), or None when it may."""
    if proposal.problem:
        return proposal.problem
    if not proposal.description.strip():
        return "the proposal has no description: say in one line what it changes"
    if not proposal.files and not proposal.params:
        return "the proposal changes nothing: give the full new content of at least one editable file"
    changed = 0
    for raw_path, content in proposal.files.items():
        path = relative_path(raw_path) or raw_path
        if path in program.harness:
            return f"{path} is part of the harness (the evaluation); it may not change"
        if path not in program.editable:
            return f"{path} is not editable; only {', '.join(program.editable) or 'no file'} may change"
        if not isinstance(content, str):
            return f"the content of {path} must be the file's full text"
        if len(content.encode("utf-8")) > MAX_FILE_BYTES:
            return f"{path} would be over {MAX_FILE_BYTES // 1024} KiB"
        if path.endswith(".py"):
            try:
                compile(content, path, "exec")
            except (SyntaxError, ValueError) as exc:
                line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
                message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
                return f"{path} does not compile: {message}{line}"
        before = parent_files.get(path, "")
        if content != before:
            changed += 1
        mention = _mentions_metric(before, content, program.metric)
        if mention:
            return (f"{path} line {mention} mentions the metric {program.metric!r}: only the harness "
                    f"({', '.join(program.harness) or 'the evaluation'}) reports it")
    if proposal.files and not changed and not proposal.params:
        return "the proposal changes nothing: every file is as it was"
    return None


def _mentions_metric(before: str, after: str, metric: str) -> int | None:
    """The line number of the first added line that names the metric (a proposal may not log it itself)."""
    pattern = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(metric) + r"(?![A-Za-z0-9_])")
    old = set(before.splitlines())
    for number, line in enumerate(after.splitlines(), start=1):
        if line not in old and pattern.search(line):
            return number
    return None


def normalized_files(proposal: Proposal) -> dict[str, str]:
    return {relative_path(p) or p: c for p, c in proposal.files.items()}
