"""The results so far as structured data: best, keep rate, what was tried, near misses. The LLM proposer, the
research view, headless progress lines and `research report` all read it from here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twinkle_tui.research.records import Experiment

STATUS_ORDER = {"keep": 0, "discard": 1, "timeout": 2, "crash": 3, "stopped": 4, "refused": 5}


@dataclass(frozen=True)
class Summary:
    runs: list[Experiment]
    refused: int
    best: Experiment | None
    baseline: float | None
    noise: float
    maximize: bool
    best_value: float | None = None  # the loop's best (the baseline's mean over its repeats, or the last keep)

    @property
    def kept(self) -> int:
        return sum(1 for e in self.runs if e.status == "keep" and not e.baseline)

    @property
    def tried(self) -> int:
        """Experiments after the baseline."""
        return sum(1 for e in self.runs if not e.baseline)

    @property
    def keep_rate(self) -> float | None:
        return self.kept / self.tried if self.tried else None

    @property
    def best_metric(self) -> float | None:
        if self.best_value is not None:
            return self.best_value
        return self.best.metric if self.best is not None else self.baseline

    def improvement(self) -> float | None:
        """How far the best is from the baseline, in the goal's direction (positive is better)."""
        if self.best_metric is None or self.baseline is None:
            return None
        delta = self.best_metric - self.baseline
        return delta if self.maximize else -delta

    def near_misses(self, limit: int = 5) -> list[Experiment]:
        """Discarded experiments closest to the best they were compared with."""
        scored = [e for e in self.runs if e.status == "discard" and not e.baseline and _finite(e.metric)
                  and _finite(e.best_before)]
        scored.sort(key=lambda e: abs(float(e.metric or 0) - float(e.best_before or 0)))
        return scored[:limit]

    def leaderboard(self) -> list[Experiment]:
        """Runs, best first: finite metrics by the goal, then timeouts and crashes."""
        def key(e: Experiment) -> tuple[int, float, int]:
            if _finite(e.metric) and e.status in ("keep", "discard"):
                value = float(e.metric or 0)
                return 0, -value if self.maximize else value, e.number
            return 1 + STATUS_ORDER.get(e.status, 9), 0.0, e.number
        return sorted(self.runs, key=key)

    def for_llm(self, last: int = 30) -> dict[str, Any]:
        """What the LLM proposer is told about the search so far."""
        def row(e: Experiment) -> dict[str, Any]:
            out: dict[str, Any] = {"id": e.id, "status": e.status, "metric": _round(e.metric),
                                   "description": e.description}
            if e.reason:
                out["reason"] = e.reason
            return out

        return {
            "baseline": _round(self.baseline), "noise": _round(self.noise),
            "best": row(self.best) if self.best else None,
            "keep_rate": None if self.keep_rate is None else round(self.keep_rate, 3),
            "experiments": [row(e) for e in self.runs[-last:]],
            "near_misses": [row(e) for e in self.near_misses()],
            "refused_proposals": self.refused,
        }


def summarize(experiments: Sequence[Experiment], maximize: bool, state: dict[str, Any] | None = None) -> Summary:
    runs = [e for e in experiments if e.is_run]
    refused = sum(1 for e in experiments if e.status == "refused")
    kept = [e for e in runs if e.status == "keep"]
    best = kept[-1] if kept else None  # the last keep is the best: a keep must beat the best before it
    base = (state or {}).get("baseline") or {}
    baseline = base.get("metric")
    if baseline is None:
        first = next((e for e in runs if e.baseline and _finite(e.metric)), None)
        baseline = first.metric if first else None
    best_value = ((state or {}).get("best") or {}).get("metric")
    return Summary(runs, refused, best, baseline, float(base.get("noise") or 0.0), maximize, best_value)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def format_metric(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.6g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def best_so_far(points: Sequence[tuple[float, float]], maximize: bool, end: float | None = None) -> list[tuple[float, float]]:
    """The best-so-far step line through kept experiments in experiment order (lanes finish out of order, so a
    kept experiment may come before an earlier number's): flat to `end`."""
    line: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if line:
            best = max(line[-1][1], y) if maximize else min(line[-1][1], y)
            line += [(x, line[-1][1]), (x, best)]
        else:
            line.append((x, y))
    if line and end is not None and end > line[-1][0]:
        line.append((end, line[-1][1]))
    return line


def experiment_line(e: Experiment, s: Summary, metric: str, planned: int) -> str:
    """The progress line of a finished experiment, as headless prints it."""
    value = f"{metric} {format_metric(e.metric)}" if e.metric is not None else ""
    parts = [f"{e.id} {e.status}", value, e.reason or "", e.description, f"{e.duration or 0:.1f} s",
             f"best {format_metric(s.best_metric)}", f"{len(s.runs)}/{planned} done"]
    return " · ".join(p for p in parts if p)


def final_line(name: str, s: Summary, metric: str) -> str:
    gain = s.improvement()
    rate = f"{s.keep_rate:.0%}" if s.keep_rate is not None else "—"
    return (f"research {name}: done · {len(s.runs)} experiments · kept {s.kept} ({rate}) · best {metric} "
            f"{format_metric(s.best_metric)} (baseline {format_metric(s.baseline)}"
            + (f", {gain:+.4g} better)" if gain is not None else ")"))
