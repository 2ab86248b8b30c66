"""The command layer: view state and every action over the run store and the process controller, without a UI.

Keys, slash commands, the agent's tools and the monitor all run registered commands (registry.py) over a Session,
through a CommandRunner (runner.py).
"""

from twinkle_tui.commands import chart_commands, info, runs, scripts  # noqa: F401  (registers the commands)
from twinkle_tui.commands.chart_settings import ChartSettings
from twinkle_tui.commands.registry import REGISTRY, SLASH, Command, execute, parse_slash, prepare
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.runner import CommandRunner, Outcome
from twinkle_tui.commands.services import Services
from twinkle_tui.commands.session import Resources, Session

__all__ = ["REGISTRY", "SLASH", "ChartSettings", "Command", "CommandError", "CommandRunner", "Confirmation", "Outcome",
           "Reply", "Resources", "Services", "Session", "execute", "parse_slash", "prepare"]
