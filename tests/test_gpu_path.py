"""The GPU path, checked on the CPU wherever it can be: what is refused at configuration time, the vLLM arguments,
the policy's tempered and gathered log-probabilities, importance weights, device and precision choices."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from twinkle_trainer.config import CLI, ConfigError
from twinkle_trainer.grpo import entropy_of, gathered_logprobs, importance_weights, token_logprobs
from twinkle_trainer.samplers import SamplerError, choose_sampler, sampled_logprobs, vllm_engine_args, vllm_lora_rank
from twinkle_trainer.train import choose_precision, resolve_device, select_cuda_device


def resolve(*argv: str):  # noqa: ANN201
    return CLI.from_args(list(argv), env={})


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "grpo", "--nproc_per_node", "2", "--batch_size", "3", "--micro_batch_size", "1"],
     "batch_size (3) must be a multiple of the 2 training processes"),
    (["--nnodes", "2", "--master_port", "29500", "--batch_size", "3", "--micro_batch_size", "1"],
     "batch_size (3) must be a multiple of the 2 training processes"),
    (["--task", "grpo", "--temperature", "0"], "temperature 0 (greedy) makes every completion of a group the same"),
    (["--task", "grpo", "--temperature", "2.5"], "temperature must be at most 2"),
    (["--task", "grpo", "--top_p", "0"], "top_p 0 keeps no tokens"),
    (["--sampler_type", "vllm", "--no-use-lora"], "sampler_type vllm needs use_lora"),
    (["--sampler_type", "vllm", "--nproc_per_node", "2"], "sampler_type vllm runs in one training process"),
    (["--sampler_type", "vllm", "--device", "cpu"], "sampler_type vllm needs a GPU"),
    (["--device", "cuda:1", "--nproc_per_node", "2"], "device cuda:N names one GPU"),
    (["--device", "gpu0"], "device must be auto, cpu, cuda or cuda:N"),
    (["--strategy", "native_fsdp"], "strategy native_fsdp is not supported yet"),
    (["--nnodes", "2"], "master_port must be set"),
])
def test_what_would_crash_or_hang_on_a_gpu_is_refused_at_configuration(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(*argv)


def test_vllm_lora_ranks_round_up_to_what_vllm_accepts() -> None:
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 12, 16, 17, 100, 300, 512)] == [1, 8, 8, 16, 16, 32, 128, 320, 512]
    with pytest.raises(SamplerError, match="larger than vLLM supports"):
        vllm_lora_rank(600)


@pytest.mark.parametrize(("precision", "bf16", "dtype"), [("auto", True, "bfloat16"), ("auto", False, "float16"),
                                                          ("fp16", True, "float16"), ("no", True, "float32")])
def test_the_vllm_engine_arguments(precision: str, bf16: bool, dtype: str) -> None:
    args = resolve("--lora_r", "12", "--max_length", "300", "--max_tokens", "50", "--seed", "5",
                   "--mixed_precision", precision, "--trust_remote_code")
    engine = vllm_engine_args(Path("/models/m"), args, bf16)
    assert engine["dtype"] == dtype and engine["max_lora_rank"] == 16 and engine["max_model_len"] == 350
    assert engine["seed"] == 5 and engine["trust_remote_code"] and engine["enable_lora"]
    assert 350 <= engine["max_num_batched_tokens"] <= 8192


def test_auto_picks_vllm_only_where_it_can_run() -> None:
    assert choose_sampler("auto", True, "auto", 1, cuda=True, vllm_installed=True) == "vllm"
    for use_lora, device, processes in ((False, "auto", 1), (True, "cpu", 1), (True, "auto", 2)):
        assert choose_sampler("auto", use_lora, device, processes, cuda=True, vllm_installed=True) == "hf"
    assert choose_sampler("auto", True, "auto", 1, cuda=False, vllm_installed=True) == "hf"
    with pytest.raises(SamplerError, match="needs an NVIDIA GPU"):
        choose_sampler("vllm", True, "cpu", 1, cuda=True, vllm_installed=True)


def test_precision_and_device_follow_the_hardware() -> None:
    assert choose_precision("auto", use_cpu=True, bf16_supported=False) == "no"
    assert choose_precision("auto", use_cpu=False, bf16_supported=True) == "bf16"
    assert choose_precision("auto", use_cpu=False, bf16_supported=False) == "fp16"  # a T4 or V100
    from twinkle_trainer.models import ModelError

    with pytest.raises(ModelError, match="bf16 is not supported by this GPU"):
        choose_precision("bf16", use_cpu=False, bf16_supported=False)
    with pytest.raises(ModelError, match="needs an NVIDIA GPU"):
        resolve_device("cuda:1", cuda_available=False)
    assert resolve_device("cpu", cuda_available=True) and not resolve_device("cuda", cuda_available=True)
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    select_cuda_device("cuda:1", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    env = {}
    select_cuda_device("cuda:2", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2"


def test_tempered_log_probabilities_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = SimpleNamespace()
    logits = torch.randn(2, 6, 17)
    model_call = lambda input_ids, attention_mask: SimpleNamespace(logits=logits)  # noqa: E731
    ids = torch.randint(0, 17, (2, 6))
    logp, entropy = token_logprobs(model_call, ids, torch.ones_like(ids), temperature=0.7)
    direct = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(logp, direct, atol=1e-5)
    p = torch.softmax(logits[:, :-1] / 0.7, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)
    del model


def test_gathered_log_probabilities_equal_the_full_log_softmax_and_its_gradient() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 40, 257, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 257, (3, 40))
    import twinkle_trainer.grpo as grpo

    grpo_chunk, grpo.CHUNK_ELEMENTS = grpo.CHUNK_ELEMENTS, 257 * 7  # several chunks, one ragged
    try:
        assert torch.autograd.gradcheck(lambda z: gathered_logprobs(z, t[:1, :9], 0.9), (x[:1, :9],))
        ours = gathered_logprobs(x, t, 0.9)
        full = torch.log_softmax(x / 0.9, -1).gather(-1, t[..., None]).squeeze(-1)
        assert torch.allclose(ours, full)
        g1 = torch.autograd.grad(ours.sum(), x)[0]
        g2 = torch.autograd.grad(full.sum(), x)[0]
        assert torch.allclose(g1, g2)
        assert torch.allclose(entropy_of(x.detach(), 0.9, chunk=13),
                              -(torch.softmax(x / 0.9, -1) * torch.log_softmax(x / 0.9, -1)).sum(-1).detach())
    finally:
        grpo.CHUNK_ELEMENTS = grpo_chunk


def test_importance_weights_are_truncated_and_the_mismatch_measured() -> None:
    train = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    sampler = torch.log(torch.tensor([[0.5, 0.05, 0.95]]))
    weights, diff = importance_weights(train, sampler, cap=2.0)
    assert torch.allclose(weights, torch.tensor([[1.0, 2.0, 0.9 / 0.95]]), atol=1e-5)  # 4x capped at 2
    assert torch.allclose(diff, (train - sampler).abs())


def test_vllm_sample_logprobs_are_read_per_token() -> None:
    Logprob = SimpleNamespace
    per_position = [{5: Logprob(logprob=-0.1)}, {7: Logprob(logprob=-2.0), 3: Logprob(logprob=-0.5)}]
    assert sampled_logprobs([5, 7], per_position) == [-0.1, -2.0]
    assert sampled_logprobs([5, 8], per_position) is None and sampled_logprobs([5], per_position) is None


def test_checkpoints_touch_cuda_only_where_there_is_one(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from twinkle_trainer import checkpoint
    from twinkle_trainer.models import make_tiny_model

    path = make_tiny_model(tmp_path / "tiny")
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(path)), LoraConfig(r=4, target_modules=["q_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (tmp_path / "ck").mkdir()
    checkpoint.save(tmp_path / "ck", model, opt, sched, step=3, data_position=12)
    state = torch.load(tmp_path / "ck" / checkpoint.STATE, weights_only=False)
    assert ("cuda" in state["rng"]) == torch.cuda.is_available()
    state["rng"]["cuda"] = [torch.zeros(8, dtype=torch.uint8)]  # saved on a GPU machine, loaded on this one
    torch.save(state, tmp_path / "ck" / checkpoint.STATE)
    loaded = checkpoint.read(tmp_path / "ck")
    checkpoint.apply(loaded, model, opt, sched)  # no CUDA call without a GPU
    assert loaded.step == 3 and loaded.data_position == 12


def test_all_linear_with_last_layers_trains(home: Path) -> None:
    from twinkle_tui.process.controller import ProcessController

    launched = ProcessController(home).launch_module(
        "twinkle_trainer", ["--model_id", "builtin:tiny-llama", "--lora_target_modules", "all-linear", "--lora_last_layers",
                    "1", "--max_steps", "2", "--batch_size", "2", "--micro_batch_size", "2"], run_id="alllinear")
    assert launched.supervisor.wait(timeout=240) == 0, (home / "alllinear" / "output.log").read_text()[-2000:]
    adapter = json.loads((home / "alllinear" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) >= {"q_proj", "down_proj"} and adapter["layers_to_transform"] == [1]
