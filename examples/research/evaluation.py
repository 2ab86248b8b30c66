"""The harness of examples/research: the data and the evaluation. The research loop checks by hash that no
experiment changes this file, and reads `val_loss` only as this file logs it."""

from __future__ import annotations

import math

import torch

METRIC = "val_loss"


def make_data(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy sine wave on [-3, 3]: the training set (seed 0) and the held-out set (seed 1) differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    y = torch.sin(x * math.pi / 2) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


HELD_OUT = make_data(seed=1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, runtime: object, step: int) -> float:
    """Mean squared error on the held-out points, logged as val_loss at `step`."""
    x, y = HELD_OUT
    value = torch.nn.functional.mse_loss(model(x), y).item()
    runtime.log_metrics(step=step, **{METRIC: value})  # type: ignore[attr-defined]
    return value
