"""How a front end gets its agent, the same way everywhere (the dashboard's chat, `--ask`): probe the endpoint or
start the embedded LLM, load the skills into the session's services, and build the AgentLoop with the same tools."""

from __future__ import annotations

import os
from dataclasses import dataclass

from twinkle_tui.agent import tools as _tools  # noqa: F401  (registers the agent's own tools)
from twinkle_tui.agent.connect import Connection, connect
from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.agent.history import History
from twinkle_tui.agent.loop import AgentLoop
from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands import REGISTRY, CommandRunner

SKILLS_GIT_ENV = "TWINKLE_SKILLS_GIT"


def agent_tools() -> list[str]:
    """The commands the agent may call: every registered command offered to it (not `help`, a list of slash
    commands for people, nor `apply_fix`, the monitor's)."""
    return sorted(name for name, cmd in REGISTRY.items() if cmd.agent)


@dataclass
class Agent:
    """A connected agent: how it is connected (and the embedded server, if one was started), its loop (None when
    no LLM answers: slash commands still work) and its skills."""

    connection: Connection
    loop: AgentLoop | None
    skills: SkillLibrary

    def close(self) -> None:
        self.connection.close()  # the embedded LLM server goes with its front end


async def connect_agent(runner: CommandRunner, settings: LLMSettings, history: History | None = None) -> Agent:
    """Connect as settings.mode says (call it on the front end's event loop: an embedded server started from here
    dies with it) and fill the session's services: the endpoint's models and the skills."""
    session = runner.session
    connection = await connect(settings, session.store.home)
    skills = SkillLibrary(session.store.home, os.environ.get(SKILLS_GIT_ENV)).load()
    session.services.llm_models = list(connection.models)
    session.services.skills = skills
    loop = None
    if connection.settings is not None:
        loop = AgentLoop(connection.settings, runner, history or History(), skills, tools=agent_tools())
    return Agent(connection, loop, skills)
