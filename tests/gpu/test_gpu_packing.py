"""SFT packing on a real NVIDIA GPU: a packed example is computed as it would be alone (attention example by example
on SDPA, and flash-attention's variable-length kernels where flash-attn is installed), and packed and padded runs
log the same losses. Skipped where there is no GPU. The speed figures come from the bench, on the same GPU:

    python -m pytest tests/gpu/test_gpu_packing.py -v
    python bench/bench_trainer.py sft trl --device cuda --rounds 20
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from twinkle_trainer.dataset import collate_packed, tokenize_sft
from twinkle_trainer.packed_attention import packed_attention_in
from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.process.controller import ProcessController

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
FLASH = importlib.util.find_spec("flash_attn") is not None


@pytest.mark.parametrize("attn", ["sdpa", pytest.param("flash_attention_2", marks=pytest.mark.skipif(
    not FLASH, reason="needs flash-attn"))])
def test_a_packed_example_on_the_gpu_is_computed_as_if_it_were_alone(home: Path, attn: str) -> None:
    from twinkle_trainer.models import load_model_and_tokenizer

    dtype = torch.bfloat16 if attn == "flash_attention_2" else torch.float32  # flash-attn takes half precision
    model, tok, _ = load_model_and_tokenizer("builtin:tiny-qwen2", dtype=dtype, attn_implementation=attn)
    model = model.cuda().eval()
    texts = [("Hi?", "Hello."), ("Count to ten, slowly." * 3, "one two three four five six seven eight nine ten"),
             ("A colour?", "Blue.")]
    examples = [tokenize_sft({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                             tok, 512, "left") for q, a in texts]
    row = {k: v.cuda() for k, v in collate_packed([e for e in examples if e is not None]).items()}
    with torch.no_grad(), packed_attention_in(model) if attn == "sdpa" else contextlib.nullcontext(False):
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
    start = 0
    for e in examples:
        assert e is not None
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([e.input_ids], device="cuda"), use_cache=False).logits[0]
        tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(packed[start : start + len(e.input_ids)], alone, rtol=tolerance, atol=tolerance)
        start += len(e.input_ids)


def test_packed_and_padded_runs_learn_the_same_on_the_gpu(home: Path) -> None:
    ctl = ProcessController(home, grace=60)
    args = ["--model_id", "builtin:tiny-qwen2", "--device", "cuda", "--mixed_precision", "no",
            "--dataset_id", "builtin:mixed-lengths", "--max_length", "256", "--max_steps", "4", "--batch_size", "8",
            "--micro_batch_size", "4", "--lora_dropout", "0", "--lr", "1e-2", "--save_steps", "100"]
    losses = {}
    for run_id, packing in (("packed", "--packing"), ("padded", "--no-packing")):
        ctl.launch_module("twinkle_trainer", [*args, packing], run_id=run_id).supervisor.wait(timeout=600)
        assert read_meta(RunPaths.of(run_id)).status == "completed", RunPaths.of(run_id).log.read_text()[-2000:]
        rows = [json.loads(line) for line in RunPaths.of(run_id).metrics.read_text().splitlines()]
        losses[run_id] = [r["loss"] for r in rows]
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-3)
    assert "attention example by example" in RunPaths.of("packed").log.read_text()
