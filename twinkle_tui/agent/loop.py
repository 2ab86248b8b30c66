"""AgentLoop: one user message in, commands over the command layer, an answer out.

Three ways, tried in order:
1. a fast route (routes.py): a clear imperative or a fixed question, understood without an LLM;
2. with a small local model (the embedded llama.cpp server, or --llm-agent intent): one grammar-constrained intent
   request, checked against the user's words (intents.py), the commands it names, and for questions the evidence
   phrased in two or three sentences by the model, with no tools;
3. with an endpoint: OpenAI-compatible tool calling, streamed (tool-call deltas reassembled by index), run ids
   offered as the allowed values and strings bounded, at most MAX_ROUNDS tool rounds per user message and then a
   plain explanation.
`<think>` and reasoning text stay out of the answer; history is pruned at whole-turn boundaries; one answer's LLM
requests share one deadline. Every command runs through the CommandRunner, which validates the arguments and asks
the user before anything destructive, whoever decided on it: safety is in code, not in the prompt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twinkle_tui.agent import intents
from twinkle_tui.agent.endpoint import EndpointError, LLMSettings, describe_error
from twinkle_tui.agent.history import History, Message
from twinkle_tui.agent.prompt import system_prompt
from twinkle_tui.agent.routes import Step, route
from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands.registry import REGISTRY
from twinkle_tui.commands.runner import CommandRunner, Outcome

log = logging.getLogger(__name__)

MAX_ROUNDS = 10
MAX_TOKENS = 1024
INTENT_TOKENS = 24  # {"intent": "..."} is about 8 tokens; the grammar allows nothing else
SLOT_TOKENS = 64  # one or two run ids or metric names, each one of those that exist
PHRASE_TOKENS = 120  # two or three sentences
FACT_CHARS = 600  # of each command's result, in the facts a model phrases
STRING_BOUND = 200  # characters of a free-text tool argument (script and content excepted)
LONG_TEXT = {"script", "content"}
ROUND_LIMIT_NOTE = ("You have used the limit of {n} tool rounds for this message. Do not call tools now: tell the "
                    "user plainly what you did, what you found, and what is still open.")


class AgentEvents(Protocol):
    """What a front end hears while the agent works."""

    def text(self, delta: str) -> Awaitable[None] | None: ...
    def reasoning(self, delta: str) -> Awaitable[None] | None: ...
    def tool_call(self, name: str, arguments: str) -> Awaitable[None] | None: ...
    def tool_result(self, name: str, outcome: Outcome) -> Awaitable[None] | None: ...
    def tokens(self, count: int) -> Awaitable[None] | None: ...  # tokens the LLM wrote so far for this answer


class QuietEvents:
    """Events nobody hears (benchmarks, and the base of events that pass on only some)."""

    def text(self, delta: str) -> None: ...
    def reasoning(self, delta: str) -> None: ...
    def tool_call(self, name: str, arguments: str) -> None: ...
    def tool_result(self, name: str, outcome: Outcome) -> None: ...
    def tokens(self, count: int) -> Awaitable[None] | None: ...


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
                 max_rounds: int = MAX_ROUNDS, clock: Callable[[], float] = time.monotonic,
                 routes: bool = True) -> None:
        self.settings = settings
        self.runner = runner
        self.history = history or History()
        self.skills = skills
        self.tool_names = tools if tools is not None else sorted(REGISTRY)
        self.client = client or settings.client()
        self.max_rounds = max_rounds
        self.clock = clock
        self.routes = routes
        self.last: Completion | None = None
        self.path = ""  # how the last answer was made: route, intent or tools
        self.written = 0  # tokens the LLM wrote for the last answer
        self._spent = 0.0  # seconds of LLM requests in this answer (the deadline's budget)

    def tools(self) -> list[dict[str, Any]]:
        """The tool definitions, with the run ids that exist as run_id's allowed values and free text bounded."""
        runs = [r.run_id for r in self.runner.session.summaries()][: intents.MAX_NAMES]
        return [bounded_tool(REGISTRY[name].tool(), runs) for name in self.tool_names if name in REGISTRY]

    async def ask(self, text: str, events: AgentEvents) -> str:
        """Answer one user message (raises EndpointError with one line if the LLM fails)."""
        self.history.add({"role": "user", "content": text})
        self._spent, self.written = 0.0, 0
        plan = await asyncio.to_thread(route, text, self.runner.session) if self.routes else None  # reads runs
        if plan is not None:
            self.path = "route"
            done = await self._run_steps(list(plan.steps), events)
            if plan.phrase and all(o.ok for _, o in done):
                self.path = "route+phrase"
                answer = await self._phrase(text, done, events)
            else:
                answer = self._summary(done)
                await _emit(events.text(answer))
        elif self.settings.uses_intents:
            self.path = "intent"
            answer = await self._intent_answer(text, events)
        else:
            self.path = "tools"
            return await self._tool_answer(text, events)
        self.history.add({"role": "assistant", "content": answer})
        return answer

    # ------------------------------------------------------------------ commands
    async def _run_steps(self, steps: list[Step], events: AgentEvents) -> list[tuple[Step, Outcome]]:
        """Run commands in order, each shown as it runs; stop at the first that fails or is declined."""
        done = []
        for step in steps:
            arguments = json.dumps(step.args)
            await _emit(events.tool_call(step.command, arguments))
            outcome = await self.runner.run(step.command, step.args)
            await _emit(events.tool_result(step.command, outcome))
            done.append((step, outcome))
            if not outcome.ok:
                break
        return done

    @staticmethod
    def _summary(done: list[tuple[Step, Outcome]]) -> str:
        """What commands did, as the answer: the last result (or the one that failed, or the refusal)."""
        if not done:
            return "Nothing to do."
        step, outcome = done[-1]
        if outcome.refused:
            return f"Not done: you declined ({step.command})."
        if not outcome.ok:
            return f"⚠ {outcome.text}"
        return outcome.text

    # ------------------------------------------------------------------ constrained intents
    async def _intent_answer(self, text: str, events: AgentEvents) -> str:
        session = self.runner.session
        error = ""
        decision: intents.Decision | None = None
        rejected: tuple[str, ...] = ()
        for _attempt in range(2):  # a choice that fails validation is retried once, with the reason
            messages, fmt = intents.intent_request(text, error, rejected)
            raw = await self._request(messages, events, INTENT_TOKENS, response_format=fmt, emit=False)
            try:
                kind = intents.parse(raw, ["intent"])["intent"]
                if kind not in intents.INTENTS:
                    raise ValueError(f"unknown intent {kind!r}")
            except (ValueError, TypeError) as exc:
                error = f"not valid JSON ({exc})"
                continue
            error = await asyncio.to_thread(intents.mismatch, session, text, kind)
            if error:
                rejected += (kind,)
                continue
            intent, need, question = await asyncio.to_thread(intents.fill, session, text, kind)
            if question:
                return question
            if need:  # a slot the request's words leave open: the model picks it among the values that exist
                messages, fmt = await asyncio.to_thread(intents.slot_request, session, text, need)
                raw = await self._request(messages, events, SLOT_TOKENS, response_format=fmt, emit=False)
                try:
                    for key, value in intents.parse(raw, need).items():
                        setattr(intent, key, value)
                except (ValueError, TypeError) as exc:
                    error = f"the {', '.join(need)} did not come back ({exc})"
                    continue
            decision = await asyncio.to_thread(intents.decide, session, text, intent)
            if not decision.retry:
                break
            error, decision = decision.retry, None
        if decision is None:
            line = (f"I could not work out what to do with that ({error}). Try naming the run and what you want, "
                    "or a slash command (/help).")
            named = await asyncio.to_thread(intents.named_runs, session, text)
            if len(named) != 1:
                return line
            # the request names one run: its status and findings are the facts it most likely wants (reads only)
            done = await self._run_steps([Step("get_training_status", {"run_id": named[0]}),
                                          Step("get_findings", {"run_id": named[0]})], events)
            facts = "\n\n".join(o.text for _, o in done)
            await _emit(events.text(f"{line}\n\n{facts}"))
            return f"{line}\n\n{facts}"
        if decision.ask:
            return decision.ask
        done = await self._run_steps(decision.steps, events)
        if (done and not all(o.ok for _, o in done)) or not decision.phrase:
            return self._summary(done)
        if decision.intent == "answer" and not done:
            return await self._request(self._general_messages(text), events, PHRASE_TOKENS, emit=True)
        return await self._phrase(text, done, events)

    async def _phrase(self, text: str, done: list[tuple[Step, Outcome]], events: AgentEvents) -> str:
        """The answer to a question from its evidence: the model's two or three sentences when every number in them
        is in the evidence, else the evidence itself (a small model's wording must not invent a step or a value)."""
        facts = [{"tool": step.command, "result": o.text[:FACT_CHARS]} for step, o in done]
        evidence = "\n\n".join(o.text for _, o in done)
        try:
            written = await self._request(intents.phrase_messages(text, facts), events, PHRASE_TOKENS, emit=False)
        except EndpointError as exc:  # the facts stand on their own: never an empty answer
            await _emit(events.text(evidence))
            return f"{evidence}\n\n*({exc})*"
        problem = intents.ungrounded(written, evidence + " " + text)
        answer = written if not problem else f"{evidence}\n\n*(the model's wording was left out: {problem})*"
        await _emit(events.text(answer))
        return answer

    def _general_messages(self, text: str) -> list[Message]:
        """A question that is not about a run's data: the short role, the state, the conversation so far."""
        system = intents.GENERAL_PROMPT + "\n\n" + intents.state_data(self.runner.session,
                                                                       *intents.choices(self.runner.session))
        past = [m for m in self._outgoing(self.history.window()) if m["role"] in ("user", "assistant")][-6:]
        return [{"role": "system", "content": system}, *past[:-1], {"role": "user", "content": text}]

    async def _request(self, messages: list[Message], events: AgentEvents, max_tokens: int,
                       response_format: dict[str, Any] | None = None, emit: bool = True) -> str:
        """One streamed request within what is left of the answer's deadline; the text (emitted as it comes when
        `emit`), with its token count reported as it grows."""
        kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": 0}
        if response_format is not None:
            kwargs["response_format"] = response_format
        quiet = events if emit else _Counting(events)
        completion = await self._timed(self._streamed(kwargs, quiet, self.clock()))
        self.last = completion
        return completion.text.strip()

    async def _timed(self, request: Awaitable[Completion]) -> Completion:
        left = self.settings.deadline - self._spent
        started = self.clock()
        try:
            if left <= 0:
                close = getattr(request, "close", None)
                if close is not None:
                    close()  # never started: no "coroutine was never awaited"
                raise TimeoutError
            return await asyncio.wait_for(request, timeout=left)
        except EndpointError:
            raise
        except Exception as exc:  # a cancellation (Esc) is a BaseException and passes through
            raise EndpointError(describe_error(exc, self.settings)) from None
        finally:
            self._spent += self.clock() - started

    # ------------------------------------------------------------------ tool calling (endpoints)
    async def _tool_answer(self, text: str, events: AgentEvents) -> str:
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
            elif m.get("role") == "tool":  # quoted: a log line in a result is data, not the user speaking
                out.append({"role": "user", "content": f"[result of {m.get('name', 'the tool')}, as JSON data]\n"
                                                       + json.dumps(str(m["content"]), ensure_ascii=False)})
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
        if stream:
            return await self._timed(self._streamed(kwargs, events, started))
        return await self._timed(self._whole_request(kwargs, events, started))

    async def _whole_request(self, kwargs: dict[str, Any], events: AgentEvents, started: float) -> Completion:
        response = await self.client.chat.completions.create(**kwargs)
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
        usage = getattr(response, "usage", None)
        self.written += int(getattr(usage, "completion_tokens", 0) or 0)
        await _emit(events.tokens(self.written))
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
                if delta.content or delta.tool_calls or getattr(delta, "reasoning_content", None):
                    self.written += 1  # a streamed chunk is about a token
                    await _emit(events.tokens(self.written))
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


class _Counting(QuietEvents):
    """Events that pass on only the token count (the intent's JSON is not an answer to show)."""

    def __init__(self, inner: AgentEvents) -> None:
        self.inner = inner

    def tokens(self, count: int) -> Awaitable[None] | None:
        return self.inner.tokens(count)


def bounded_tool(tool: dict[str, Any], runs: list[str]) -> dict[str, Any]:
    """A tool definition whose run_id takes only the runs that exist and whose free-text strings have a length
    bound (a model once filled run_id with 300 tokens of digits)."""
    fn = dict(tool["function"])
    params = json.loads(json.dumps(fn["parameters"]))
    for name, prop in params.get("properties", {}).items():
        if not isinstance(prop, dict) or prop.get("type") != "string" or "enum" in prop:
            continue
        if name == "run_id" and runs:
            prop["enum"] = list(runs)
        elif name not in LONG_TEXT:
            prop.setdefault("maxLength", STRING_BOUND)
    fn["parameters"] = params
    return {**tool, "function": fn}


def describe_call(name: str, arguments: str) -> str:
    """A tool call as one short line for the chat."""
    try:
        args = json.loads(arguments or "{}")
        shown = ", ".join(f"{k}={json.dumps(v)[:40]}" for k, v in args.items()) if isinstance(args, dict) else arguments
    except ValueError:
        shown = (arguments or "")[:80]
    return f"{name}({shown})"
