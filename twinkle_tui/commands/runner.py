"""CommandRunner: how any front end runs a command, the same way for keys, slash commands and the agent's tools.

Validate the arguments (a bad call is an error the caller, an LLM included, can correct), ask the user when the
command needs a confirmation (a refusal is reported, not an exception), run it where its kind says (view commands on
the owner's thread, the others in a thread), and apply what it asks of the view.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twinkle_tui.commands.registry import REGISTRY, execute, prepare
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.session import Session

Confirm = Callable[[Confirmation], Awaitable[bool]]


@dataclass(frozen=True)
class Outcome:
    """What a command did, for a front end and for an LLM: the text, and whether it ran, failed or was refused."""

    text: str
    ok: bool
    refused: bool = False
    reply: Reply | None = None

    def for_llm(self) -> str:
        if self.refused:
            return f"REFUSED by the user: {self.text}. Do not retry it unless the user asks again."
        if not self.ok:
            return f"ERROR: {self.text}"
        return self.text


class CommandRunner:
    """Runs registered commands for one Session; `confirm` shows a confirmation and returns the user's answer."""

    def __init__(self, session: Session, confirm: Confirm, apply: Callable[[Reply], None] | None = None,
                 auto_yes: bool = False) -> None:
        self.session = session
        self.confirm = confirm
        self.apply = apply or session.apply
        self.auto_yes = auto_yes

    async def run(self, name: str, args: dict[str, Any] | None = None, confirmed: bool = False) -> Outcome:
        cmd = REGISTRY.get(name)
        if cmd is None:
            known = ", ".join(sorted(REGISTRY))
            return Outcome(f"unknown tool {name!r}; the tools are: {known}", ok=False)
        blocking = cmd.kind != "view"
        try:
            if blocking:
                valid, confirmation = await asyncio.to_thread(prepare, self.session, name, args)
            else:
                valid, confirmation = prepare(self.session, name, args)
            if confirmation is not None and not (confirmed or self.auto_yes):
                if not await self.confirm(confirmation):
                    return Outcome(f"not done: the user declined ({confirmation.title.rstrip('?')})", ok=False,
                                   refused=True)
            if blocking:
                reply = await asyncio.to_thread(execute, self.session, name, valid)
            else:
                reply = execute(self.session, name, valid)
        except CommandError as exc:
            return Outcome(str(exc), ok=False)
        self.apply(reply)
        return Outcome(reply.text, ok=True, reply=reply)

    async def run_json(self, name: str, arguments: str | None) -> Outcome:
        """A tool call from an LLM: arguments as JSON text, which may be malformed."""
        text = (arguments or "").strip() or "{}"
        try:
            args = json.loads(text)
        except ValueError as exc:
            return Outcome(f"the arguments of {name} are not valid JSON ({exc}); call it again with a JSON object",
                           ok=False)
        return await self.run(name, args)
