"""Checkpoints: the LoRA adapter in PEFT format (loadable by PeftModel and vLLM) plus optimizer, scheduler, RNG
state and data position, so a resumed run continues at the exact next step with the same data order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE = "trainer_state.pt"
ADAPTER = "adapter_model.safetensors"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; one line naming the file and why."""


@dataclass
class Loaded:
    """A checkpoint read completely into memory, before anything of it is applied."""

    path: Path
    adapter: dict[str, Any] | None
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def data_position(self) -> int:
        return int(self.state["data_position"])


def save(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, data_position: int,
         save_optimizer: bool = True) -> None:
    import numpy as np
    import torch

    model.save_pretrained(str(path))
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state: dict[str, Any] = {"step": step, "data_position": data_position, "rng": rng,
                             "peft": hasattr(model, "peft_config")}
    if save_optimizer:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
    torch.save(state, path / STATE)


def read(path: Path, needs_adapter: bool = True) -> Loaded:
    """Read every file a resume needs; raise CheckpointError if one is missing or does not load."""
    import torch

    try:
        state = torch.load(path / STATE, weights_only=False, map_location="cpu")
        step, position = int(state["step"]), int(state["data_position"])
    except FileNotFoundError:
        raise CheckpointError(f"{path.name}: {STATE} is missing") from None
    except Exception as exc:
        raise CheckpointError(f"{path.name}: {STATE} does not load ({type(exc).__name__}: {exc})") from None
    del step, position
    adapter = None
    if needs_adapter and state.get("peft", True):
        from safetensors.torch import load_file

        file = path / ADAPTER
        if not file.exists():
            raise CheckpointError(f"{path.name}: {ADAPTER} is missing")
        try:
            adapter = load_file(str(file), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path.name}: {ADAPTER} does not load ({type(exc).__name__}: {exc})") from None
    return Loaded(path, adapter, state)


def apply(loaded: Loaded, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint read by `read`."""
    import numpy as np
    import torch

    if loaded.adapter is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, loaded.adapter)
    state = loaded.state
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])  # moves the state to the parameters' devices
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
