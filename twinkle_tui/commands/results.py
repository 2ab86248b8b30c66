"""What a command gives back: a Reply, a Confirmation to ask before it runs, or a CommandError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class CommandError(Exception):
    """A command that cannot run, or that failed; the message is one line a user (or an LLM) can act on."""


@dataclass(frozen=True)
class Confirmation:
    """What the user is asked before a command that spends compute, reverses their decision, or destroys runs."""

    title: str
    detail: str
    action: str = "Yes"
    code: str | None = None  # a script to show in full (scrollable) below the detail


@dataclass
class Reply:
    """What a command did: text for the chat (Markdown), and what the front end should update."""

    text: str
    select: str | None = None  # the front end selects this run (e.g. a run just started)
    redraw: set[str] = field(default_factory=set)  # parts of the screen that changed: list, status, charts, log
    data: Any = None  # structured result, for callers that want more than text
