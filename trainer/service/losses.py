"""The built-in losses of the tinker API, over one datum's per-token log-probabilities.

Every tensor in a datum's loss_fn_inputs is aligned with its model_input: position i of the input predicts
target_tokens[i]. Losses are sums over tokens (the SDK reports them as "loss:sum"), and gradients accumulate over
forward_backward calls until optim_step, as in tinker:

- cross_entropy: -sum(weights * logp); weights default to 1.
- importance_sampling: -sum(exp(logp - logprobs) * advantages), logprobs being the sampler's.
- ppo: -sum(min(r * A, clip(r, clip_low_threshold, clip_high_threshold) * A)), r = exp(logp - logprobs);
  thresholds 0.8 and 1.2 unless loss_fn_config sets them.

Any other loss, an input a loss does not take, a missing input or a length that does not match is refused with
one sentence that says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.service.errors import EngineError

INPUTS: dict[str, tuple[set[str], set[str]]] = {  # loss -> (required inputs, optional inputs)
    "cross_entropy": ({"target_tokens"}, {"weights"}),
    "importance_sampling": ({"target_tokens", "logprobs", "advantages"}, set()),
    "ppo": ({"target_tokens", "logprobs", "advantages"}, set()),
}
CONFIG: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
}


class LossError(EngineError):
    """The loss cannot be computed for these inputs; the text says why."""


@dataclass
class LossSpec:
    name: str
    config: dict[str, float]


def check(loss_fn: str, config: dict[str, float | str], data: list[Any]) -> LossSpec:
    """Refuse what this service does not compute, before any work is done."""
    if loss_fn not in INPUTS:
        raise LossError(f"unknown loss function {loss_fn!r}; this service supports {', '.join(sorted(INPUTS))}")
    allowed = CONFIG[loss_fn]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise LossError(f"loss_fn_config {unknown} is not used by {loss_fn}"
                        + (f" (it takes {sorted(allowed)})" if allowed else " (it takes none)"))
    values = dict(allowed)
    for key, value in config.items():
        if not isinstance(value, float | int):
            raise LossError(f"loss_fn_config[{key!r}] must be a number")
        values[key] = float(value)
    if loss_fn == "ppo" and not 0 <= values["clip_low_threshold"] <= 1 <= values["clip_high_threshold"]:
        raise LossError("ppo needs clip_low_threshold <= 1 <= clip_high_threshold")
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
    return LossSpec(loss_fn, values)


def loss_terms(spec: LossSpec, logp: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(the datum's loss, a tensor to sum; the per-token loss for loss_fn_outputs) for its log-probabilities."""
    import torch

    if spec.name == "cross_entropy":
        weights = inputs.get("weights")
        per_token = -logp * (weights if weights is not None else 1.0)
        return per_token.sum(), per_token
    ratio = torch.exp(logp - inputs["logprobs"])
    advantages = inputs["advantages"]
    if spec.name == "importance_sampling":
        per_token = -ratio * advantages
    else:
        clipped = ratio.clamp(spec.config["clip_low_threshold"], spec.config["clip_high_threshold"])
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    return per_token.sum(), per_token


def weight_of(spec: LossSpec, inputs: dict[str, np.ndarray]) -> float:
    """What a mean loss divides by: the summed weights for cross_entropy, the token count otherwise."""
    if spec.name == "cross_entropy" and "weights" in inputs:
        return float(np.asarray(inputs["weights"]).sum())
    return float(len(inputs["target_tokens"]))
