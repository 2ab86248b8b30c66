"""Where the agent's LLM lives and what is wrong with it, in one line: an OpenAI-compatible endpoint (Ollama, vLLM,
llama.cpp's server, OpenAI) reached with the openai client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_BASE_URL = "http://localhost:11434/v1"
DEFAULT_MODEL = "qwen3.5"
DEFAULT_API_KEY = "not-needed"
PROBE_TIMEOUT = 3.0
DEFAULT_DEADLINE = 120.0  # seconds one answer may take, all its LLM requests together
MODES = ("auto", "embedded", "none")  # --llm: which LLM answers
AGENT_MODES = ("auto", "tools", "intent")  # --llm-agent: how it is asked


@dataclass(frozen=True)
class Quirks:
    """What an endpoint's chat template and server cannot do, and how the agent works around it.

    llama-cpp-python's server with the model's own chat template (no function-calling handler: that one let a reply
    be only a function name, and HTML-escaped tool results) renders only system, user and assistant messages, and
    rejects assistant content null. It does take a JSON schema as response_format (a grammar), which the agent's
    constrained intent step uses instead of tool calls.
    """

    stream_with_tools: bool = True
    tool_results_as_text: bool = False


LLAMA_CPP_QUIRKS = Quirks(stream_with_tools=False, tool_results_as_text=True)


@dataclass(frozen=True)
class LLMSettings:
    """The endpoint (flag > environment > default). The API key is never written to disk or logs."""

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    mode: str = "auto"  # auto: the endpoint if it answers, else the embedded LLM; embedded; none
    gguf: str | None = None  # the embedded LLM's model file (default: the bundled SmolLM2-135M-Instruct)
    quirks: Quirks = Quirks()
    embedded: bool = False  # this endpoint is the embedded llama.cpp server
    deadline: float = DEFAULT_DEADLINE  # seconds one answer may take (all its requests together)
    threads: int | None = None  # the embedded server's threads (None: all cores, half while a run trains)
    agent: str = "auto"  # auto: constrained intents on the embedded server, tool calls on endpoints; tools; intent

    @property
    def uses_intents(self) -> bool:
        """Whether answers go through the constrained intent step (small local models) rather than tool calls."""
        return self.agent == "intent" or (self.agent == "auto" and self.embedded)

    def client(self, timeout: float | None = None) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or DEFAULT_API_KEY,
                           timeout=self.deadline if timeout is None else timeout, max_retries=0)

    @property
    def label(self) -> str:
        return f"{self.model} at {self.base_url}"


class EndpointError(Exception):
    """The LLM cannot be used; the message is one line a user can act on."""


def describe_error(exc: BaseException, settings: LLMSettings) -> str:
    """An openai (or network) error as one line: unreachable, refused key, unknown model, or the server's words."""
    import openai

    where = settings.base_url
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return (f"the LLM at {where} did not answer within {settings.deadline:.0f}s (the deadline: --llm-deadline "
                "or TWINKLE_LLM_DEADLINE)")
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the LLM at {where} (is the server running?)"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"the LLM at {where} refused the API key (set --llm-api-key or TWINKLE_LLM_API_KEY)"
    if isinstance(exc, openai.NotFoundError):
        return f"the LLM at {where} has no model {settings.model!r} (set --llm-model or TWINKLE_LLM_MODEL)"
    if isinstance(exc, openai.APIStatusError):
        message = _server_message(exc)
        return f"the LLM at {where} answered {exc.status_code}: {message}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the LLM at {where} failed: {text}"


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]).splitlines()[0][:200]
        if isinstance(error, str):
            return error.splitlines()[0][:200]
    return (str(getattr(exc, "message", "")) or type(exc).__name__).splitlines()[0][:200]


async def probe(settings: LLMSettings, timeout: float = PROBE_TIMEOUT) -> list[str]:
    """The endpoint's models, or EndpointError: unreachable, refused key, or a model name it does not serve."""
    client = settings.client(timeout=timeout)
    try:
        page = await client.models.list()
        models = [m.id for m in page.data]
    except Exception as exc:
        raise EndpointError(describe_error(exc, settings)) from None
    finally:
        await client.close()
    served = settings.model in models or any(m.startswith(settings.model + ":") for m in models)  # Ollama's tags
    if models and not served and not settings.embedded:
        shown = ", ".join(models[:6]) + (" …" if len(models) > 6 else "")
        raise EndpointError(f"the LLM at {settings.base_url} has no model {settings.model!r}; it serves: {shown}")
    return models
