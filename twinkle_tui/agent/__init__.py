"""The chat agent, without any UI: the endpoint (or the embedded llama.cpp server), the loop, history and skills.

Its tools are the command layer's commands (twinkle_tui.commands) plus its own (tools.py), run through the same
CommandRunner as keys and slash commands.
"""

from twinkle_tui.agent import tools  # noqa: F401  (registers the agent's own tools)
from twinkle_tui.agent.connect import Connection, connect
from twinkle_tui.agent.endpoint import MODES, EndpointError, LLMSettings
from twinkle_tui.agent.history import History
from twinkle_tui.agent.loop import AgentEvents, AgentLoop, describe_call
from twinkle_tui.agent.skills import SkillLibrary

__all__ = ["MODES", "AgentEvents", "AgentLoop", "Connection", "EndpointError", "History", "LLMSettings",
           "SkillLibrary", "connect", "describe_call"]
