"""Metrics read from a run's console output, for scripts that write no metrics.jsonl (no TrainingRuntime, no
callback): the dicts Hugging Face's Trainer and TRL print (`{'loss': 0.0, 'grad_norm': nan, 'learning_rate':
2e-05, 'epoch': 0.1}`) and `loss=nan` / `loss: 2.31` / `Loss nan` style lines. Each point gets the step its
progress bar showed (`50/1000 [`), a `step`/`iter` field on its line, or else its order."""

from __future__ import annotations

import math
import re

import numpy as np

from twinkle_tui.runs.metrics import MetricSeries

_NUMBER = r"(?:nan|[-+]?inf(?:inity)?|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_DICT = re.compile(r"\{'[^{}]*\}")
_PAIR = re.compile(rf"'([^']+)':\s*(?:tensor\()?({_NUMBER})")
_KV = re.compile(rf"(?<![\w/.])([A-Za-z][\w/.]*(?: [a-z]+)?)\s*[=:]\s*({_NUMBER})(?![\w.%])", re.IGNORECASE)
_LOSS_SPACE = re.compile(rf"(?<![\w/.])(\w*loss)\s+({_NUMBER})(?![\w.%])", re.IGNORECASE)
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_STEP = re.compile(r"\b(?:global[ _]step|step|iter(?:ation)?)\s*[=:]?\s*\[?\s*(\d+)", re.IGNORECASE)
_SKIP_KEYS = ("epoch", "step", "iter", "iteration", "global_step", "global step")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) or text.lower().lstrip("+-") in ("nan", "inf", "infinity") else None


class ConsoleMetrics:
    """Metric series parsed from log lines, fed incrementally (only new lines are read)."""

    def __init__(self) -> None:
        self.series: dict[str, MetricSeries] = {}
        self.entries = 0  # lines that gave metrics
        self._progress: int | None = None
        self._last_step = 0

    def feed(self, lines: list[str]) -> bool:
        """Read these new lines; True if any metric was found."""
        found = False
        for line in lines:
            progress = _PROGRESS.findall(line)
            if progress:
                self._progress = int(progress[-1][0])
            if "loss" not in line.lower() and "{'" not in line:
                continue
            values = self._values(line)
            if not values:
                continue
            step = self._step(line, progress)
            for name, value in values.items():
                series = self.series.get(name)
                if series is None:
                    series = self.series[name] = MetricSeries(name)
                series.extend(np.array([step], dtype=np.int64), np.array([value]))
            self.entries += 1
            found = True
        return found

    def _values(self, line: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for block in _DICT.findall(line):
            if "'train_runtime'" in block:  # the end-of-training summary averages the whole run
                continue
            for key, text in _PAIR.findall(block):
                value = _number(text)
                if value is not None and key not in _SKIP_KEYS:
                    out[key] = value
        if out or "loss" not in line.lower():
            return out
        for key, text in [*_KV.findall(line), *_LOSS_SPACE.findall(line)]:
            name = key.strip().lower()
            value = _number(text)
            if value is not None and name not in _SKIP_KEYS:
                out.setdefault(name, value)
        return out if any("loss" in k for k in out) else {}

    def _step(self, line: str, progress: list[tuple[str, str]]) -> int:
        """The step a metrics line belongs to: a step/iter field on it (kept as is), else its progress bar's
        counter or the last one seen, else the next number; a counter that did not move (an epoch bar) gives
        the next number too."""
        m = _STEP.search(line)
        if m:
            step = int(m.group(1))
        else:
            counter = int(progress[-1][0]) if progress else self._progress
            step = counter if counter is not None and counter > self._last_step else self._last_step + 1
        self._last_step = max(self._last_step, step)
        return step
