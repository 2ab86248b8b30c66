"""Slash commands of the chat panel, parsed without any UI or LLM: /pause reaches the same handler as `p`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

COMMANDS: dict[str, str] = {
    "runs": "list runs",
    "select": "select a run: /select RUN_ID",
    "pause": "pause the selected run (SIGSTOP)",
    "resume": "resume the selected run (SIGCONT, or relaunch from its last checkpoint)",
    "stop": "stop the selected run gracefully (asks first)",
    "zoom": "show steps A to B: /zoom 100 500",
    "reset": "reset zoom",
    "metrics": "chart these metrics: /metrics loss,grad_norm (up to 4)",
    "compare": "overlay another run on the charts: /compare RUN_ID (no id: none)",
    "smooth": "toggle smoothing, or set its weight: /smooth 0.9",
    "logy": "toggle a logarithmic y axis",
    "gpu": "show GPU and run process usage",
    "new": "start a run: /new examples/toy_regression.py [-- args]",
    "help": "list commands and keys",
}


class SlashError(ValueError):
    """A slash command that cannot be understood; the message says how to write it."""


@dataclass(frozen=True)
class SlashCommand:
    name: str
    args: tuple[str, ...]


def parse(text: str) -> SlashCommand:
    """Parse '/name args...'; unknown names and bad arguments raise SlashError with a one-line hint."""
    text = text.strip()
    if not text.startswith("/"):
        raise SlashError("commands start with /; try /help")
    try:
        parts = shlex.split(text[1:])
    except ValueError as exc:
        raise SlashError(f"cannot read that command: {exc}") from None
    if not parts:
        raise SlashError("empty command; try /help")
    name, args = parts[0].lower(), tuple(parts[1:])
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:2])]
        hint = f"; did you mean /{close[0]}?" if close else "; try /help"
        raise SlashError(f"unknown command /{name}{hint}")
    if name == "select" and len(args) != 1:
        raise SlashError("usage: /select RUN_ID")
    if name == "zoom":
        if len(args) != 2:
            raise SlashError("usage: /zoom A B (steps)")
        try:
            a, b = float(args[0]), float(args[1])
        except ValueError:
            raise SlashError("usage: /zoom A B, where A and B are step numbers") from None
        if b <= a:
            raise SlashError("zoom range must have A < B")
    if name == "metrics":
        names = metric_names(args)
        if not names:
            raise SlashError("usage: /metrics name1,name2 (up to 4)")
        if len(names) > 4:
            raise SlashError("at most 4 metrics at once")
    if name == "smooth" and args:
        try:
            w = float(args[0])
        except ValueError:
            raise SlashError("usage: /smooth [weight between 0 and 0.999]") from None
        if not 0 <= w <= 0.999:
            raise SlashError("smoothing weight must be between 0 and 0.999")
    if name == "new" and not args:
        raise SlashError("usage: /new SCRIPT_OR_CONFIG [-- args]")
    return SlashCommand(name, args)


def metric_names(args: tuple[str, ...]) -> list[str]:
    """Metric names from '/metrics a,b' or '/metrics "learning rate",loss' (names may contain spaces)."""
    return [n.strip() for n in ",".join(args).split(",") if n.strip()]


def help_text() -> str:
    return "\n".join(f"/{name:<8} {text}" for name, text in COMMANDS.items())
