"""Deterministic health rules. Each is a function of a RunSnapshot that returns named findings with a severity
and the evidence it saw (steps and values). Thresholds are relative to the run's own history and start from what
the field uses:

- crash: a traceback in the last launch's output, classified (out of memory, CUDA error, import, syntax,
  name/attribute, shape mismatch, missing file/key, other). Critical.
- nan: a NaN or Inf in any loss-like metric (Megatron: fatal). Critical. Never fixed automatically.
- loss-spike: llm-foundry's KillLossSpike: the loss at least 2x the mean of the 100 steps before, five times in a
  row (warning); Megatron's check: a loss above 10x the largest of the last 100 (critical). Not for RL runs, whose
  policy loss hovers around 0.
- plateau: the loss has not moved over the last half of at least 200 steps: the medians of its first and last 20
  steps within 1% of the run's scale (its 5th-95th percentile range, or its level if larger: a loss flat from the
  start), and its 10th-90th percentiles within 10%. Info.
- grad-explosion: grad_norm above 10x its median of the last 100 steps, three times in a row. Warning.
- stall: alive and not paused, and no new step for 10x the median step interval of the last 50 steps (30 s floor).
- lr-zero: the learning rate reached 0 with steps still to go (more than 1% of the run). Warning.
- RL (this trainer's names, TRL's and the original Twinkle's):
  reward-collapse: the mean reward of the last 20 steps fell below the best 20-step mean by more than half of the
  reward's range so far. Warning.
  zero-spread: most groups (80%+) had no reward spread for 20 steps; all correct (too easy) or all wrong (too hard).
  kl-explosion (rlwatch): a KL z-score above 3 against the 100 steps before (warning), above 4.5 (critical).
  entropy-collapse (rlwatch): entropy below 1.0 for 25 steps (warning), 50 (critical).
  reward-variance (rlwatch): the reward's variance over the last 20 steps above 3x its baseline. Warning.
  truncation: over half the completions cut at max_tokens for 20 steps. Warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.monitor.snapshot import MetricData, RunSnapshot

SEVERITIES = ("info", "warning", "critical")
STALL_FLOOR = 30.0

LR_NAMES = ("learning rate", "learning_rate", "lr", "train/lr", "train/learning_rate")
GRAD_NAMES = ("grad_norm", "grad norm", "train/grad_norm")
REWARD_NAMES = ("reward", "train/reward", "rewards/mean", "train/rewards")
KL_NAMES = ("kl", "train/approx_kl", "objective/kl", "train/kl")
ENTROPY_NAMES = ("entropy", "train/entropy")
ZERO_SPREAD_NAMES = ("zero_advantage_groups", "frac_reward_zero_std")
TRUNCATION_NAMES = ("truncation_rate", "completions/clipped_ratio", "train/truncation_rate")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    summary: str
    evidence: tuple[str, ...] = ()
    step: int | None = None
    category: str | None = None  # the kind of a crash
    fixable: bool = False  # a clear code error or an out-of-memory: a fix may be applied without asking
    data: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def level(self) -> int:
        return SEVERITIES.index(self.severity)

    def line(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        return f"[{self.severity}] {self.rule}{where}: {self.summary}"


Rule = Callable[[RunSnapshot], list[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def run_rules(snapshot: RunSnapshot) -> list[Finding]:
    out: list[Finding] = []
    for check in RULES:
        out.extend(check(snapshot))
    return out


# ------------------------------------------------------------------ crashes
CRASH_KINDS: list[tuple[str, str, bool]] = [  # (pattern in the exception line or the traceback, kind, fixable)
    (r"OutOfMemoryError|CUDA out of memory|MemoryError|DefaultCPUAllocator: can't allocate", "out of memory", True),
    (r"CUDA error|CUBLAS_STATUS|cuDNN error|NCCL error|device-side assert", "CUDA error", False),
    (r"^(ModuleNotFoundError|ImportError)", "import error", True),
    (r"^(SyntaxError|IndentationError|TabError)", "syntax error", True),
    (r"^(NameError|AttributeError|UnboundLocalError)", "name/attribute error", True),
    (r"size mismatch|shape mismatch|mat1 and mat2 shapes|must match the size|Expected .* size|"
     r"expected input\[|dimension", "shape mismatch", False),
    (r"^(FileNotFoundError|KeyError|IsADirectoryError)|No such file", "missing file or key", True),
]


def classify_crash(exception: str, traceback: str) -> tuple[str, bool]:
    for pattern, kind, fixable in CRASH_KINDS:
        if re.search(pattern, exception) or (kind in ("out of memory", "CUDA error") and re.search(pattern, traceback)):
            return kind, fixable
    return "other", False


@rule
def crash(s: RunSnapshot) -> list[Finding]:
    if s.status != RunStatus.FAILED or not s.exception:
        return []
    kind, fixable = classify_crash(s.exception, s.log_tail)
    return [Finding("crash", "critical", f"{kind}: {s.exception[:200]}", (s.exception[:300],), s.last_step, kind,
                    fixable)]


# ------------------------------------------------------------------ losses and gradients
@rule
def nan(s: RunSnapshot) -> list[Finding]:
    out = []
    for m in s.loss_like():
        bad = ~m.finite
        if bad.any():
            i = int(np.argmax(bad))
            before = [f"step {int(m.steps[j])}: {m.values[j]:.4g}" for j in range(max(0, i - 3), i)]
            out.append(Finding("nan", "critical", f"{m.name} is {m.values[i]} at step {int(m.steps[i])}",
                               (*before, f"step {int(m.steps[i])}: {m.values[i]}"), int(m.steps[i])))
    return out


def _finite(m: MetricData) -> tuple[np.ndarray, np.ndarray]:
    keep = m.finite
    return m.steps[keep], m.values[keep]


def _series(s: RunSnapshot, *names: str, at_least: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite (steps, values) of the first metric of these names, when it has at least `at_least` of them."""
    m = s.find(*names)
    if m is None:
        return None
    steps, v = _finite(m)
    return (steps, v) if len(v) >= at_least else None


def is_rl(s: RunSnapshot) -> bool:
    """An RL run: its "loss" is a policy-gradient objective that hovers around 0 and changes sign, so the rules for
    a cross-entropy loss (spikes relative to its mean, plateaus) do not apply to it."""
    return s.find(*REWARD_NAMES) is not None


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
    found = _series(s, "loss", "train/loss", at_least=20)
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
def plateau(s: RunSnapshot) -> list[Finding]:
    found = _series(s, "loss", "train/loss", at_least=200)
    if found is None or not s.alive or is_rl(s):
        return []
    steps, v = found
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
    found = _series(s, *GRAD_NAMES, at_least=20)
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
    if s.status not in (RunStatus.RUNNING, RunStatus.STARTING) or s.last_step_age is None or not s.median_interval:
        return []
    limit = max(STALL_FLOOR, 10 * s.median_interval)
    if s.last_step_age > limit:
        return [Finding("stall", "warning", f"no new step for {s.last_step_age:.0f}s (the median step takes "
                        f"{s.median_interval:.2f}s); the process is alive and not paused",
                        (f"last step {s.last_step}", f"limit {limit:.0f}s"), s.last_step)]
    return []


@rule
def lr_zero(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *LR_NAMES)
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


# ------------------------------------------------------------------ RL
def _moving(v: np.ndarray, n: int) -> np.ndarray:
    if len(v) < n:
        return np.empty(0)
    c = np.cumsum(np.insert(v, 0, 0.0))
    return np.asarray((c[n:] - c[:-n]) / n)


@rule
def reward_collapse(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *REWARD_NAMES)
    if found is None:
        return []
    steps, v = found
    avg = _moving(v, 20)
    if len(avg) < 10:
        return []
    best, now = float(avg.max()), float(avg[-1])
    span = float(v.max() - v.min())
    if span > 0 and best - now > 0.5 * span and int(np.argmax(avg)) < len(avg) - 5:
        return [Finding("reward-collapse", "warning", f"the mean reward fell from {best:.3g} to {now:.3g}",
                        (f"best 20-step mean {best:.3g}", f"last 20-step mean {now:.3g}"), int(steps[-1]))]
    return []


@rule
def zero_spread(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *ZERO_SPREAD_NAMES, at_least=20)
    if found is None:
        return []
    steps, v = found
    if not (v[-20:] >= 0.8).all():
        return []
    reward = s.find(*REWARD_NAMES)
    kind, why = "no signal", "most groups scored all completions alike"
    if reward is not None:
        r = reward.values[np.isfinite(reward.values)]
        if len(r):
            top, low, recent = float(r.max()), float(r.min()), float(r[-20:].mean())
            if top > low and recent >= top - 0.1 * (top - low):
                kind, why = "too easy", "groups are all correct: raise the difficulty"
            elif top > low and recent <= low + 0.1 * (top - low) or top == low == 0:
                kind, why = "too hard", "groups are all wrong: the model gets no reward to learn from"
    return [Finding("zero-spread", "warning", f"{v[-20:].mean():.0%} of groups had no reward spread for 20 steps "
                    f"({kind}: {why})", (f"steps {int(steps[-20])}-{int(steps[-1])}: {v[-20:].mean():.2f}",),
                    int(steps[-20]), kind)]


@rule
def kl_explosion(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *KL_NAMES, at_least=30)
    if found is None:
        return []
    steps, v = found
    base = v[-101:-1]
    std = float(base.std())
    if std <= 0:
        return []
    z = (float(v[-1]) - float(base.mean())) / std
    if z > 3:
        severity = "critical" if z > 4.5 else "warning"
        return [Finding("kl-explosion", severity, f"KL {v[-1]:.4g} is {z:.1f} standard deviations above its last "
                        f"{len(base)} steps", (f"mean {base.mean():.4g} ± {std:.3g}", f"step {int(steps[-1])}: "
                                               f"{v[-1]:.4g}"), int(steps[-1]))]
    return []


@rule
def entropy_collapse(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *ENTROPY_NAMES)
    if found is None:
        return []
    steps, v = found
    low = 0
    for value in v[::-1]:
        if value >= 1.0:
            break
        low += 1
    if low >= 25:
        severity = "critical" if low >= 50 else "warning"
        return [Finding("entropy-collapse", severity, f"entropy below 1.0 for the last {low} steps (now {v[-1]:.3g}): "
                        "the policy has become nearly deterministic", (f"steps {int(steps[-low])}-{int(steps[-1])}",),
                        int(steps[-low]))]
    return []


@rule
def reward_variance(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *REWARD_NAMES, at_least=60)
    if found is None:
        return []
    steps, v = found
    baseline = float(v[:-20].var())
    recent = float(v[-20:].var())
    if baseline > 0 and recent > 3 * baseline:
        return [Finding("reward-variance", "warning", f"the reward's variance over the last 20 steps is "
                        f"{recent / baseline:.1f}x its baseline", (f"baseline {baseline:.3g}", f"recent {recent:.3g}"),
                        int(steps[-20]))]
    return []


@rule
def truncation(s: RunSnapshot) -> list[Finding]:
    found = _series(s, *TRUNCATION_NAMES, at_least=20)
    if found is None:
        return []
    steps, v = found
    if not (v[-20:] > 0.5).all():
        return []
    return [Finding("truncation", "warning", f"{v[-20:].mean():.0%} of completions were cut at max_tokens for 20 "
                    "steps: raise max_tokens (rewards judge unfinished answers)",
                    (f"steps {int(steps[-20])}-{int(steps[-1])}: {v[-20:].mean():.2f}",), int(steps[-20]))]
