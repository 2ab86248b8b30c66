"""SFT packing: whole examples back to back in one row, positions restarting at each, so every example is computed
exactly as it would be alone (its loss does not change), and the trainer's losses match the padded loop's."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from twinkle_trainer.dataset import Example, collate, collate_packed, load_records, pack_rows, tokenize_sft
from twinkle_trainer.packed_attention import packed_attention_in, segments
from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_trainer.sft import completion_loss_sum
from twinkle_tui.process.controller import ProcessController


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from twinkle_trainer.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", layers=3)


def load(path: Path, attn: str) -> tuple[Any, Any]:
    from twinkle_trainer.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(str(path), attn_implementation=attn)
    return model.eval(), tok


def examples(tok: Any) -> list[Example]:
    """Three conversations of very different lengths, as the trainer tokenizes them."""
    rows = [("Hi?", "Hello."), ("What is 2 + 2? Explain it to me slowly." * 2, "It is four. " * 12),
            ("Name a colour.", "Blue, the colour of a clear sky at noon.")]
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]
    out = [tokenize_sft(r, tok, 512, "left") for r in records]
    assert all(e is not None for e in out)
    return [e for e in out if e is not None]


def alone(model: Any, e: Example) -> torch.Tensor:
    """Logits of one example on its own (no padding, no other example)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([e.input_ids])).logits[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "per example"])
def test_a_packed_example_is_computed_as_if_it_were_alone(tiny: Path, attn: str) -> None:
    """A block-diagonal mask (sdpa, eager) or attention example by example (what the trainer runs on sdpa)."""
    model, tok = load(tiny, "sdpa" if attn == "per example" else attn)
    ex = examples(tok)
    batch = collate_packed(ex)
    assert batch["position_ids"][0].tolist() == [p for e in ex for p in range(len(e.input_ids))]
    with torch.no_grad(), packed_attention_in(model) if attn == "per example" else contextlib.nullcontext(False) as on:
        # as the trainer calls it: without a KV cache (with one, the positions are not read)
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    assert on == (attn == "per example") and model.config._attn_implementation == ("sdpa" if on else attn)
    start = 0
    for e in ex:
        span = packed[start : start + len(e.input_ids)]
        torch.testing.assert_close(span, alone(model, e), rtol=1e-4, atol=1e-4)
        start += len(e.input_ids)
    # Without the restarting positions the same row is one long sequence, and the later examples change: the
    # comparison above is what the positions buy.
    with torch.no_grad():
        causal = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    second = causal[len(ex[0].input_ids) : len(ex[0].input_ids) + len(ex[1].input_ids)]
    assert not torch.allclose(second, alone(model, ex[1]), rtol=1e-3, atol=1e-3)


def test_packing_does_not_change_the_loss_of_a_single_example(tiny: Path) -> None:
    model, tok = load(tiny, "sdpa")
    ex = examples(tok)
    for e in ex:
        by_itself, n = completion_loss_sum(model, collate([e], tok.pad_token_id))
        padded, n_padded = completion_loss_sum(model, collate([e, max(ex, key=lambda x: len(x.input_ids))],
                                                              tok.pad_token_id))
        packed_alone, n_packed = completion_loss_sum(model, collate_packed([e]))
        assert n == n_packed and packed_alone.item() == pytest.approx(by_itself.item(), rel=1e-5)
    # the sum over a packed row is the sum of each example's own loss, with or without logits_to_keep
    total = sum(completion_loss_sum(model, collate([e], tok.pad_token_id))[0].item() for e in ex)
    row = collate_packed(ex)
    loss, count = completion_loss_sum(model, row)
    row["logits_to_keep"] = (row["labels"][0, 1:] != -100).nonzero().flatten()
    kept, kept_count = completion_loss_sum(model, row)
    assert count == kept_count == sum(sum(x != -100 for x in e.labels[1:]) for e in ex)
    assert loss.item() == pytest.approx(total, rel=1e-5) and kept.item() == pytest.approx(total, rel=1e-5)
    assert len(row["logits_to_keep"]) == count < row["input_ids"].shape[1]  # no logits for prompt positions


def test_segments_are_where_positions_restart() -> None:
    assert segments(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    assert segments(torch.tensor([[0, 1, 2]])) == [(0, 3)]


def test_rows_hold_every_example_once_within_the_length() -> None:
    lengths = [300, 20, 511, 90, 90, 700, 5, 260, 250, 1]
    rows = pack_rows(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    for r in rows:
        assert sum(lengths[i] for i in r) <= 512 or len(r) == 1  # only an example longer than a row is alone
    assert len(rows) == 4  # the 700 alone, then 1,527 tokens in three rows of 512: as few as can hold them
    assert pack_rows(lengths, 512) == rows


def test_the_mixed_lengths_set_is_long_tailed(tiny: Path) -> None:
    _, tok = load(tiny, "sdpa")
    records = load_records("builtin:mixed-lengths", None)
    lengths = sorted(len(e.input_ids) for r in records if (e := tokenize_sft(r, tok, 4096, "left")))
    median, p90 = lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.9)]
    assert len(records) == 400 and p90 > 2.5 * median and lengths[-1] > 8 * median
    assert all(r.get("messages") for r in records)


def metrics(run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunPaths.of(run_id).metrics.read_text().splitlines()]


def test_the_trainer_learns_the_same_with_and_without_packing(home: Path) -> None:
    """Same data, same seed, no dropout: the packed run's losses are the padded run's, step by step."""
    ctl = ProcessController(home, grace=60)
    args = ["--model_id", "builtin:tiny-llama", "--dataset_id", "builtin:mixed-lengths", "--max_length", "256",
            "--max_steps", "4", "--batch_size", "8", "--micro_batch_size", "4", "--lora_dropout", "0",
            "--lr", "1e-2", "--save_steps", "100"]
    for run_id, packing in (("packed", "--packing"), ("padded", "--no-packing")):
        launched = ctl.launch_module("twinkle_trainer", [*args, packing], run_id=run_id)
        launched.supervisor.wait(timeout=240)
        assert read_meta(RunPaths.of(run_id)).status == "completed", RunPaths.of(run_id).log.read_text()[-2000:]
    packed, padded = metrics("packed"), metrics("padded")
    assert [r["loss"] for r in packed] == pytest.approx([r["loss"] for r in padded], rel=1e-4)
    assert [r["grad_norm"] for r in packed] == pytest.approx([r["grad_norm"] for r in padded], rel=1e-3)
    assert "packed rows of up to 1024 tokens, one per forward, attention example by example" in \
        RunPaths.of("packed").log.read_text()
    assert "4 per forward, padded" in RunPaths.of("padded").log.read_text()
