"""Latency of the agent on the embedded LLM: time to first token and tokens per second through twinkle-tui's agent
loop, against the same request sent straight to llama.cpp's server (a bare HTTP stream), measured in the same run;
then the prompt cache: the agent's intent request for a first question (its fixed instructions not yet seen by the
server) against the same request for a second, different question (they share the instructions).

    python bench/bench_agent.py [--repeats 5]

Prints both figures and their ratios (the agent must add at most 10%; the second question must be faster).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from twinkle_tui.agent import intents
from twinkle_tui.agent.embedded import EmbeddedLLM
from twinkle_tui.agent.endpoint import LLMSettings
from twinkle_tui.agent.loop import AgentLoop, QuietEvents
from twinkle_tui.commands import Confirmation, Session
from twinkle_tui.commands.runner import CommandRunner
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore

MESSAGES = [{"role": "system", "content": "You are a concise assistant for machine-learning engineers."},
            {"role": "user", "content": "Explain in a few sentences what a learning-rate warmup is for."}]
MAX_TOKENS = 96


def bare_request(settings: LLMSettings) -> tuple[float, int, float]:
    """The request on the wire, nothing else: (seconds to the first token, tokens, seconds in all)."""
    url = urlsplit(settings.base_url)
    body = json.dumps({"model": settings.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True,
                       "temperature": 0, "seed": 1})
    started = time.perf_counter()
    first, tokens = None, 0
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
    conn.request("POST", url.path + "/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"]
        if delta.get("content"):
            tokens += 1
            first = first if first is not None else time.perf_counter() - started
    conn.close()
    return first or 0.0, tokens, time.perf_counter() - started


async def bare(settings: LLMSettings) -> tuple[float, int, float]:
    return await asyncio.to_thread(bare_request, settings)


async def through_agent(loop: AgentLoop) -> tuple[float, int, float]:
    """The same request through the agent's streaming path (openai client, think filter, events)."""
    started = time.perf_counter()
    kwargs = {"model": loop.settings.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0,
              "seed": 1}
    completion = await loop._streamed(kwargs, QuietEvents(), loop.clock())
    return completion.first_token or 0.0, completion.chunks, time.perf_counter() - started


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        llm = EmbeddedLLM(home / "llm.log")
        settings = llm.start()
        try:
            async def never(c: Confirmation) -> bool:
                return False

            session = Session(RunStore(home), ProcessController(home))
            loop = AgentLoop(settings, CommandRunner(session, never), tools=[])
            await bare(settings)  # warm both paths (the first prompt evaluation is slower)
            await through_agent(loop)
            cache = [await intent_request(loop, q) for q in ("when did my run diverge?", "which run is the best?")]
            rows: dict[str, list[tuple[float, int, float]]] = {"bare": [], "agent": []}
            for _ in range(repeats):  # interleaved, so drift affects both alike
                rows["bare"].append(await bare(settings))
                rows["agent"].append(await through_agent(loop))
        finally:
            llm.stop()
    figures = {}
    for name, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] / max(r[2] - r[0], 1e-9) for r in runs)
        figures[name] = (ttft, rate)
        print(f"{name:>6}: first token {ttft * 1000:7.1f} ms · {rate:6.1f} tokens/s "
              f"(median of {repeats}, {runs[0][1]} tokens)")
    ttft_ratio = figures["agent"][0] / figures["bare"][0]
    rate_ratio = figures["bare"][1] / figures["agent"][1]
    print(f"ratio agent/bare: first token x{ttft_ratio:.3f}, time per token x{rate_ratio:.3f} "
          f"(target: at most x1.10)")
    print(f"intent request: first question {cache[0]:.2f} s, second question {cache[1]:.2f} s, "
          f"ratio second/first x{cache[1] / cache[0]:.3f} (target: below x1; the shared instructions are cached)")


async def intent_request(loop: AgentLoop, question: str) -> float:
    """Seconds of the agent's constrained intent request for a question."""
    messages, fmt = intents.intent_request(question)
    started = time.perf_counter()
    await loop._request(messages, QuietEvents(), 24, response_format=fmt, emit=False)
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeats))
