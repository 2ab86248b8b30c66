"""The built-in losses of the tinker API, over one datum's per-token log-probabilities.

Every tensor in a datum's loss_fn_inputs is aligned with its model_input: position i of the input predicts
target_tokens[i]. Losses are sums over tokens (the SDK reports them as "loss:sum"), and gradients accumulate over
forward_backward calls until optim_step, as in tinker. With logp the trainer's log-probabilities, q the sampler's
(`logprobs`), r = exp(logp - q) and A the advantages (sg: no gradient through it):

- cross_entropy: -sum(weights * logp); weights default to 1.
- importance_sampling: -sum(r * A).
- ppo: -sum(min(r * A, clip(r, low, high) * A)); low, high = 0.8, 1.2.
- cispo: -sum(sg(clip(r, low, high)) * A * logp); low, high = 0, 4 (the ratio only bounds the coefficient).
- gspo (GSPO-token): s = exp(mean over the masked tokens of sg(logp) - q), each token's ratio
  s_t = sg(s) * exp(logp - sg(logp)) carries s's value with its own gradient; -sum(min(s_t * A, clip(s_t) * A));
  low, high = 0.8, 1.2; the mask is `sequence_ratio_mask` (default: the tokens with an advantage).
- dro: -sum(logp * A - beta / 2 * (logp - q)^2); beta = 0.05.
- stable_reinforce: -sum(m * sg(min(r, high)) * A * logp) over the tokens m the datum's provenance spans name as
  sampled, with q the log-probabilities the service recorded when it sampled them (record_stability_info), never
  the client's copy; high = 2. (Tinker's own definition is not published; this is this service's: REINFORCE with
  a truncated importance weight against the sampler's exact numbers.)

ppo, cispo and gspo also take the thresholds per token (loss_fn_inputs clip_low_threshold, clip_high_threshold).
Any other loss, an input a loss does not take, a missing input, a length that does not match or a number that is
not finite is refused with one sentence that says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from twinkle_trainer.service.errors import EngineError

RL = {"target_tokens", "logprobs", "advantages"}
CLIPS = {"clip_low_threshold", "clip_high_threshold"}
INPUTS: dict[str, tuple[set[str], set[str]]] = {  # loss -> (required inputs, optional inputs)
    "cross_entropy": ({"target_tokens"}, {"weights"}),
    "importance_sampling": (RL, set()),
    "ppo": (RL, CLIPS),
    "cispo": (RL, CLIPS),
    "gspo": (RL, CLIPS | {"sequence_ratio_mask"}),
    "dro": (RL, set()),
    "stable_reinforce": ({"target_tokens", "advantages"}, {"logprobs"}),
}
CONFIG: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "gspo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": 0.05},
    "stable_reinforce": {"clip_high_threshold": 2.0},
}
NEEDS_SPANS = {"stable_reinforce"}  # the sampler's numbers come from the service's record, named by the spans
STABLE_MASK = "stable_mask"  # set by the service from the spans: 1 where a token was sampled


class LossError(EngineError):
    """The loss cannot be computed for these inputs; the text says why."""


@dataclass
class LossSpec:
    name: str
    config: dict[str, float]


def _check_config(loss_fn: str, config: dict[str, float | str]) -> dict[str, float]:
    allowed = CONFIG[loss_fn]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise LossError(f"loss_fn_config {unknown} is not used by {loss_fn}"
                        + (f" (it takes {sorted(allowed)})" if allowed else " (it takes none)"))
    values = dict(allowed)
    for key, value in config.items():
        if not isinstance(value, float | int) or not np.isfinite(value):
            raise LossError(f"loss_fn_config[{key!r}] must be a finite number")
        values[key] = float(value)
    low, high = values.get("clip_low_threshold"), values.get("clip_high_threshold")
    if loss_fn in ("ppo", "gspo") and not (low is not None and high is not None and 0 <= low <= 1 <= high):
        raise LossError(f"{loss_fn} needs clip_low_threshold <= 1 <= clip_high_threshold")
    if loss_fn == "cispo" and not (low is not None and high is not None and 0 <= low <= high):
        raise LossError("cispo needs 0 <= clip_low_threshold <= clip_high_threshold")
    if loss_fn == "stable_reinforce" and not (high is not None and high >= 1):
        raise LossError("stable_reinforce needs clip_high_threshold >= 1")
    if loss_fn == "dro" and values["beta"] < 0:
        raise LossError("dro needs beta >= 0")
    return values


def check(loss_fn: str, config: dict[str, float | str], data: list[Any]) -> LossSpec:
    """Refuse what this service does not compute, before any work is done."""
    if loss_fn not in INPUTS:
        raise LossError(f"unknown loss function {loss_fn!r}; this service supports {', '.join(sorted(INPUTS))}")
    values = _check_config(loss_fn, config)
    required, optional = INPUTS[loss_fn]
    if not data:
        raise LossError("forward_backward needs at least one datum")
    for i, datum in enumerate(data):
        names = set(datum.inputs)
        if missing := sorted(required - names):
            raise LossError(f"datum {i}: {loss_fn} needs loss_fn_inputs {missing}")
        if extra := sorted(names - required - optional):
            raise LossError(f"datum {i}: {loss_fn} does not take loss_fn_inputs {extra}")
        n = len(datum.tokens)
        if n == 0:
            raise LossError(f"datum {i}: the model input is empty")
        for name, array in datum.inputs.items():
            if array.ndim != 1 or len(array) != n:
                raise LossError(f"datum {i}: loss_fn_inputs[{name!r}] has shape {list(array.shape)}; it must have "
                                f"one value per input token ({n})")
            if array.dtype.kind == "f" and not np.isfinite(array).all():  # one NaN would poison the LoRA for good
                raise LossError(f"datum {i}: loss_fn_inputs[{name!r}] holds NaN or infinity; send finite numbers")
        if loss_fn in NEEDS_SPANS and datum.target_spans is None:
            raise LossError(f"datum {i}: {loss_fn} needs the datum's provenance (Datum.with_provenance, with the "
                            "sequence_ids of samples taken with record_stability_info=True)")
    return LossSpec(loss_fn, values)


def _clips(spec: LossSpec, inputs: dict[str, Any]) -> tuple[Any, Any]:
    low = inputs.get("clip_low_threshold", spec.config.get("clip_low_threshold", 0.0))
    high = inputs.get("clip_high_threshold", spec.config["clip_high_threshold"])
    return low, high


def loss_terms(spec: LossSpec, logp: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(the datum's loss, a tensor to sum; the per-token loss for loss_fn_outputs) for its log-probabilities."""
    import torch

    name = spec.name
    if name == "cross_entropy":
        weights = inputs.get("weights")
        per_token = -logp * (weights if weights is not None else 1.0)
        return per_token.sum(), per_token
    advantages = inputs["advantages"]
    q = inputs["logprobs"] if "logprobs" in inputs else logp.detach()
    ratio = torch.exp(logp - q)
    if name == "importance_sampling":
        per_token = -ratio * advantages
    elif name == "ppo":
        low, high = _clips(spec, inputs)
        per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, low, high) * advantages)
    elif name == "cispo":
        low, high = _clips(spec, inputs)
        per_token = -torch.clamp(ratio, low, high).detach() * advantages * logp
    elif name == "gspo":
        mask = inputs.get("sequence_ratio_mask")
        marked = (mask != 0) if mask is not None else (advantages != 0)
        if bool(marked.any()):
            log_ratio = (logp.detach() - q)[marked].mean()
        else:
            log_ratio = torch.zeros((), device=logp.device)
        seq_ratio = torch.exp(log_ratio + logp - logp.detach())
        low, high = _clips(spec, inputs)
        per_token = -torch.minimum(seq_ratio * advantages, torch.clamp(seq_ratio, low, high) * advantages)
    elif name == "dro":
        per_token = -(logp * advantages - 0.5 * spec.config["beta"] * (logp - q) ** 2)
    elif name == "stable_reinforce":
        weight = torch.clamp(ratio, max=spec.config["clip_high_threshold"]).detach()
        per_token = -inputs[STABLE_MASK] * weight * advantages * logp
    else:  # check() refuses every other name
        raise LossError(f"unknown loss function {name!r}")
    return per_token.sum(), per_token


def weight_of(spec: LossSpec, inputs: dict[str, np.ndarray]) -> float:
    """What a mean loss divides by: the summed weights for cross_entropy, the token count otherwise."""
    if spec.name == "cross_entropy" and "weights" in inputs:
        return float(np.asarray(inputs["weights"]).sum())
    return float(len(inputs["target_tokens"]))
