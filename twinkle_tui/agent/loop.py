"""AgentLoop: one user message in, tool calls over the command layer, an answer out.

OpenAI-compatible tool calling (any endpoint): streamed answers (tool-call deltas reassembled by index), at most
MAX_ROUNDS tool rounds per user message and then a plain explanation, `<think>` and reasoning text kept out of the
answer, history pruned at whole-turn boundaries. Every tool runs through the CommandRunner, which validates the
arguments and asks the user before anything destructive: safety is in code, not in the prompt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twinkle_tui.agent.endpoint import EndpointError, LLMSettings, describe_error
from twinkle_tui.agent.history import History, Message
from twinkle_tui.agent.prompt import system_prompt
from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands.registry import REGISTRY
from twinkle_tui.commands.runner import CommandRunner, Outcome

log = logging.getLogger(__name__)

MAX_ROUNDS = 10
MAX_TOKENS = 1024
ROUND_LIMIT_NOTE = ("You have used the limit of {n} tool rounds for this message. Do not call tools now: tell the "
                    "user plainly what you did, what you found, and what is still open.")


class AgentEvents(Protocol):
    """What a front end hears while the agent works."""

    def text(self, delta: str) -> Awaitable[None] | None: ...
    def reasoning(self, delta: str) -> Awaitable[None] | None: ...
    def tool_call(self, name: str, arguments: str) -> Awaitable[None] | None: ...
    def tool_result(self, name: str, outcome: Outcome) -> Awaitable[None] | None: ...


class ThinkFilter:
    """Splits streamed text into the answer and `<think>...</think>` reasoning, across chunk boundaries."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        answer: list[str] = []
        reasoning: list[str] = []
        data = self.pending + text
        self.pending = ""
        while data:
            tag = self.CLOSE if self.inside else self.OPEN
            at = data.find(tag)
            if at >= 0:
                (reasoning if self.inside else answer).append(data[:at])
                data = data[at + len(tag) :]
                self.inside = not self.inside
                continue
            keep = _partial_suffix(data, tag)  # the start of a tag may end this chunk
            (reasoning if self.inside else answer).append(data[: len(data) - keep])
            self.pending = data[len(data) - keep :]
            break
        return "".join(answer), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        rest, self.pending = self.pending, ""
        return ("", rest) if self.inside else (rest, "")


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Completion:
    """One model response: the answer text, reasoning, and tool calls."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    first_token: float | None = None  # seconds from the request to the first streamed content
    chunks: int = 0


async def _emit(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


class AgentLoop:
    def __init__(self, settings: LLMSettings, runner: CommandRunner, history: History | None = None,
                 skills: SkillLibrary | None = None, tools: list[str] | None = None, client: Any = None,
                 max_rounds: int = MAX_ROUNDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.runner = runner
        self.history = history or History()
        self.skills = skills
        self.tool_names = tools if tools is not None else sorted(REGISTRY)
        self.client = client or settings.client()
        self.max_rounds = max_rounds
        self.clock = clock
        self.last: Completion | None = None

    def tools(self) -> list[dict[str, Any]]:
        return [REGISTRY[name].tool() for name in self.tool_names if name in REGISTRY]

    async def ask(self, text: str, events: AgentEvents) -> str:
        """Answer one user message (raises EndpointError with one line if the LLM fails)."""
        self.history.add({"role": "user", "content": text})
        system = system_prompt(self.runner.session, self.skills, text)
        for round_no in range(self.max_rounds + 1):
            use_tools = round_no < self.max_rounds
            messages = [{"role": "system", "content": system}, *self._outgoing(self.history.window())]
            if not use_tools:
                messages.append({"role": "system" if not self.settings.quirks.tool_results_as_text else "user",
                                 "content": ROUND_LIMIT_NOTE.format(n=self.max_rounds)})
            completion = await self._complete(messages, use_tools, events)
            self.last = completion
            if completion.tool_calls and use_tools:
                self.history.add({"role": "assistant", "content": completion.text or "",
                                  "tool_calls": [{"id": c.id or f"call_{round_no}_{i}", "type": "function",
                                                  "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                                                 for i, c in enumerate(completion.tool_calls)]})
                for i, call in enumerate(completion.tool_calls):
                    await _emit(events.tool_call(call.name, call.arguments))
                    outcome = await self.runner.run_json(call.name, call.arguments)
                    await _emit(events.tool_result(call.name, outcome))
                    self.history.add({"role": "tool", "tool_call_id": call.id or f"call_{round_no}_{i}",
                                      "name": call.name, "content": outcome.for_llm()})
                continue
            answer = completion.text.strip()
            self.history.add({"role": "assistant", "content": answer})
            return answer
        raise AssertionError("unreachable: the last round has no tools")

    def _outgoing(self, messages: list[Message]) -> list[Message]:
        """The history as this endpoint can take it. llama.cpp's function-calling template renders only system,
        user and assistant messages: tool calls become assistant text and results become user text there."""
        if not self.settings.quirks.tool_results_as_text:
            return [{**m, "content": m.get("content") or ""} if m.get("role") == "assistant" else m for m in messages]
        out: list[Message] = []
        for m in messages:
            if m.get("role") == "assistant" and m.get("tool_calls"):
                calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in m["tool_calls"])
                out.append({"role": "assistant", "content": ((m.get("content") or "") + f"\n[called {calls}]").strip()})
            elif m.get("role") == "tool":
                out.append({"role": "user", "content": f"[result of {m.get('name', 'the tool')}]\n{m['content']}"})
            else:
                out.append({"role": m["role"], "content": m.get("content") or ""})
        return out

    async def _complete(self, messages: list[Message], use_tools: bool, events: AgentEvents) -> Completion:
        kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages, "max_tokens": MAX_TOKENS}
        if use_tools:
            kwargs["tools"] = self.tools()
            kwargs["tool_choice"] = "auto"
        stream = not use_tools or self.settings.quirks.stream_with_tools
        started = self.clock()
        try:
            if stream:
                return await self._streamed(kwargs, events, started)
            response = await self.client.chat.completions.create(**kwargs)
        except EndpointError:
            raise
        except Exception as exc:  # a cancellation (Esc) is a BaseException and passes through
            raise EndpointError(describe_error(exc, self.settings)) from None
        return await self._whole(response, events, started)

    async def _whole(self, response: Any, events: AgentEvents, started: float) -> Completion:
        choice = response.choices[0] if response.choices else None
        message = choice.message if choice else None
        out = Completion(first_token=self.clock() - started)
        if message is None:
            return out
        answer, reasoning = ThinkFilter().feed(message.content or "")
        extra = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
        out.reasoning = (str(extra) if extra else "") + reasoning
        out.text = answer
        for call in message.tool_calls or []:
            fn = getattr(call, "function", None)
            if fn is not None:
                out.tool_calls.append(ToolCall(call.id or "", fn.name or "", fn.arguments or ""))
        if out.reasoning:
            await _emit(events.reasoning(out.reasoning))
        if out.text and not out.tool_calls:
            await _emit(events.text(out.text))
        return out

    async def _streamed(self, kwargs: dict[str, Any], events: AgentEvents, started: float) -> Completion:
        out = Completion()
        calls: dict[int, ToolCall] = {}
        think = ThinkFilter()
        stream = await self.client.chat.completions.create(**kwargs, stream=True)
        try:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta is None:
                    continue
                extra = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                if extra:
                    out.reasoning += str(extra)
                    await _emit(events.reasoning(str(extra)))
                if delta.content:
                    out.chunks += 1
                    if out.first_token is None:
                        out.first_token = self.clock() - started
                    answer, reasoning = think.feed(delta.content)
                    if reasoning:
                        out.reasoning += reasoning
                        await _emit(events.reasoning(reasoning))
                    if answer:
                        out.text += answer
                        await _emit(events.text(answer))
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index or 0, ToolCall())
                    call.id = part.id or call.id
                    fn = part.function
                    if fn is not None:
                        call.name = call.name or (fn.name or "")
                        call.arguments += fn.arguments or ""
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # closing an interrupted stream must not hide why it was interrupted
                    log.debug("closing the stream failed", exc_info=True)
        answer, reasoning = think.flush()
        out.text += answer
        if answer:
            await _emit(events.text(answer))
        out.reasoning += reasoning
        out.tool_calls = [calls[i] for i in sorted(calls) if calls[i].name]
        return out


def describe_call(name: str, arguments: str) -> str:
    """A tool call as one short line for the chat."""
    try:
        args = json.loads(arguments or "{}")
        shown = ", ".join(f"{k}={json.dumps(v)[:40]}" for k, v in args.items()) if isinstance(args, dict) else arguments
    except ValueError:
        shown = (arguments or "")[:80]
    return f"{name}({shown})"
