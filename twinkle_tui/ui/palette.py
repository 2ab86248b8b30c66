"""The command palette (ctrl+p): the app's actions, plus state-dependent "switch to run X" and "compare with X".

The app lists them (TwinkleApp.palette_commands); this provider only matches and offers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    action: Callable[[], object]
    help: str


class PaletteHost(Protocol):
    def palette_commands(self) -> list[PaletteCommand]: ...


class RunCommands(Provider):
    def _commands(self) -> list[PaletteCommand]:
        return cast(PaletteHost, self.app).palette_commands()

    async def discover(self) -> Hits:
        for cmd in self._commands():
            yield DiscoveryHit(cmd.name, cmd.action, help=cmd.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for cmd in self._commands():
            score = matcher.match(cmd.name)
            if score > 0:
                yield Hit(score, matcher.highlight(cmd.name), cmd.action, help=cmd.help)
