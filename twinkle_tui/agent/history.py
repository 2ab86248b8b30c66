"""The conversation: OpenAI-format messages, pruned for each request at whole-turn boundaries within a message
count and a token budget, and kept across restarts under $TWINKLE_HOME/.chat/ (bounded). No API key is ever part
of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import append_jsonl

log = logging.getLogger(__name__)

MAX_MESSAGES = 50  # sent per request
TOKEN_BUDGET = 6000  # sent per request (estimated), the system prompt aside
MAX_TOOL_CHARS = 4000  # a larger tool result is cut, with a note saying so
MAX_STORED = 400  # kept on disk
CHARS_PER_TOKEN = 4

Message = dict[str, Any]


def estimate_tokens(message: Message) -> int:
    size = len(str(message.get("content") or ""))
    for call in message.get("tool_calls") or []:
        size += len(json.dumps(call))
    return size // CHARS_PER_TOKEN + 4


def truncate_tool_result(text: str, limit: int = MAX_TOOL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[truncated: {len(text) - limit} more characters not shown; ask for less (a step range, " \
                          "fewer lines) to see them]"


def turns(messages: list[Message]) -> list[list[Message]]:
    """Messages grouped into turns: each starts with a user message and holds the answers and tool calls after it."""
    out: list[list[Message]] = []
    for m in messages:
        if m.get("role") == "user" or not out:
            out.append([m])
        else:
            out[-1].append(m)
    return out


def prune(messages: list[Message], max_messages: int = MAX_MESSAGES, budget: int = TOKEN_BUDGET) -> list[Message]:
    """The newest whole turns that fit both limits (the newest turn always, cut to the limit if it alone is too
    long, never starting with a tool result whose call was dropped)."""
    kept: list[list[Message]] = []
    count = tokens = 0
    for turn in reversed(turns(messages)):
        cost = sum(estimate_tokens(m) for m in turn)
        if kept and (count + len(turn) > max_messages or tokens + cost > budget):
            break
        kept.append(turn)
        count, tokens = count + len(turn), tokens + cost
    out = [m for turn in reversed(kept) for m in turn]
    if len(out) > max_messages:  # one giant turn: keep its question and its newest messages
        head, tail = out[0], out[-(max_messages - 1):]
        while tail and tail[0].get("role") == "tool":
            tail = tail[1:]
        out = [head, *tail]
    return out


class History:
    """The conversation, persisted as JSON lines (one message each)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.messages: list[Message] = []
        if path is not None:
            self.messages = self._load(path)

    def _load(self, path: Path) -> list[Message]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        out = []
        for line in lines[-MAX_STORED:]:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict) and m.get("role") in ("user", "assistant", "tool"):
                out.append(m)
        # Start at a turn boundary, so no answer is left without its question.
        while out and out[0].get("role") != "user":
            out.pop(0)
        return out

    def add(self, message: Message) -> None:
        if message.get("role") == "tool":
            message = {**message, "content": truncate_tool_result(str(message.get("content") or ""))}
        self.messages.append(message)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, message)
            if len(self.messages) > 2 * MAX_STORED:
                self.messages = self.messages[-MAX_STORED:]
                while self.messages and self.messages[0].get("role") != "user":
                    self.messages.pop(0)
                self._rewrite()
        except OSError as exc:
            log.warning("cannot save the chat history: %s", exc)

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.messages), encoding="utf-8")
        tmp.replace(self.path)

    def clear(self) -> None:
        self.messages = []
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def window(self) -> list[Message]:
        return prune(self.messages)
