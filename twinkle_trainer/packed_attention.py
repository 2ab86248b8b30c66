"""Attention over packed rows, example by example: what flash-attention's variable-length kernels do on a GPU,
done with PyTorch's SDPA on any device.

A packed row holds whole examples back to back, their positions restarting at 0. The usual way to keep attention
inside each example is a block-diagonal mask over the whole row, but SDPA on a CPU cannot skip the masked blocks:
the row's attention costs (row length)^2 whatever the examples. Here each example's queries attend to its own keys
(a causal SDPA call per example, which also takes the kernels' causal fast path), so a row costs the sum of its
examples' squares, and no mask is built at all. Registered with transformers' AttentionInterface as
`twinkle_packed`; a model that runs SDPA is switched to it only while it trains on packed rows (B = 1, no padding).
Flash-attention (flash_attention_2) reads the packed rows from the positions itself and is left as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

NAME = "twinkle_packed"
_registered = False


def segments(position_ids: Any) -> list[tuple[int, int]]:
    """[start, end) of every example in a packed row, from where its positions restart at 0."""
    import torch

    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], int(position_ids.shape[-1])]
    return list(zip(starts, ends, strict=True))


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature: query (1, heads, L, dim), key/value (1, kv heads, L, dim);
    returns the output as (1, L, heads, dim)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if position_ids is None or attention_mask is not None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        # not a packed training row (a padded batch, or decoding with a cache): plain SDPA as the model would run it
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    parts = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout,
                                    scaling=scaling, is_causal=True, **kwargs)[0]
             for s, e in segments(position_ids)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), None


def register() -> str:
    """Make `twinkle_packed` an attention implementation transformers knows (once per process); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, packed_attention)
        _registered = True
    return NAME


def _transformers_model(model: Any) -> Any:
    inner = getattr(model, "module", model)  # under DDP, the wrapped model
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT: the model inside


@contextlib.contextmanager
def packed_attention_in(model: Any) -> Iterator[bool]:
    """Within the block, a model that runs SDPA attention runs it example by example (True); any other model, or
    one that cannot switch (its attention is not dispatched through AttentionInterface), is left alone (False).
    The model's own implementation is back afterwards (a saved model never names this one)."""
    inner = _transformers_model(model)
    before = getattr(getattr(inner, "config", None), "_attn_implementation", None)
    if before != "sdpa" or not hasattr(inner, "set_attn_implementation") or not inner._can_set_attn_implementation():
        yield False
        return
    inner.set_attn_implementation(register())
    try:
        yield True
    finally:
        inner.set_attn_implementation(before)
