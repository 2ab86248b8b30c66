"""One registry of commands: name, JSON schema, handler. Keys, slash commands, the agent's tools and the monitor all
run the same handlers through it; nothing here knows about Textual or an LLM.

A command is one of three kinds, which says where it may run:
- view:    changes what the dashboard shows (selection, zoom, metrics); runs on the thread that owns the session.
- read:    reads runs through the store (under its lock); may run anywhere.
- control: changes runs through the process controller (file I/O, signals); runs in a worker, never on a UI thread.
Destructive commands (stop, kill, start, update_script, delete, ...) are confirmed by the user before they run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import jsonschema

if TYPE_CHECKING:
    from twinkle_tui.commands.session import Session

Kind = Literal["view", "read", "control"]


class CommandError(Exception):
    """A command that cannot run, or that failed; the message is one line a user (or an LLM) can act on."""


@dataclass(frozen=True)
class Confirmation:
    """What the user is asked before a destructive command runs."""

    title: str
    detail: str
    action: str = "Yes"


@dataclass
class Reply:
    """What a command did: text for the chat (Markdown), and what the front end should update."""

    text: str
    select: str | None = None  # the front end selects this run (e.g. a run just started)
    redraw: set[str] = field(default_factory=set)  # parts of the screen that changed: list, status, charts, log
    data: Any = None  # structured result, for callers that want more than text


Handler = Callable[["Session", dict[str, Any]], Reply]
Confirm = Callable[["Session", dict[str, Any]], Confirmation | None]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    properties: dict[str, Any]
    required: tuple[str, ...]
    handler: Handler
    kind: Kind
    destructive: bool = False
    confirm: Confirm | None = None

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": self.properties, "required": list(self.required),
                "additionalProperties": False}

    def tool(self) -> dict[str, Any]:
        """The OpenAI tool definition of this command."""
        return {"type": "function", "function": {"name": self.name, "description": self.summary,
                                                 "parameters": self.schema}}

    def validate(self, args: Any) -> dict[str, Any]:
        """The arguments if they match the schema, else CommandError naming the first problem."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise CommandError(f"{self.name}: arguments must be a JSON object, not {type(args).__name__}")
        try:
            jsonschema.validate(args, self.schema)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            raise CommandError(f"{self.name}: bad argument{' ' + where if where else ''}: {exc.message}") from None
        return args


REGISTRY: dict[str, Command] = {}


def command(name: str, summary: str, kind: Kind, properties: dict[str, Any] | None = None,
            required: tuple[str, ...] = (), destructive: bool = False,
            confirm: Confirm | None = None) -> Callable[[Handler], Handler]:
    """Register a handler under `name` with the JSON schema of its arguments."""

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise ValueError(f"command {name} registered twice")
        REGISTRY[name] = Command(name, summary, properties or {}, required, handler, kind, destructive, confirm)
        return handler

    return register


def get(name: str) -> Command:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CommandError(f"unknown tool {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# ------------------------------------------------------------------ slash commands
SlashParse = Callable[[list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Slash:
    """A chat command: /name args -> a registered command with arguments."""

    name: str
    command: str
    usage: str
    help: str
    parse: SlashParse


SLASH: dict[str, Slash] = {}


def slash(name: str, command_name: str, usage: str, help: str, parse: SlashParse | None = None) -> None:
    SLASH[name] = Slash(name, command_name, usage, help, parse or (lambda args: no_args(name, args)))


def no_args(name: str, args: list[str]) -> dict[str, Any]:
    if args:
        raise CommandError(f"/{name} takes no arguments")
    return {}


def parse_slash(text: str) -> tuple[str, dict[str, Any]]:
    """'/name args...' -> (command name, arguments). Unknown names and bad arguments raise CommandError with a
    one-line hint."""
    text = text.strip()
    if not text.startswith("/"):
        raise CommandError("commands start with /; try /help")
    try:
        parts = shlex.split(text[1:])
    except ValueError as exc:
        raise CommandError(f"cannot read that command: {exc}") from None
    if not parts:
        raise CommandError("empty command; try /help")
    name, args = parts[0].lower(), parts[1:]
    spec = SLASH.get(name)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(name, list(SLASH), n=1, cutoff=0.5)
        hint = f"; did you mean /{close[0]}?" if close else "; try /help"
        raise CommandError(f"unknown command /{name}{hint}")
    return spec.command, spec.parse(args)


def slash_help() -> list[tuple[str, str]]:
    """(usage, help) of every chat command, for /help and the help screen."""
    return [(s.usage, s.help) for s in SLASH.values()]
