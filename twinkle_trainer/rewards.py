"""Reward functions for RL: fn(completions, answers) -> one float per completion.

Built-ins: match (exact answer), math (the last number equals the answer), format (the reply is just a number).
Anything else is a plugin named by dotted path, `package.module.function`, with the same signature.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence

RewardFn = Callable[[Sequence[str], Sequence[str | None]], list[float]]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(Exception):
    """A reward that cannot be found or misbehaves; one line naming it."""


def match(completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    return [float(a is not None and c.strip().lower() == a.strip().lower()) for c, a in zip(completions, answers, strict=True)]


def math(completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    out = []
    for c, a in zip(completions, answers, strict=True):
        numbers = NUMBER.findall(c)
        try:
            out.append(float(bool(numbers) and a is not None and abs(float(numbers[-1]) - float(a)) < 1e-6))
        except ValueError:
            out.append(0.0)
    return out


def format_(completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    """1 for a bare number, 0.5 for a short reply that contains one, else 0."""
    out = []
    for c in completions:
        text = c.strip()
        if NUMBER.fullmatch(text):
            out.append(1.0)
        elif NUMBER.search(text) and len(text) <= 40:
            out.append(0.5)
        else:
            out.append(0.0)
    return out


BUILTIN: dict[str, RewardFn] = {"match": match, "math": math, "format": format_}


def resolve(name: str) -> RewardFn:
    if name in BUILTIN:
        return BUILTIN[name]
    if "." not in name:
        raise RewardError(f"reward {name!r} not found: use match, math, format or module.function")
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"reward plugin {name!r} not found: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"reward plugin {name!r} not found: {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return,unused-ignore]


def score(fns: dict[str, RewardFn], completions: Sequence[str], answers: Sequence[str | None]) -> dict[str, list[float]]:
    """Every reward function's scores, checked for length and type."""
    out = {}
    for name, fn in fns.items():
        try:
            values = [float(v) for v in fn(completions, answers)]
        except RewardError:
            raise
        except Exception as exc:
            raise RewardError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from None
        if len(values) != len(completions):
            raise RewardError(f"reward {name!r} returned {len(values)} scores for {len(completions)} completions")
        out[name] = values
    return out
