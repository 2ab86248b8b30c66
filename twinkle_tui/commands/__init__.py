"""The command layer: view state and every action over the run store and the process controller, without a UI.

Keys, slash commands, the agent's tools and the monitor all go through `Session.execute` (see registry.py).
"""

from twinkle_tui.commands import charts, info, runs  # noqa: F401  (registers the commands)
from twinkle_tui.commands.registry import (
    REGISTRY,
    SLASH,
    Command,
    CommandError,
    Confirmation,
    Reply,
    parse_slash,
)
from twinkle_tui.commands.session import Resources, Session
from twinkle_tui.commands.view import ChartSettings
from twinkle_tui.research import commands as _research  # noqa: F401, I001  (registers start_research and /research)

__all__ = ["REGISTRY", "SLASH", "ChartSettings", "Command", "CommandError", "Confirmation", "Reply", "Resources",
           "Session", "parse_slash"]
