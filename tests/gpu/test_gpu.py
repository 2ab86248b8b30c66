"""The GPU path on a real NVIDIA GPU: SFT and GRPO steps with the HF and vLLM samplers, a stop and resume that
reproduces the losses, and the precision chosen for the card. Skipped where there is no GPU; on a GPU machine:

    python -m pytest tests/gpu -v
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from twinkle_trainer.protocol import RunMeta, RunPaths, read_meta
from twinkle_tui.process.controller import ProcessController

from conftest import wait_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
TINY = ["--model_id", "builtin:tiny-qwen2", "--device", "cuda"]
VLLM = importlib.util.find_spec("vllm") is not None


def metrics(run_id: str) -> list[dict]:
    path = RunPaths.of(run_id).metrics
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train(home: Path, run_id: str, *args: str, timeout: float = 600) -> RunMeta:
    launched = ProcessController(home, grace=60).launch_module("twinkle_trainer", [*TINY, *args], run_id=run_id)
    launched.supervisor.wait(timeout=timeout)
    meta = read_meta(RunPaths.of(run_id))
    assert meta.status == "completed", RunPaths.of(run_id).log.read_text()[-3000:]
    return meta


def test_sft_steps_on_the_gpu(home: Path) -> None:
    train(home, "gpu-sft", "--max_steps", "5", "--batch_size", "4", "--micro_batch_size", "2")
    assert "on cuda" in RunPaths.of("gpu-sft").log.read_text()
    assert len(metrics("gpu-sft")) == 5


@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=pytest.mark.skipif(not VLLM, reason="vLLM"))])
def test_grpo_steps_with_each_sampler(home: Path, sampler: str) -> None:
    train(home, f"gpu-grpo-{sampler}", "--task", "grpo", "--dataset_id", "builtin:arith", "--sampler_type", sampler,
          "--max_steps", "3", "--batch_size", "2", "--micro_batch_size", "2", "--num_generations", "4",
          "--max_tokens", "8", "--gpu_memory_utilization", "0.3")
    rows = metrics(f"gpu-grpo-{sampler}")
    assert len(rows) == 3 and all(r["adapter_version"] > 0 for r in rows)
    if sampler == "vllm":  # the importance-sampling correction reports the kernels' mismatch
        assert all(0 <= r["sampler/logprob_diff"] < 1 for r in rows)


def test_stop_and_resume_reproduce_the_losses_on_the_gpu(home: Path) -> None:
    args = ["--max_steps", "30", "--batch_size", "4", "--micro_batch_size", "2", "--save_steps", "1000", "--seed", "3",
            "--mixed_precision", "no"]
    train(home, "whole", *args)
    reference = {r["step"]: r["loss"] for r in metrics("whole")}
    ctl = ProcessController(home, grace=60)
    launched = ctl.launch_module("twinkle_trainer", [*TINY, *args], run_id="parts")
    wait_for(lambda: len(metrics("parts")) >= 5, timeout=300, what="five steps")
    ctl.stop("parts")
    launched.supervisor.wait(timeout=300)
    relaunch = ctl.resume("parts")
    assert relaunch is not None and relaunch.supervisor.wait(timeout=600) == 0
    for r in metrics("parts"):
        assert r["loss"] == pytest.approx(reference[r["step"]], rel=1e-3, abs=1e-4), r["step"]


def test_the_precision_fits_the_card(home: Path) -> None:
    meta = train(home, "gpu-precision", "--max_steps", "1", "--batch_size", "2", "--micro_batch_size", "2")
    del meta
    log = RunPaths.of("gpu-precision").log.read_text()
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert f"precision {expected}" in log


@pytest.mark.skipif(not VLLM, reason="needs vLLM (the gpu extra)")
def test_the_training_service_samples_with_vllm(home: Path) -> None:
    """The tinker service on the GPU: training on CUDA, sampling through a vLLM engine with the saved adapter; the
    sampled tokens' log-probabilities and compute_logprobs agree with the trainer's (bf16 tolerance)."""
    import numpy as np

    tinker = pytest.importorskip("tinker")
    from tinker import types

    from test_service import Server

    server = Server(home, "--sampler", "vllm").wait_ready()
    try:
        client = tinker.ServiceClient(base_url=server.url, api_key="tml-gpu-tests")
        tc = client.create_lora_training_client(base_model="builtin:tiny-qwen2", rank=8, seed=0).result()
        ids = tc.get_tokenizer().encode("the quick brown fox jumps over the lazy dog")
        datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                            loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64)})
        for _ in range(3):
            tc.forward_backward([datum], "cross_entropy")
            tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=120)
        sampler = tc.save_weights_and_get_sampling_client().result()
        out = sampler.sample(types.ModelInput.from_ints(ids[:4]), 4,
                             types.SamplingParams(max_tokens=8, temperature=1.0, seed=1, stop=[])).result(timeout=600)
        assert all(len(s.tokens) == 8 and s.logprobs is not None for s in out.sequences)
        lp = sampler.compute_logprobs(types.ModelInput.from_ints(ids)).result(timeout=120)
        trained = tc.forward([datum], "cross_entropy").result(timeout=120).loss_fn_outputs[0]["logprobs"].to_numpy()
        np.testing.assert_allclose(np.array(lp[1:], dtype=np.float32), trained, atol=0.1)
        assert "sampling with vLLM" in (home / f"service-{server.port}.log").read_text()
    finally:
        server.stop()
