"""Deterministic health rules. Each is a function of a RunSnapshot that returns named findings with a severity
and the evidence it saw (steps and values). Thresholds are relative to the run's own history and start from what
the field uses. Every rule judges the whole run: the snapshot carries each metric's whole-run summary and a window
of the points not scanned before (see history.py), and what a windowed rule found once is remembered.

- crash: a failed run always gets one, classified from the log reader's root cause (crash_kinds.py: out of memory,
  killed by SIGKILL, NCCL timeout, device-side assert, ... each with what usually fixes it), else from the signal
  or the exit code. Critical. A Ctrl-C (KeyboardInterrupt, SIGINT) is info: the user stopped it.
- nan: a NaN or Inf in a loss-like metric (Megatron: fatal), critical; in any other metric (grad_norm) critical or
  a warning when it stays non-finite at the end (a stuck fp16 loss scaler; critical with the loss stuck at 0), info
  when it happened and recovered. Never fixed automatically.
- loss-spike: llm-foundry's KillLossSpike: the loss at least 2x the mean of the 100 steps before, five times in a
  row (warning); Megatron's check: a loss above 10x the largest of the last 100 (critical), with at least 10 steps
  before it. Not for RL runs, whose policy loss hovers around 0.
- divergence: the loss's smoothed level (a 9-point rolling median) rose to 3x its best level and its last 20
  points stay there (and the rise is a quarter of the way back to the early level): warning, critical when it is
  back at or above its early level or 10x the best. Catches a divergence early in a long run, which is never a
  spike against its own recent past. Not for RL runs.
- loss-zero: a loss exactly 0.0 for the last 10 points after it was not (all labels masked, or an fp16 overflow
  reported as 0). Warning. Not for RL runs (GRPO's loss is 0 by construction).
- plateau: the loss has not moved over the last half of at least 200 steps (the last 512 points of a longer run):
  the medians of its first and last 20 steps within 1% of the run's scale (its 5th-95th percentile range, or its
  level if larger: a loss flat from the start), and its 10th-90th percentiles within 10%. Info.
- grad-explosion: grad_norm above 10x its median of the last 100 steps, three times in a row. Warning.
- stall: running, and no new step for 10x the median step interval of the last 50 steps (30 s floor), counting
  running time only: time paused, stopping or starting is not stall time.
- lr-zero: the learning rate reached 0 with steps still to go (more than 1% of the run). Warning.
- RL (this trainer's names, TRL's, verl's and the original Twinkle's):
  reward-collapse: the mean reward of the last 20 steps fell below the run's best 20-step mean by more than half
  of the reward's range so far. Warning.
  zero-spread: most groups (80%+) had no reward spread for 20 steps (frac_reward_zero_std, zero_var_ratio,
  all_correct + all_wrong, or a reward_std of 0); all correct (too easy) or all wrong (too hard).
  kl-explosion (rlwatch): a KL z-score above 3 against the 100 steps before (warning), above 4.5 (critical).
  entropy-collapse: entropy below a third of the run's own early level for 25 steps (warning), 50 (critical);
  the evidence names the step where the drop began.
  reward-variance (rlwatch): the reward's variance over the last 20 steps above 3x its baseline. Warning.
  truncation: over half the completions cut at max_tokens for 20 steps. Warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.monitor.crash_kinds import INTERRUPTED, SIGNAL_KINDS, classify_crash, diagnose
from twinkle_tui.monitor.rulebook import (
    GRAD_NAMES,
    LOSS_NAMES,
    LR_NAMES,
    RULES,
    SEVERITIES,
    Finding,
    is_rl,
    rule,
    series,
)
from twinkle_tui.monitor.snapshot import STARTUP_FLOOR, RunSnapshot
from twinkle_tui.runs.log_reader import read_failure

__all__ = ["RULES", "SEVERITIES", "Finding", "classify_crash", "is_rl", "run_rules"]

STALL_FLOOR = 30.0
PLATEAU_POINTS = 1024  # the plateau rule looks at a long run's last points (half of them must be flat)
WINDOWED_RULES = ("loss-spike", "grad-explosion", "lr-zero")  # they find past events in a window: remembered

def run_rules(snapshot: RunSnapshot) -> list[Finding]:
    """Every rule's findings for this snapshot. With the run's history, what a windowed rule found in earlier
    checks is reported again once its points left the window, and the points seen now count as scanned."""
    out: list[Finding] = []
    for check in RULES:
        out.extend(check(snapshot))
    history = snapshot.history
    if history is None:
        return out
    with history.lock:
        found = {(f.rule, f.category or "") for f in out}
        for f in out:
            if f.rule in WINDOWED_RULES:
                history.remembered[(f.rule, f.category or "")] = f
        out.extend(f for key, f in history.remembered.items() if key not in found)
        history.mark_scanned({name: m.total for name, m in snapshot.metrics.items()})
    return out


# ------------------------------------------------------------------ crashes
@rule
def crash(s: RunSnapshot) -> list[Finding]:
    """Every failed run gets a finding that names its cause: the root cause's kind, or the signal, or the exit
    code, with what usually fixes it."""
    if s.status != RunStatus.FAILED:
        return []
    reading = s.reading if s.reading is not None else read_failure([], s.exit_code, s.exit_signal)
    diagnosis = diagnose(reading)
    evidence = reading.evidence()
    if diagnosis.kind == INTERRUPTED:
        return [Finding("crash", "info", "interrupted (Ctrl-C): the user stopped it; not a crash",
                        (*evidence[:2], f"what to do: {diagnosis.advice}"), s.last_step, INTERRUPTED,
                        advice=diagnosis.advice)]
    generic = s.error is None or s.error.startswith(("exited with code", "killed by", "the process ended"))
    error = reading.error_line() or (None if generic else s.error)
    signal = reading.own_signal or reading.signal
    if diagnosis.kind in {kind for kind, _, _ in SIGNAL_KINDS.values()} and signal:
        who = "the run" if reading.own_signal else (reading.describe_sources() or "a worker")
        traceback = "" if reading.root is not None and not reading.own_signal else " with no traceback"
        killed = f"{who} was killed by {signal}{traceback}: {diagnosis.meaning}"
        summary = killed if diagnosis.kind.startswith("killed by") else f"{diagnosis.kind}: {killed}"
    elif error:
        summary = f"{diagnosis.kind}: {error[:200]}"
    else:
        last = reading.last_lines[-1] if reading.last_lines else "no output"
        code = f"exited with code {s.exit_code}" if s.exit_code is not None else "failed (exit code unknown)"
        summary = f"{diagnosis.kind}: {code} without a traceback; last line: {last[:150]}"
        evidence = evidence or [f"last line: {last[:200]}"]
    lines = [*evidence[:1], f"what usually fixes it: {diagnosis.advice}", *evidence[1:5]]
    where = f"after step {s.last_step}" if s.last_step else "before its first step"
    return [Finding("crash", "critical", summary, tuple(lines), s.last_step, diagnosis.kind, diagnosis.fixable,
                    advice=diagnosis.advice, where=where)]


# ------------------------------------------------------------------ losses and gradients
@rule
def nan(s: RunSnapshot) -> list[Finding]:
    """NaN/Inf in any metric, from its whole-run summary: its first occurrence for a loss; for another metric
    (grad_norm) how it ends: non-finite at every recent step is a stuck fp16 loss scaler or a divergence."""
    out = []
    loss = s.find(*LOSS_NAMES)
    for m in s.metrics.values():
        sm = m.summary
        if sm.first_bad is None:
            continue
        step, value, before = sm.first_bad
        evidence = (*before, f"step {step}: {value}")
        if "loss" in m.name.lower():
            out.append(Finding("nan", "critical", f"{m.name} is {value} at step {step}", evidence, step, m.name))
            continue
        if sm.bad_run >= 3 and sm.bad_run_step is not None:
            stuck_zero = loss is not None and loss.summary.zero_run >= min(3, sm.bad_run)
            summary = (f"{m.name} is {m.values[-1]} at every step since step {sm.bad_run_step} "
                       f"({sm.bad_run} in a row)")
            if stuck_zero:
                summary += " and the loss is exactly 0: an fp16 overflow (use bf16, or a lower learning rate)"
            else:
                summary += ": a stuck fp16 loss scaler or diverged weights (use bf16, or a lower learning rate)"
            out.append(Finding("nan", "critical" if stuck_zero or sm.bad_run >= 20 else "warning", summary,
                               (*evidence, f"non-finite for the last {sm.bad_run} points"), sm.bad_run_step, m.name))
        else:
            out.append(Finding("nan", "info", f"{m.name} was {value} at step {step} and recovered (an fp16 loss "
                               "scaler skips such steps; harmless when rare)", evidence, step, m.name))
    return out


@rule
def loss_zero(s: RunSnapshot) -> list[Finding]:
    m = s.find(*LOSS_NAMES)
    if m is None or is_rl(s):
        return []
    sm = m.summary
    if sm.zero_run >= 10 and sm.zero_run_step is not None and sm.finite > sm.zero_run and (sm.vmax or 0) > 0:
        return [Finding("loss-zero", "warning", f"the loss is exactly 0 for the last {sm.zero_run} points (since "
                        f"step {sm.zero_run_step}): nothing is learned (all labels masked, or an fp16 overflow "
                        "reported as 0)", (f"since step {sm.zero_run_step}: 0.0", f"earlier maximum {sm.vmax:.4g}"),
                        sm.zero_run_step)]
    return []


def _windows(v: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """rows[i] holds the (up to) `window` points before point i, NaN-padded, and seen[i] how many there are. The
    whole series is scanned, not only its end: a fast run can take hundreds of steps between two checks, and
    doctor looks at a run once, after it ended."""
    padded = np.concatenate([np.full(window, np.nan), v[:-1]])
    return np.lib.stride_tricks.sliding_window_view(padded, window), np.minimum(np.arange(len(v)), window)


def _stat(rows: np.ndarray, stat: Callable[..., np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the first row is all NaN
        return stat(rows, axis=1) if len(rows) else np.empty(0)


def _trailing_mean(v: np.ndarray, window: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo = np.maximum(0, i - window)
    with np.errstate(all="ignore"):
        return np.asarray((c[i] - c[lo]) / (i - lo))


def _last_streak(hit: np.ndarray, length: int) -> tuple[int, int] | None:
    """(first, last) index of the latest run of at least `length` consecutive hits: where the streak reached
    `length`, so the evidence is the same from one check to the next."""
    if len(hit) < length:
        return None
    full = np.flatnonzero(np.convolve(hit.astype(int), np.ones(length, dtype=int), "valid") == length)
    if not len(full):
        return None
    start = int(full[-1])
    while start > 0 and hit[start - 1]:
        start -= 1
    return start, start + length - 1


@rule
def loss_spike(s: RunSnapshot) -> list[Finding]:
    found = series(s, "loss", "train/loss", at_least=20)
    if found is None or is_rl(s):
        return []
    steps, v = found
    window = 100
    # Megatron: far above anything seen recently (the latest such step).
    rows, seen = _windows(v, window)
    peak = _stat(rows, np.nanmax)
    big = np.flatnonzero((seen >= 10) & (v > 0) & (v > 10 * np.maximum(peak, 1e-12)))
    if len(big):
        i = int(big[-1])
        return [Finding("loss-spike", "critical", f"loss {v[i]:.4g} is over 10x the largest of the "
                        f"{seen[i]} steps before ({peak[i]:.4g})",
                        (f"step {int(steps[i])}: {v[i]:.4g}", f"previous max {peak[i]:.4g}"), int(steps[i]))]
    # llm-foundry: 2x the running mean, five times in a row.
    mean = _trailing_mean(v, window)
    streak = _last_streak((seen >= 10) & (mean > 0) & (v >= 2 * mean), 5)
    if streak is None:
        return []
    first, last = streak
    return [Finding("loss-spike", "warning", f"loss at least 2x its running mean for 5 steps in a row "
                    f"(from step {int(steps[first])})",
                    tuple(f"step {int(steps[j])}: {v[j]:.4g} (mean before {mean[j]:.4g})" for j in range(first, last + 1)),
                    int(steps[first]))]


@rule
def divergence(s: RunSnapshot) -> list[Finding]:
    """The loss rose far above its best level and stayed there: judged against the whole run's best, so a
    divergence at step 40 of a 6,000-step run is seen at every later check."""
    m = s.find(*LOSS_NAMES)
    if m is None or is_rl(s):
        return []
    sm = m.summary
    v = m.values[m.finite]
    if sm.best is None or sm.best_step is None or sm.early is None or len(v) < 20 or sm.best <= 0:
        return []
    now = float(np.median(v[-20:]))
    after_best = int(np.count_nonzero(m.steps[m.finite] > sm.best_step))
    if now < 3 * sm.best or now - sm.best < 0.25 * (sm.early - sm.best) or after_best < 20 and \
            after_best < len(v):
        return []
    severe = now >= sm.early or now >= 10 * sm.best
    where = sm.rise_step if sm.rise_step is not None else sm.best_step
    return [Finding("divergence", "critical" if severe else "warning",
                    f"the loss rose from its best level {sm.best:.4g} (step {sm.best_step}) to {now:.4g} and stays "
                    f"there{' (worse than at the start)' if now >= sm.early else ''}: lower the learning rate and "
                    f"resume from a checkpoint before step {where}",
                    (f"early level {sm.early:.4g}", f"best level {sm.best:.4g} at step {sm.best_step}",
                     f"level {3 * sm.best:.4g} (3x the best) reached at step {where}",
                     f"median of the last 20 points {now:.4g} (step {int(m.steps[-1])})"), where)]


@rule
def plateau(s: RunSnapshot) -> list[Finding]:
    found = series(s, "loss", "train/loss", at_least=200)
    if found is None or not s.alive or is_rl(s):
        return []
    steps, v = found
    steps, v = steps[-PLATEAU_POINTS:], v[-PLATEAU_POINTS:]  # a long run: its recent stretch
    half = v[len(v) // 2 :]
    # Spread and levels by percentiles and medians: one spike must neither make a moving loss look flat (a
    # range inflated by the spike) nor hide a flat one.
    # The scale is the run's own range, or its level when it never moved (a loss flat from the first step is the
    # plainest plateau, and its range is only noise).
    scale = max(float(np.percentile(v, 95) - np.percentile(v, 5)), abs(float(np.median(half)))) or 1.0
    moved = abs(float(np.median(half[-20:]) - np.median(half[:20])))
    band = float(np.percentile(half, 90) - np.percentile(half, 10))
    if moved < 0.01 * scale and band < 0.1 * scale:
        return [Finding("plateau", "info", f"the loss has stayed near {np.median(half):.4g} for the last {len(half)} "
                        f"steps", (f"steps {int(steps[len(v) // 2])}-{int(steps[-1])}: 10th-90th percentile "
                                   f"{np.percentile(half, 10):.4g}-{np.percentile(half, 90):.4g}",
                                   f"whole run: 5th-95th percentile {np.percentile(v, 5):.4g}-"
                                   f"{np.percentile(v, 95):.4g}"), int(steps[-1]))]
    return []


@rule
def grad_explosion(s: RunSnapshot) -> list[Finding]:
    found = series(s, *GRAD_NAMES, at_least=20)
    if found is None:
        return []
    steps, v = found
    rows, seen = _windows(v, 100)
    # The median only where it can matter: above 10x the median implies above 10x the minimum.
    median = np.full(len(v), np.nan)
    maybe = np.flatnonzero((seen >= 10) & (v > 10 * _stat(rows, np.nanmin)))
    median[maybe] = _stat(rows[maybe], np.nanmedian)
    with np.errstate(invalid="ignore"):
        streak = _last_streak((median > 0) & (v > 10 * median), 3)
    if streak is None:
        return []
    first, last = streak
    return [Finding("grad-explosion", "warning", f"grad_norm above 10x its median ({median[first]:.3g}) for 3 steps",
                    tuple(f"step {int(steps[j])}: {v[j]:.4g}" for j in range(first, last + 1)), int(steps[first]))]


@rule
def stall(s: RunSnapshot) -> list[Finding]:
    """No new step for 10x the median step time, counting running time only (paused, stopping and starting are
    not stall time); after a relaunch the first step may take as long as the first launch took, 3 times over."""
    age = s.active_age if s.active_age is not None else s.last_step_age
    if s.status != RunStatus.RUNNING or age is None or not s.median_interval:
        return []
    limit = max(STALL_FLOOR, 10 * s.median_interval)
    if s.relaunched:
        limit = max(limit, STARTUP_FLOOR, 3 * (s.startup or 0.0))
    if age > limit:
        paused = (s.last_step_age or 0.0) - age
        return [Finding("stall", "warning", f"no new step for {age:.0f}s of running time (the median step takes "
                        f"{s.median_interval:.2f}s); the process is alive and not paused",
                        (f"last step {s.last_step}", f"limit {limit:.0f}s",
                         *([f"{paused:.0f}s paused or restarting not counted"] if paused > 1 else [])), s.last_step)]
    return []


@rule
def lr_zero(s: RunSnapshot) -> list[Finding]:
    found = series(s, *LR_NAMES)
    if found is None or not s.total_steps:
        return []
    steps, v = found
    zero = np.flatnonzero((v == 0) & (np.arange(len(v)) > 0))
    for i in zero:
        if v[i - 1] > 0 and s.total_steps - int(steps[i]) > max(1, 0.01 * s.total_steps):
            return [Finding("lr-zero", "warning", f"the learning rate reached 0 at step {int(steps[i])} of "
                            f"{s.total_steps}: the remaining steps learn nothing (check t_max and warmup)",
                            (f"step {int(steps[i - 1])}: {v[i - 1]:.3g}", f"step {int(steps[i])}: 0"), int(steps[i]))]
    return []


from twinkle_tui.monitor import rl_rules  # noqa: E402,F401  (the RL rules register themselves here)
