"""Checkpoints: the LoRA adapter in PEFT format (loadable by PeftModel and vLLM) plus optimizer, scheduler, RNG
state and data position, so a resumed run continues at the exact next step with the same data order."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

STATE = "trainer_state.pt"


def save(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, data_position: int,
         save_optimizer: bool = True) -> None:
    import numpy as np
    import torch

    model.save_pretrained(str(path))
    state: dict[str, Any] = {
        "step": step,
        "data_position": data_position,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    if save_optimizer:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
    torch.save(state, path / STATE)


def load(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG; returns the saved state (step, data_position)."""
    import numpy as np
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = path / "adapter_model.safetensors"
    if adapter.exists():
        set_peft_model_state_dict(model, load_file(str(adapter)))
    state = torch.load(path / STATE, weights_only=False)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return state
