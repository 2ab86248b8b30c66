"""The service's memory budget: how much host memory (RSS) it may use, what a forward_backward of a batch needs,
and the micro-batches (and gradient checkpointing) that keep a request within the budget. A request that cannot
fit is refused with what it needs and what is free, never computed until the kernel kills the service.

The estimate is per token of a micro-batch's padded width, from the model's shape. It was measured on CPU in fp32
(SmolLM2-135M: about 2.8 MB a token without checkpointing and 1.3 MB with it, logits and their log-softmax
included; each layer saves ~10 x hidden + 8 x intermediate floats a token): a forward_backward of 4 x 500 tokens
needs about 5.6 GB over the model itself, 2.7 GB with gradient checkpointing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from dataclasses import dataclass
from typing import Any

import psutil

from twinkle_trainer.service.errors import MemoryBudgetError

MiB = 1 << 20
GiB = 1 << 30
FIXED = 96 * MiB  # per forward pass: buffers, the batch itself, allocator slack
SAFETY = 1.2  # the estimate is a mean; what malloc holds on to is not


def parse_size(text: str) -> int:
    """'6GB', '6g', '512MB', '0.5GiB', '8000000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size: use a number of bytes or one like 6GB or 512MB")
    scale = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def default_budget(total: int | None = None, available: int | None = None) -> int:
    """What the service may use unless told: 40% of the machine's memory, and at most what is free now less 2 GB
    (the machine stays usable for its other work), but at least 1 GB."""
    mem = psutil.virtual_memory()
    total = total if total is not None else mem.total
    available = available if available is not None else mem.available
    return max(1 * GiB, min(int(total * 0.4), available - 2 * GiB))


def release_freed_memory() -> None:
    """Give memory freed by torch back to the system (glibc keeps freed blocks otherwise), so the service's RSS
    follows what it holds, step after step."""
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def current_rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a forward pass depends on."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int

    @classmethod
    def of(cls, config: Any, vocab: int) -> ModelShape:
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        return cls(vocab, hidden, int(getattr(config, "intermediate_size", 0) or 4 * hidden),
                   int(getattr(config, "num_hidden_layers", 0) or 1))

    def per_token(self, grad: bool, checkpointing: bool) -> int:
        """Bytes a token of a micro-batch needs at the peak of its forward (and backward)."""
        logits = (4 if grad else 2) * self.vocab * 4  # logits, log-softmax (and their gradients)
        layer = (10 * self.hidden + 8 * self.intermediate) * 4
        if not grad:
            return logits + layer
        if checkpointing:  # each layer keeps its input; one layer at a time is recomputed for its backward
            return logits + self.layers * self.hidden * 4 * 2 + min(self.layers, 2) * layer
        return logits + self.layers * layer

    def need(self, rows: int, width: int, grad: bool, checkpointing: bool) -> int:
        return int(FIXED + SAFETY * rows * width * self.per_token(grad, checkpointing))


def sample_bytes(config: Any, length: int, new_tokens: int, vocab: int) -> int:
    """Bytes one sample of HF generate needs: its key/value cache, and the logits of every new token (kept for the
    log-probabilities, then stacked and normalized: three copies)."""
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or int(getattr(config, "hidden_size", 64) or 64) // heads)
    kv = 2 * layers * kv_heads * head_dim * length * 4
    return int(SAFETY * (kv + 3 * new_tokens * vocab * 4))


@dataclass(frozen=True)
class Plan:
    batches: list[list[int]]  # datum indices per micro-batch
    checkpointing: bool


class MemoryBudget:
    """The service's limit on its RSS, and the micro-batches of a request within what is left of it."""

    def __init__(self, limit: int | None, rss: Any = current_rss) -> None:
        self.limit, self.rss = limit, rss

    def room(self) -> int:
        """Bytes left for the current computation."""
        if self.limit is None:
            return 1 << 62
        return self.limit - int(self.rss())

    def check_model(self, parameters: int, what: str) -> None:
        """Refuse to load another copy of a model that would not leave room to train it."""
        need = parameters * 4 + 256 * MiB
        if need > self.room():
            raise MemoryBudgetError(
                f"{what} needs about {need / GiB:.1f} GB and {max(0, self.room()) / GiB:.1f} GB of the service's "
                f"{(self.limit or 0) / GiB:.1f} GB memory budget are free; close other training clients or start "
                "the service with a larger --memory-budget")

    def plan(self, lengths: list[int], shape: ModelShape, grad: bool, cap_tokens: int | None = None) -> Plan:
        """Micro-batches of similar lengths (less padding), as large as the room allows; gradient checkpointing
        only when the longest sequence does not fit without it (on a CPU micro-batches cost nothing but a loop,
        checkpointing a third more compute)."""
        room = self.room()
        longest = max(lengths)
        checkpointing = False
        if grad and shape.need(1, longest, grad, False) > room:
            checkpointing = True
        if shape.need(1, longest, grad, checkpointing) > room:
            need = shape.need(1, longest, grad, checkpointing)
            raise MemoryBudgetError(
                f"a sequence of {longest} tokens needs about {need / GiB:.2f} GB to train and "
                f"{max(0, room) / GiB:.2f} GB of the service's {(self.limit or 0) / GiB:.1f} GB memory budget are "
                "free; send shorter sequences, close other training clients, or start the service with a larger "
                "--memory-budget")
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = [[]]
        for i in order:
            width = max([lengths[j] for j in batches[-1]] + [lengths[i]])
            rows = len(batches[-1]) + 1
            too_big = shape.need(rows, width, grad, checkpointing) > room or (
                cap_tokens is not None and rows * width > cap_tokens)
            if batches[-1] and too_big:
                batches.append([])
            batches[-1].append(i)
        return Plan(batches, checkpointing)
