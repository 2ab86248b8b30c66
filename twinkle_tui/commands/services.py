"""Services: the optional parts a front end adds to its session, each typed. The dashboard, `--ask`, headless and
doctor build them the same way (`Session.open`, then `twinkle_tui.agent.setup.connect_agent` for the LLM parts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twinkle_tui.process.controller import Launched
from twinkle_tui.process.servers import ServerManager


class SkillText(Protocol):
    @property
    def text(self) -> str: ...


class SkillIndex(Protocol):
    """The agent's skills, as the load_skill command reads them (twinkle_tui.agent.skills.SkillLibrary)."""

    def get(self, name: str) -> SkillText | None: ...
    def names(self) -> list[str]: ...


@dataclass
class Services:
    servers: ServerManager  # model servers and the training service the agent starts
    launched: list[Launched] = field(default_factory=list)  # supervisors of runs started here, reaped by the front end
    skills: SkillIndex | None = None  # set once the agent is connected
    llm_models: list[str] = field(default_factory=list)  # what the agent's endpoint serves
    llm_settings: object | None = None  # the agent's LLMSettings, for commands above the agent (start_research)

    def remember(self, launched: Launched | None) -> None:
        """Keep a launch's supervisor handle, so the front end can reap it."""
        if launched is not None:
            self.launched.append(launched)

    def reap(self) -> None:
        """Forget supervisors that have exited (and collect their exit status, so none stays a zombie)."""
        self.launched = [ln for ln in self.launched if ln.supervisor.poll() is None]
