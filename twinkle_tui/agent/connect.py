"""Which LLM the agent talks to: the configured endpoint if it answers (auto), the embedded llama.cpp server
otherwise (or when asked for), or none. Whatever happens is said once, in one line."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from twinkle_tui.agent.embedded import SMOKE_TEST_NOTE, EmbeddedLLM, default_threads, unavailable
from twinkle_tui.agent.endpoint import EndpointError, LLMSettings, probe


@dataclass
class Connection:
    settings: LLMSettings | None
    notice: str
    models: list[str] = field(default_factory=list)
    embedded: EmbeddedLLM | None = None
    error: bool = False

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


async def connect(settings: LLMSettings, home: Path) -> Connection:
    """Probe and start what settings.mode asks for (call on the main thread's event loop: the embedded server is
    started from there so it dies with the app)."""
    if settings.mode == "none":
        return Connection(None, "LLM off (--llm none): slash commands work; type /help")
    reason = ""
    if settings.mode == "auto":
        try:
            models = await probe(settings)
            return Connection(settings, f"LLM: {settings.label}", models)
        except EndpointError as exc:
            reason = str(exc)
    problem = unavailable(settings.gguf)
    if problem:
        return Connection(None, f"{reason + '; ' if reason else ''}{problem}; slash commands work (type /help)",
                          error=True)
    threads = settings.threads or default_threads(training=_training(home))
    embedded = EmbeddedLLM(home / ".logs" / "llm-server.log", settings.gguf, threads=threads,
                           tool_calls=settings.agent == "tools")
    try:
        embedded.launch()
        ready = await asyncio.to_thread(embedded.wait_ready)
    except EndpointError as exc:
        embedded.stop()
        return Connection(None, f"{reason + '; ' if reason else ''}{exc}; slash commands work", error=True)
    except BaseException:
        embedded.stop()
        raise
    ready = dataclasses.replace(ready, deadline=settings.deadline, agent=settings.agent, threads=threads)
    what = f"the embedded LLM ({Path(str(embedded.gguf)).name}, {threads} thread{'s' if threads > 1 else ''})"
    lead = f"{reason}; using {what} instead" if reason else f"using {what}"
    note = SMOKE_TEST_NOTE if settings.gguf is None else ""
    return Connection(ready, f"{lead}. {note}".strip(), [ready.model], embedded)


def _training(home: Path) -> bool:
    """Whether a run is live under home now (the embedded LLM then leaves it half of the cores)."""
    from twinkle_tui.runs.store import RunStore

    try:
        return any(r.status.is_active for r in RunStore(home).list_runs())
    except OSError:
        return False
