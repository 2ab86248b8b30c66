"""The command palette (ctrl+p): the app's actions, plus state-dependent "switch to run X" and "compare with X".

The list is built from what the app offers (PaletteHost); the provider matches and offers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from twinkle_tui.commands import Session
from twinkle_tui.runs.store import RunSummary


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    action: Callable[[], object]
    help: str


class PaletteHost(Protocol):
    """What the palette uses of the app (TwinkleApp)."""

    session: Session
    summaries: tuple[RunSummary, ...]

    def action_command(self, name: str, args: dict[str, Any] | None = None) -> None: ...
    def action_new_run(self) -> None: ...
    def action_pick_metrics(self) -> None: ...
    def action_view_command(self, name: str, args: dict[str, Any] | None = None) -> None: ...
    def action_help(self) -> None: ...
    def select(self, run_id: str) -> None: ...
    def set_compare(self, run_id: str | None) -> None: ...


def palette_commands(host: PaletteHost) -> list[PaletteCommand]:
    """What the command palette offers: the keys' actions, then switching to and comparing with each run."""
    cmd = PaletteCommand
    out = [
        cmd("Pause the selected run", partial(host.action_command, "pause_training"),
            "SIGSTOP: memory and GPU state are kept"),
        cmd("Resume the selected run", partial(host.action_command, "resume_training"),
            "SIGCONT, or relaunch from the last checkpoint"),
        cmd("Stop the selected run", partial(host.action_command, "stop_training"), "checkpoint and exit (asks first)"),
        cmd("Kill the selected run", partial(host.action_command, "kill_training"),
            "SIGKILL now, no checkpoint (asks first)"),
        cmd("Delete the selected run", partial(host.action_command, "delete_run"),
            "an ended run and its files (asks first)"),
        cmd("Archive the selected run", partial(host.action_command, "archive_run"),
            "move an ended run to .archive/ (asks first)"),
        cmd("Start a new run", host.action_new_run, "a recipe from examples/ or a script path"),
        cmd("Choose metrics", host.action_pick_metrics, "up to four charts"),
        cmd("Reset zoom", partial(host.action_view_command, "zoom_metrics", {"reset": True}), "show every step"),
        cmd("Toggle smoothing", partial(host.action_view_command, "set_chart_options", {"toggle": "smoothing"}),
            "debiased EMA over the raw series"),
        cmd("Toggle log-y", partial(host.action_view_command, "set_chart_options", {"toggle": "log_y"}),
            "logarithmic y axis"),
        cmd("Help", host.action_help, "keys and chat commands"),
    ]
    for summary in host.summaries:
        if summary.run_id != host.session.selected:
            out.append(cmd(f"Switch to run {summary.run_id}", partial(host.select, summary.run_id),
                           f"{summary.status.value}, step {summary.last_step}"))
            out.append(cmd(f"Compare with run {summary.run_id}", partial(host.set_compare, summary.run_id),
                           "overlay its metrics on the charts"))
    if host.session.settings.compare:
        out.append(cmd("Stop comparing", partial(host.set_compare, None), f"remove {host.session.settings.compare}"))
    return out


class RunCommands(Provider):
    def _commands(self) -> list[PaletteCommand]:
        return palette_commands(cast(PaletteHost, self.app))

    async def discover(self) -> Hits:
        for cmd in self._commands():
            yield DiscoveryHit(cmd.name, cmd.action, help=cmd.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for cmd in self._commands():
            score = matcher.match(cmd.name)
            if score > 0:
                yield Hit(score, matcher.highlight(cmd.name), cmd.action, help=cmd.help)
