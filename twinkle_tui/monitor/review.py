"""The LLM review: a snapshot and the rules' findings go to the agent's endpoint, which answers with one JSON
object (LGTM, WARNING or FIX with the complete fixed script). The answer is read tolerantly (code fences, reasoning
around it); a reply that merely contains code is never a FIX, and an unreadable reply is no decision at all."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from twinkle_tui.agent.endpoint import LLMSettings, describe_error
from twinkle_tui.monitor.rules import Finding
from twinkle_tui.monitor.snapshot import RunSnapshot

log = logging.getLogger(__name__)

DECISIONS = ("LGTM", "WARNING", "FIX")
MAX_TOKENS = 4096

PROMPT = """You review one training run for twinkle-tui. Below are its state, recent metrics, the end of its log,
what deterministic checks found, and its current script. Decide:
- LGTM: nothing needs attention.
- WARNING: something needs the user's attention; say what, with evidence.
- FIX: the script has a clear error you can repair (an exception from the code, a wrong name or import, a missing
  file path, an out-of-memory that a smaller micro batch fixes). Give the complete fixed script.
Never propose a FIX for a NaN or a diverging loss: say WARNING and name the cure (a lower learning rate, or resuming
from an earlier checkpoint).
Answer with exactly one JSON object and nothing else:
{"decision": "LGTM" | "WARNING" | "FIX", "summary": "one line", "evidence": ["step and value", ...],
 "diagnosis": "what is wrong and why", "script": "the complete fixed script (FIX only)"}"""


@dataclass(frozen=True)
class Review:
    decision: str
    summary: str
    evidence: tuple[str, ...] = ()
    diagnosis: str = ""
    script: str | None = None
    raw: str = field(default="", compare=False, repr=False)


def _objects(text: str) -> list[str]:
    """Candidate JSON objects in a reply: fenced blocks first, then every balanced {...} span."""
    found = [m.group(1) for m in re.finditer(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.DOTALL)]
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def parse_review(text: str) -> Review | None:
    """The review in a reply, or None if there is none that can be read."""
    cleaned = re.sub(r"<think>.*?</think>", "", text or "", flags=re.DOTALL)
    for candidate in sorted(_objects(cleaned), key=len, reverse=True):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        decision = str(data.get("decision", "")).strip().upper()
        if decision not in DECISIONS:
            continue
        script = data.get("script")
        if decision == "FIX" and not (isinstance(script, str) and script.strip()):
            decision = "WARNING"  # a fix without a script is advice, not a fix
        evidence = data.get("evidence") or []
        return Review(decision, str(data.get("summary") or "").strip()[:300],
                      tuple(str(e)[:200] for e in evidence) if isinstance(evidence, list) else (str(evidence)[:200],),
                      str(data.get("diagnosis") or "").strip()[:2000],
                      script if decision == "FIX" else None, text)
    return None


def review_messages(snapshot: RunSnapshot, findings: list[Finding]) -> list[dict[str, Any]]:
    checks = "\n".join(f.line() + (f" (evidence: {'; '.join(f.evidence[:4])})" if f.evidence else "")
                       for f in findings) or "none"
    script = snapshot.script if snapshot.script is not None else "(this run runs a recipe, not a script)"
    body = f"{snapshot.for_llm()}\n\nDeterministic checks:\n{checks}\n\nCurrent script (train.py):\n{script}"
    return [{"role": "system", "content": PROMPT}, {"role": "user", "content": body}]


async def review(settings: LLMSettings, snapshot: RunSnapshot, findings: list[Finding]) -> Review | None:
    """Ask the endpoint; None when there is no readable decision (logged, never raised)."""
    client = settings.client(timeout=180)
    try:
        response = await client.chat.completions.create(model=settings.model, max_tokens=MAX_TOKENS, temperature=0,
                                                        messages=review_messages(snapshot, findings))
        text = response.choices[0].message.content or "" if response.choices else ""
    except Exception as exc:
        log.warning("monitor review of %s failed: %s", snapshot.run_id, describe_error(exc, settings))
        return None
    finally:
        await client.close()
    result = parse_review(text)
    if result is None:
        log.info("monitor review of %s had no readable decision: %r", snapshot.run_id, text[:300])
    return result
