"""The rules for RL runs (GRPO/RLOO and TRL's, verl's and the original Twinkle's names): reward collapse, groups
without reward spread, KL explosion, entropy collapse, reward variance and truncation. See rules.py for the
thresholds; they register with the same rule list."""

from __future__ import annotations

import numpy as np

from twinkle_tui.monitor.rulebook import (
    ALL_CORRECT_NAMES,
    ALL_WRONG_NAMES,
    ENTROPY_NAMES,
    KL_NAMES,
    REWARD_NAMES,
    REWARD_STD_NAMES,
    TRUNCATION_NAMES,
    ZERO_SPREAD_NAMES,
    Finding,
    is_rl,
    rule,
    series,
)
from twinkle_tui.monitor.snapshot import RunSnapshot


def _moving(v: np.ndarray, n: int) -> np.ndarray:
    if len(v) < n:
        return np.empty(0)
    c = np.cumsum(np.insert(v, 0, 0.0))
    return np.asarray((c[n:] - c[:-n]) / n)


@rule
def reward_collapse(s: RunSnapshot) -> list[Finding]:
    m = s.find(*REWARD_NAMES)
    found = series(s, *REWARD_NAMES)
    if m is None or found is None:
        return []
    steps, v = found
    avg = _moving(v, 20)
    sm = m.summary
    if len(avg) < 10 or sm.mean20_max is None or sm.vmax is None or sm.vmin is None:
        return []
    best, now = max(float(avg.max()), sm.mean20_max), float(avg[-1])
    best_step = sm.mean20_max_step if sm.mean20_max >= float(avg.max()) else int(steps[19 + int(np.argmax(avg))])
    span = sm.vmax - sm.vmin
    if span > 0 and best - now > 0.5 * span and (best_step or 0) < int(steps[-5]):
        return [Finding("reward-collapse", "warning", f"the mean reward fell from {best:.3g} to {now:.3g}",
                        (f"best 20-step mean {best:.3g} (step {best_step})", f"last 20-step mean {now:.3g}"),
                        int(steps[-1]))]
    return []


def _no_spread(s: RunSnapshot) -> tuple[np.ndarray, np.ndarray, str, str | None] | None:
    """The share of groups without reward spread per step, under whichever names the trainer logs it: a
    fraction of zero-std groups, all-correct plus all-wrong groups, or a reward_std of 0 (every group alike)."""
    found = series(s, *ZERO_SPREAD_NAMES, at_least=20)
    if found is not None:
        m = s.find(*ZERO_SPREAD_NAMES)
        return found[0], found[1], m.name if m else "", None
    correct = series(s, *ALL_CORRECT_NAMES, at_least=20)
    wrong = series(s, *ALL_WRONG_NAMES, at_least=20)
    if correct is not None or wrong is not None:
        parts = [p for p in (correct, wrong) if p is not None]
        n = min(len(p[1]) for p in parts)
        total = np.sum([p[1][-n:] for p in parts], axis=0)
        side = None
        if correct is not None and wrong is not None:
            side = "too easy" if correct[1][-20:].mean() >= wrong[1][-20:].mean() else "too hard"
        else:
            side = "too easy" if correct is not None else "too hard"
        return parts[0][0][-n:], total, "all_correct + all_wrong", side
    std = series(s, *REWARD_STD_NAMES, at_least=20)
    if std is not None:
        return std[0], (std[1] <= 1e-6).astype(float), "reward_std = 0", None
    return None


@rule
def zero_spread(s: RunSnapshot) -> list[Finding]:
    found = _no_spread(s)
    if found is None:
        return []
    steps, v, name, side = found
    if not (v[-20:] >= 0.8).all():
        return []
    kind, why = "no signal", "most groups scored all completions alike"
    reward = s.find(*REWARD_NAMES)
    if side is not None:
        kind = side
    elif reward is not None:
        r = reward.values[np.isfinite(reward.values)]
        if len(r):
            top, low, recent = float(r.max()), float(r.min()), float(r[-20:].mean())
            if top > low and recent >= top - 0.1 * (top - low):
                kind = "too easy"
            elif top > low and recent <= low + 0.1 * (top - low) or top == low == 0:
                kind = "too hard"
    why = {"too easy": "groups are all correct: raise the difficulty",
           "too hard": "groups are all wrong: the model gets no reward to learn from"}.get(kind, why)
    return [Finding("zero-spread", "warning", f"{v[-20:].mean():.0%} of groups had no reward spread for 20 steps "
                    f"({kind}: {why}); GRPO learns nothing from such groups",
                    (f"{name}, steps {int(steps[-20])}-{int(steps[-1])}: {v[-20:].mean():.2f}",),
                    int(steps[-20]), kind)]


@rule
def kl_explosion(s: RunSnapshot) -> list[Finding]:
    found = series(s, *KL_NAMES, at_least=30)
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
    """Entropy fell below a third of the run's own early level and stayed there: judged against the run itself
    (an LLM policy's token entropy of 0.4 is normal), and only for RL runs."""
    m = s.find(*ENTROPY_NAMES)
    if m is None or not is_rl(s):
        return []
    sm = m.summary
    low = sm.drop_run
    if sm.early is None or sm.early <= 0 or low < 25 or sm.drop_run_step is None:
        return []
    severity = "critical" if low >= 50 else "warning"
    now = m.values[-1]
    return [Finding("entropy-collapse", severity, f"entropy fell below a third of its early level "
                    f"({sm.early:.3g}) at step {sm.drop_run_step} and stayed there for {low} steps (now {now:.3g}): "
                    "the policy has become nearly deterministic",
                    (f"early level {sm.early:.3g}", f"steps {sm.drop_run_step}-{sm.last_step} below "
                     f"{sm.early / 3:.3g}"), sm.drop_run_step)]


@rule
def reward_variance(s: RunSnapshot) -> list[Finding]:
    found = series(s, *REWARD_NAMES, at_least=60)
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
    found = series(s, *TRUNCATION_NAMES, at_least=20)
    if found is None:
        return []
    steps, v = found
    if not (v[-20:] > 0.5).all():
        return []
    return [Finding("truncation", "warning", f"{v[-20:].mean():.0%} of completions were cut at max_tokens for 20 "
                    "steps: raise max_tokens (rewards judge unfinished answers)",
                    (f"steps {int(steps[-20])}-{int(steps[-1])}: {v[-20:].mean():.2f}",), int(steps[-20]))]


RL_LOSS_EXPLAINED_WITHIN = 50  # steps: the explanation comes where a near-zero loss first appears, once


@rule
def rl_loss_near_zero(s: RunSnapshot) -> list[Finding]:
    """Explain, once and early, a policy loss that reads 0 (4.967e-08 puzzles a newcomer): GRPO's advantages average
    0 in every group, so its loss hovers around 0 by construction; learning shows in the reward."""
    if not is_rl(s):
        return []
    m = s.find("loss", "train/loss")
    found = series(s, "loss", "train/loss", at_least=3)
    if m is None or found is None or m.total > RL_LOSS_EXPLAINED_WITHIN:
        return []
    steps, v = found
    if float(np.median(np.abs(v))) >= 1e-2:
        return []
    return [Finding("rl-loss-near-zero", "info",
                    f"the policy loss is near 0 ({v[-1]:.3g} at step {int(steps[-1])}): normal for GRPO, not a bug",
                    ("GRPO's advantages are centred in every group of completions, so the policy loss averages about "
                     "0 by construction", "judge learning by the reward (and kl, entropy), not by this loss"),
                    int(steps[0]))]
