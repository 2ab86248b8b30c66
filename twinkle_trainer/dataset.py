"""Training data: built-in sets, local JSONL files and hub datasets, tokenized with the model's chat template.

Records are normalized to {"messages": [...], "answer": str | None}: the last message is the assistant's
completion for SFT; for RL the prompt is every message but an assistant one at the end, and `answer` is what the
reward functions check.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
# mixed-lengths: questions about CPython's standard library answered with its docstrings (PSF License), lengths
# spread like real instruction data; written by bench/make_mixed_lengths.py, each record names its source.
BUILTINS = ("builtin:self-cognition", "builtin:arith", "builtin:mixed-lengths")


class DataError(Exception):
    """Bad data or an unavailable dataset; the message is one line that says where and what."""


# ------------------------------------------------------------------ sources
def is_local_data_path(dataset_id: str) -> bool:
    """A dataset id that names a local JSON Lines file rather than a hub dataset."""
    return dataset_id.lower().endswith((".jsonl", ".json")) and not dataset_id.startswith(("hf://", "ms://"))


def load_records(dataset_id: str | None, data_file: str | None, split: str = "train", subset: str | None = None,
                 max_examples: int | None = None, system: str | None = None) -> list[dict[str, Any]]:
    if not data_file and dataset_id and is_local_data_path(dataset_id):
        data_file = dataset_id  # a .jsonl path given as dataset_id is a data file
    if data_file:
        records = read_jsonl(Path(data_file).expanduser())
    elif dataset_id == "builtin:self-cognition":
        records = read_jsonl(DATA_DIR / "self_cognition.jsonl")
    elif dataset_id == "builtin:mixed-lengths":
        records = read_jsonl(DATA_DIR / "mixed_lengths.jsonl")
    elif dataset_id == "builtin:arith":
        records = arith_records(2000, seed=1234)
    elif dataset_id and dataset_id.startswith("builtin:"):
        raise DataError(f"unknown built-in dataset {dataset_id!r}; built-ins: {', '.join(BUILTINS)}")
    elif dataset_id:
        records = hub_records(dataset_id, subset, split)
    else:
        raise DataError("no data: set dataset_id or data_file")
    if not records:
        raise DataError(f"dataset {data_file or dataset_id} has no examples")
    if system:
        for r in records:
            if r["messages"][0]["role"] != "system":
                r["messages"].insert(0, {"role": "system", "content": system})
    if max_examples:
        records = records[:max_examples]
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One example per line: {"messages": [...]}, {"prompt", "completion"} or {"prompt", "answer"}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name}:{n}: not valid JSON ({exc.msg})") from None
        try:
            out.append(normalize(raw))
        except DataError as exc:
            raise DataError(f"{path.name}:{n}: {exc}") from None
    return out


def normalize(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DataError("an example must be a JSON object")
    answer = raw.get("answer")
    if "messages" in raw:
        msgs = raw["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError("'messages' must be a non-empty list of {role, content}")
        return {"messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs],
                "answer": None if answer is None else str(answer)}
    if "prompt" in raw:
        prompt = raw["prompt"]
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        if "completion" in raw:
            msgs = [*msgs, {"role": "assistant", "content": str(raw["completion"])}]
        elif answer is None:
            raise DataError("a 'prompt' needs a 'completion' (SFT) or an 'answer' (RL)")
        return {"messages": msgs, "answer": None if answer is None else str(answer)}
    raise DataError("unknown example format: use messages, prompt/completion or prompt/answer")


NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ken", "Zoe"]
ITEMS = ["apples", "books", "coins", "stamps", "pencils", "cards"]


def arith_records(n: int, seed: int) -> list[dict[str, Any]]:
    """Word problems with verifiable integer answers, generated from a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(2, 20), rng.randint(1, 9)
        kind = rng.random()
        if kind < 0.45:
            q, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?", a + b
        elif kind < 0.8:
            a = max(a, b + 1)
            q, ans = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
        else:
            a = rng.randint(2, 9)
            q, ans = f"{name} has {a} boxes with {b} {item} each. How many {item} are there?", a * b
        out.append({"messages": [{"role": "user", "content": f"{q} Reply with just the number."}], "answer": str(ans)})
    return out


def hub_records(dataset_id: str, subset: str | None, split: str) -> list[dict[str, Any]]:
    name = dataset_id.removeprefix("hf://").removeprefix("ms://")
    try:
        import datasets  # optional: not a dependency, and hub data must already be cached (no downloads here)
    except ImportError:
        raise DataError(f"dataset {dataset_id!r} needs the `datasets` package (pip install datasets), or use data_file") from None
    try:
        ds = datasets.load_dataset(name, subset, split=split, download_mode="reuse_cache_if_exists")
    except Exception as exc:
        raise DataError(f"dataset {name!r} is not available offline: {str(exc).splitlines()[0][:160]}") from None
    return [normalize(dict(row)) for row in ds]


# ------------------------------------------------------------------ tokenization
@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: loss only on the completion


def tokenize_sft(record: dict[str, Any], tokenizer: Any, max_length: int, truncation: str,
                 enable_thinking: bool = False) -> Example | None:
    """Chat-template tokens of one conversation; None if `delete` dropped it for being too long."""
    msgs = record["messages"]
    if msgs[-1]["role"] != "assistant":
        raise DataError("an SFT example must end with an assistant message")
    prompt_ids, completion_ids = split_prompt_completion(tokenizer, msgs, enable_thinking)
    total = len(prompt_ids) + len(completion_ids)
    if total > max_length:
        if truncation == "delete":
            return None
        if truncation == "raise":
            raise DataError(f"an example has {total} tokens, more than max_length {max_length}")
        if truncation == "left":
            keep_prompt = max(0, max_length - len(completion_ids))
            prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :] if keep_prompt else []
            completion_ids = completion_ids[: max_length - len(prompt_ids)]
        else:  # right
            completion_ids = completion_ids[: max(0, max_length - len(prompt_ids))]
            prompt_ids = prompt_ids[:max_length]
    if not completion_ids:
        return None
    return Example(prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids)


def split_prompt_completion(tokenizer: Any, msgs: list[dict[str, str]], enable_thinking: bool) -> tuple[list[int], list[int]]:
    kw = {"enable_thinking": enable_thinking} if enable_thinking else {}
    prompt_text = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True, **kw)
    full_text = tokenizer.apply_chat_template(msgs, tokenize=False, **kw)
    if not full_text.startswith(prompt_text):  # a template that rewrites history: append the content ourselves
        full_text = prompt_text + msgs[-1]["content"] + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    return prompt_ids, completion_ids


def prompt_ids(record: dict[str, Any], tokenizer: Any, max_length: int, enable_thinking: bool = False) -> list[int]:
    """Tokens of an RL prompt (everything up to the assistant's turn), keeping the end if too long."""
    msgs = record["messages"]
    if msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    kw = {"enable_thinking": enable_thinking} if enable_thinking else {}
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-max_length:]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most `capacity` tokens (first fit, longest first; an example
    longer than capacity gets a row of its own). The same lengths always give the same rows."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            rows.append([i])
            free.append(capacity - n)
        else:
            rows[row].append(i)
            free[row] -= n
    return rows


def collate_packed(examples: list[Example]) -> dict[str, Any]:
    """One row holding whole examples back to back, without padding: input_ids, labels and position_ids that
    restart at 0 for every example. Attention stays inside each example: the model builds a block-diagonal mask
    from the restarting positions (sdpa, eager), and flash-attention's variable-length kernels read them on a GPU.
    The first label of every example is dropped, so no example is trained to predict the one packed after it."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in examples:
        ids += e.input_ids
        labels += [-100, *e.labels[1:]]
        positions += range(len(e.input_ids))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions])}


# ------------------------------------------------------------------ order
class DataOrder:
    """A deterministic stream of example indices: a seeded shuffle per epoch. Position p of the stream is the
    same in every launch, so resuming at a saved position sees exactly the data an uninterrupted run would."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._epoch = -1
        self._perm: list[int] = []

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._perm = list(range(self.size))
            if self.shuffle:
                random.Random(self.seed * 7919 + epoch).shuffle(self._perm)
            self._epoch = epoch
        return self._perm[offset]

    def take(self, start: int, count: int) -> Iterator[int]:
        for p in range(start, start + count):
            yield self.index(p)

    def epoch(self, position: int) -> float:
        return position / self.size
