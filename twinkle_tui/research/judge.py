"""Keep or discard: how an experiment's run and its metric become its status, and what the baseline's repeats
say (its mean, and the run-to-run noise an improvement must beat)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from twinkle_tui.research.lanes import Outcome
from twinkle_tui.research.program import Program
from twinkle_tui.research.records import Experiment
from twinkle_tui.research.summary import format_metric


def judge(program: Program, outcome: Outcome, metric: float | None, *, baseline: bool, baseline_kept: bool,
          best: float | None, noise: float, budget: float) -> tuple[str, str | None]:
    """keep, discard, crash, timeout or stopped, and why (None when the metric says it all). A keep must beat
    the best by more than the noise; a tie is not a keep."""
    name = program.metric
    pruned = bool(outcome.stopped and outcome.stopped.startswith("pruned"))
    if outcome.stopped and not pruned:
        return "stopped", outcome.stopped
    if outcome.status == "not-run":
        return "crash", outcome.error or "the run could not start"
    if outcome.harness_changed:
        return "discard", f"the run changed the harness ({', '.join(outcome.harness_changed)}): not trusted"
    if pruned:
        return "discard", outcome.stopped
    if outcome.timed_out:
        return "timeout", f"stopped after {budget:g} s (its budget)"
    if outcome.status in ("failed", "killed"):
        return "crash", outcome.error or f"the run {outcome.status}"
    if metric is None:
        return "crash", f"the run ended without logging {name}"
    if not math.isfinite(metric):
        return "crash", f"{name} is {metric}"
    if baseline:
        return ("discard", "a repeat of the baseline, to measure the noise") if baseline_kept else ("keep", None)
    assert best is not None, "experiments after the baseline are judged against its metric"
    if program.better(metric, best, noise):
        return "keep", None
    if program.better(metric, best):
        return "discard", f"better than {format_metric(best)} by less than the noise ({format_metric(noise)})"
    return "discard", None


def baseline_result(runs: Sequence[Experiment], repeats: int) -> tuple[float, float, Experiment] | None:
    """(mean, noise, the first run with a metric) once all the baseline's repeats are in, else None. The noise
    is the sample standard deviation over the repeats (0 for a single run)."""
    measured = [e for e in runs if e.metric is not None and math.isfinite(e.metric)]
    if len(runs) < repeats or not measured:
        return None
    values = [float(e.metric or 0.0) for e in measured]
    noise = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), noise, measured[0]
