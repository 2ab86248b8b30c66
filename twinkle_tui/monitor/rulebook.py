"""What every monitor rule shares: a Finding (a named problem with its severity and evidence), the list rules
register with, the metric names of this trainer, TRL, verl and the original Twinkle, and the helpers that find a
metric's finite series in a snapshot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twinkle_tui.monitor.snapshot import MetricData, RunSnapshot

SEVERITIES = ("info", "warning", "critical")

LR_NAMES = ("learning rate", "learning_rate", "lr", "train/lr", "train/learning_rate")
GRAD_NAMES = ("grad_norm", "grad norm", "train/grad_norm", "gradient_norm")
LOSS_NAMES = ("loss", "train/loss")
REWARD_NAMES = ("reward", "train/reward", "rewards/mean", "train/rewards", "critic/rewards/mean")
REWARD_STD_NAMES = ("reward_std", "train/reward_std", "rewards/std")
KL_NAMES = ("kl", "train/approx_kl", "objective/kl", "train/kl", "actor/kl_loss")
ENTROPY_NAMES = ("entropy", "train/entropy", "actor/entropy")
ZERO_SPREAD_NAMES = ("zero_advantage_groups", "frac_reward_zero_std", "zero_var_ratio", "zero_std_ratio",
                     "frac_zero_std")
ALL_CORRECT_NAMES = ("all_correct", "frac_all_correct", "solve_all")
ALL_WRONG_NAMES = ("all_wrong", "frac_all_wrong", "solve_none")
TRUNCATION_NAMES = ("truncation_rate", "completions/clipped_ratio", "train/truncation_rate")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    summary: str
    evidence: tuple[str, ...] = ()
    step: int | None = None
    category: str | None = None  # the kind of a crash, the metric of a NaN, too easy/too hard
    fixable: bool = False  # a clear code error or an out-of-memory: a fix may be applied without asking
    data: dict[str, float] = field(default_factory=dict, compare=False)
    advice: str = ""  # what usually fixes it (also the evidence's second line)
    where: str | None = None  # said instead of "at step N" (a crash happens after its last logged step)

    @property
    def level(self) -> int:
        return SEVERITIES.index(self.severity)

    def line(self) -> str:
        where = f" {self.where}" if self.where else f" at step {self.step}" if self.step is not None else ""
        return f"[{self.severity}] {self.rule}{where}: {self.summary}"


Rule = Callable[[RunSnapshot], list[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def finite_series(m: MetricData) -> tuple[np.ndarray, np.ndarray]:
    keep = m.finite
    return m.steps[keep], m.values[keep]


def series(s: RunSnapshot, *names: str, at_least: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite (steps, values) of the first metric of these names, when it has at least `at_least` of them."""
    m = s.find(*names)
    if m is None:
        return None
    steps, v = finite_series(m)
    return (steps, v) if len(v) >= at_least else None


def is_rl(s: RunSnapshot) -> bool:
    """An RL run: its "loss" is a policy-gradient objective that hovers around 0 and changes sign, so the rules for
    a cross-entropy loss (spikes relative to its mean, plateaus, divergence, a loss of 0) do not apply to it."""
    return s.find(*REWARD_NAMES, *KL_NAMES, *ZERO_SPREAD_NAMES, *REWARD_STD_NAMES) is not None
