"""Command palette: the same actions as the keys, plus state-dependent "switch to run X" and "compare with X"."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from twinkle_tui.ui.app import TwinkleApp


class RunCommands(Provider):
    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = cast("TwinkleApp", self.app)
        cmds: list[tuple[str, Callable[[], object], str]] = [
            ("Pause the selected run", partial(app.action_command, "pause_training"), "SIGSTOP: memory and GPU state are kept"),
            ("Resume the selected run", partial(app.action_command, "resume_training"), "SIGCONT, or relaunch from the last checkpoint"),
            ("Stop the selected run", partial(app.action_command, "stop_training"), "checkpoint and exit (asks first)"),
            ("Kill the selected run", partial(app.action_command, "kill_training"), "SIGKILL now, no checkpoint (asks first)"),
            ("Delete the selected run", partial(app.action_command, "delete_run"), "an ended run and its files (asks first)"),
            ("Archive the selected run", partial(app.action_command, "archive_run"), "move an ended run to .archive/ (asks first)"),
            ("Start a new run", app.action_new_run, "a recipe from examples/ or a script path"),
            ("Choose metrics", app.action_pick_metrics, "up to four charts"),
            ("Reset zoom", app.action_reset_zoom, "show every step"),
            ("Toggle smoothing", app.action_toggle_smoothing, "debiased EMA over the raw series"),
            ("Toggle log-y", app.action_toggle_log_y, "logarithmic y axis"),
            ("Help", app.action_help, "keys and chat commands"),
        ]
        for summary in app.summaries:
            if summary.run_id != app.selected:
                cmds.append((f"Switch to run {summary.run_id}", partial(app.select, summary.run_id),
                             f"{summary.status.value}, step {summary.last_step}"))
                cmds.append((f"Compare with run {summary.run_id}", partial(app.set_compare, summary.run_id),
                             "overlay its metrics on the charts"))
        if app.settings.compare:
            cmds.append(("Stop comparing", partial(app.set_compare, None), f"remove {app.settings.compare}"))
        return cmds

    async def discover(self) -> Hits:
        for name, action, help_text in self._commands():
            yield DiscoveryHit(name, action, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), action, help=help_text)
