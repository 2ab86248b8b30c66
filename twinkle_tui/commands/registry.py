"""One registry of commands: name, JSON schema, handler. Keys, slash commands, the agent's tools and the monitor all
run the same handlers through it; nothing here knows about Textual or an LLM.

A command is one of three kinds, which says where it may run:
- view:    changes what the dashboard shows (selection, zoom, metrics); runs on the thread that owns the session.
- read:    reads runs through the store (under its lock); may run anywhere.
- control: changes runs through the process controller (file I/O, signals); runs in a worker, never on a UI thread.
Destructive commands (stop, kill, start, update_script, delete, ...) are confirmed by the user before they run.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import jsonschema

from twinkle_trainer.config import ConfigError
from twinkle_trainer.protocol import InvalidRunId, MetaError
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.process.controller import RunControlError
from twinkle_tui.process.scripts import ScriptError
from twinkle_tui.runs.store import NoSuchRun

log = logging.getLogger(__name__)

Kind = Literal["view", "read", "control"]


Handler = Callable[[Session, dict[str, Any]], Reply]
Confirm = Callable[[Session, dict[str, Any]], Confirmation | None]


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
    agent: bool = True  # offered to the agent as a tool (help lists slash commands; apply_fix is the monitor's)

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
            confirm: Confirm | None = None, agent: bool = True) -> Callable[[Handler], Handler]:
    """Register a handler under `name` with the JSON schema of its arguments."""

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise ValueError(f"command {name} registered twice")
        REGISTRY[name] = Command(name, summary, properties or {}, required, handler, kind, destructive, confirm, agent)
        return handler

    return register


def get(name: str) -> Command:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CommandError(f"unknown tool {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def prepare(session: Session, name: str, args: dict[str, Any] | None = None) -> tuple[dict[str, Any], Confirmation | None]:
    """Validate the arguments and say whether the user must confirm; raises CommandError when the command cannot
    run at all (so the user is never asked about something that would fail)."""
    cmd = get(name)
    valid = cmd.validate(args)
    confirm = cmd.confirm
    if confirm is None:
        return valid, None
    return valid, _guard(name, lambda: confirm(session, valid))


def execute(session: Session, name: str, args: dict[str, Any] | None = None) -> Reply:
    """Run a command (already confirmed if it needed that). Every failure is a CommandError with one line: a bad
    run id, a missing meta.json, an OSError from a launch, a signal that is not permitted; never a traceback."""
    cmd = get(name)
    valid = cmd.validate(args)
    return _guard(name, lambda: cmd.handler(session, valid))


T = TypeVar("T")


def _guard(name: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except CommandError:
        raise
    except (RunControlError, ScriptError, InvalidRunId, MetaError, NoSuchRun, ConfigError) as exc:
        raise CommandError(_one_line(exc)) from None
    except OSError as exc:
        raise CommandError(f"{name}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None
    except Exception as exc:
        log.exception("command %s failed", name)
        raise CommandError(f"{name} failed: {type(exc).__name__}: {_one_line(exc)} (details in the log)") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text.splitlines()[0]


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


def optional_arg(key: str, usage: str) -> SlashParse:
    """/name [VALUE]: at most one argument, given to the command as `key`."""
    def parse(args: list[str]) -> dict[str, Any]:
        if len(args) > 1:
            raise CommandError(f"usage: {usage}")
        return {key: args[0]} if args else {}

    return parse


def required_arg(key: str, usage: str) -> SlashParse:
    """/name VALUE: exactly one argument, given to the command as `key`."""
    def parse(args: list[str]) -> dict[str, Any]:
        if len(args) != 1:
            raise CommandError(f"usage: {usage}")
        return {key: args[0]}

    return parse


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
