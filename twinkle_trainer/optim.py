"""Optimizer and learning-rate schedule from the configuration."""

from __future__ import annotations

import math
from typing import Any


def build_optimizer(params: list[Any], args: Any) -> Any:
    import torch

    kw = args.get_optimizer_args()
    cls = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD}[args.optimizer.optimizer_cls]
    return cls(params, **kw)


def lr_factor(step: int, name: str, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate after `step` optimizer steps: linear warmup, then the schedule."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        decay = 1.0 - progress
    else:  # cosine
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: Any, args: Any) -> Any:
    import torch

    s = args.get_scheduler_args()
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, s["name"], s["num_warmup_steps"], s["num_training_steps"], s["min_lr_ratio"])
    )
