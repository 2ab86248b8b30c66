"""Samplers: HF generate (CPU and GPU, the default) and vLLM (optional `gpu` extra) with LoRA hot-swap.

VLLMEngine is the one wrapper of vLLM: the trainer's VLLMSampler and the training service's sampler both use it.
Both trainer samplers return, per prompt, num_generations completions as token ids plus whether each hit max_tokens.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SamplerError(Exception):
    """The sampler cannot run here; one line that says why and what to use instead."""


@dataclass
class Completion:
    prompt_index: int
    token_ids: list[int]
    truncated: bool  # stopped by max_tokens, not by an end-of-sequence token
    logprobs: list[float] | None = None  # the sampler's log-probability of each token (vLLM reports them)


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that is at least r (it takes only these values)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise SamplerError(f"LoRA rank {r} is larger than vLLM supports ({VLLM_LORA_RANKS[-1]})")


def choose_sampler(kind: str, use_lora: bool, device: str, processes: int, cuda: bool, vllm_installed: bool,
                   option: str = "sampler_type") -> str:
    """hf or vllm. auto picks vLLM only where it can run as configured: a GPU, LoRA, one process, not device cpu.
    `option` names the setting in the refusal (the trainer's sampler_type, the service's --sampler)."""
    if kind == "hf":
        return "hf"
    can = cuda and vllm_installed and use_lora and processes == 1 and device != "cpu"
    if kind == "auto":
        return "vllm" if can else "hf"
    if not cuda or device == "cpu":
        raise SamplerError(f"{option} vllm needs an NVIDIA GPU; use {option} hf on this machine")
    if not vllm_installed:
        raise SamplerError(f"{option} vllm needs vLLM: pip install 'twinkle-tui[gpu]'")
    return "vllm"


def make_sampler(kind: str, model: Any, tokenizer: Any, args: Any, model_dir: Path, processes: int = 1) -> Any:
    """The configured sampler: HF generate (CPU and GPU) or vLLM (GPU, LoRA, one process)."""
    import importlib.util

    import torch

    chosen = choose_sampler(kind, args.lora.use_lora, args.model.device, processes, torch.cuda.is_available(),
                            importlib.util.find_spec("vllm") is not None)
    if chosen == "vllm":
        return VLLMSampler(model_dir, tokenizer, args)
    return HFSampler(model, tokenizer, args.sampling)


def vllm_engine_args(model_dir: Path, args: Any, bf16_supported: bool) -> dict[str, Any]:
    """The arguments of vllm.LLM for this configuration (a function, so they can be checked without a GPU)."""
    precision = args.model.mixed_precision
    if precision == "fp16" or (precision == "auto" and not bf16_supported):
        dtype = "float16"
    elif precision == "bf16" or precision == "auto":
        dtype = "bfloat16"
    else:
        dtype = "float32"
    max_model_len = args.template.max_length + args.sampling.max_tokens
    return {
        "model": str(model_dir), "enable_lora": True, "max_lora_rank": vllm_lora_rank(args.lora.lora_r),
        "gpu_memory_utilization": args.sampler.gpu_memory_utilization,
        "tensor_parallel_size": args.sampler.tensor_parallel_size,
        "enable_sleep_mode": args.sampler.enable_sleep_mode, "dtype": dtype,
        "max_model_len": max_model_len,
        "max_num_batched_tokens": max(max_model_len, 4096),  # bounded: the engine's activation memory follows it
        "seed": args.training.seed, "trust_remote_code": args.model.trust_remote_code,
    }


class HFSampler:
    """model.generate on the training model itself: the current adapter is always the one sampled."""

    version = 0

    def __init__(self, model: Any, tokenizer: Any, sampling: Any) -> None:
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling

    def sync(self, model: Any) -> None:
        self.version += 1  # nothing to copy: generation uses the live weights

    def generate(self, prompts: list[list[int]], n: int) -> list[Completion]:
        import torch

        tok, s = self.tokenizer, self.sampling
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues from the right edge
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        device = next(self.model.parameters()).device
        greedy = s.temperature <= 0
        kwargs: dict[str, Any] = dict(max_new_tokens=s.max_tokens, do_sample=not greedy, num_return_sequences=n,
                                      pad_token_id=pad, eos_token_id=tok.eos_token_id)
        if not greedy:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=tok)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        if was_training:
            self.model.train()
        new = out[:, width:].tolist()
        completions = []
        for row, tokens in enumerate(new):
            end = finished_at(tokens, tok, s.stop)
            kept = tokens if end is None else tokens[:end]  # after the end there is only padding
            completions.append(Completion(row // n, kept, truncated=end is None))
        return completions


def finished_at(tokens: list[int], tokenizer: Any, stops: list[str]) -> int | None:
    """Where a completion ended (its end token, or the token that completed a stop string), or None if it ran to
    max_tokens."""
    for j, token in enumerate(tokens, 1):
        if token == tokenizer.eos_token_id:
            return j
        if stops and any(stop in tokenizer.decode(tokens[:j], skip_special_tokens=True) for stop in stops):
            return j
    return None


class VLLMEngine:
    """One vLLM engine over one base model, sampling with LoRA adapters saved in folders: the one wrapper of vLLM
    that both the trainer's sampler (VLLMSampler) and the training service's sampler use.

    An adapter is sent as a LoRARequest whose id names its folder and the version of its weights file, so a folder
    rewritten under the same name is a new adapter, never a stale one from vLLM's cache. With sleep mode the engine
    sleeps between generations (its GPU memory goes back to the trainer) and wakes to generate.
    """

    def __init__(self, engine_args: dict[str, Any], sleep_mode: bool = False) -> None:
        import torch

        if not torch.cuda.is_available():
            raise SamplerError("the vLLM sampler needs an NVIDIA GPU; use the HF sampler on this machine")
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise SamplerError("the vLLM sampler needs vLLM: pip install 'twinkle-tui[gpu]'") from None
        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        self.sleep_mode = sleep_mode
        self.ids: dict[tuple[str, int], int] = {}
        torch.cuda.empty_cache()  # what the training models' cache holds, the engine cannot take
        self.llm = LLM(**engine_args)

    def lora_request(self, folder: Path | None) -> Any:
        """The LoRARequest of the adapter in `folder` as it is now (None: the base model)."""
        if folder is None:
            return None
        key = (str(folder), (folder / "adapter_model.safetensors").stat().st_mtime_ns)
        if key not in self.ids:
            self.ids[key] = len(self.ids) + 1
        return self._LoRARequest(f"twinkle-{self.ids[key]}", self.ids[key], str(folder))

    def generate(self, prompts: list[list[int]], sampling: dict[str, Any], adapter: Path | None) -> list[Any]:
        """vLLM RequestOutputs for token-id prompts, with vllm.SamplingParams(**sampling) and the adapter."""
        import torch

        if self.sleep_mode:
            torch.cuda.empty_cache()  # memory the trainer's cache holds is memory the engine cannot wake into
            self.llm.wake_up()
        try:
            return list(self.llm.generate([{"prompt_token_ids": p} for p in prompts],
                                          self._SamplingParams(**sampling), lora_request=self.lora_request(adapter),
                                          use_tqdm=False))
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=1)


class VLLMSampler:
    """The trainer's vLLM sampler: sleeps while we train, wakes to sample with the newest adapter.

    Each sync saves the adapter into a new folder, so vLLM never serves a stale adapter from its cache. The sampled
    tokens' log-probabilities come back with the samples, for the importance-sampling correction of the mismatch
    between vLLM's kernels and the trainer.
    """

    def __init__(self, model_dir: Path, tokenizer: Any, args: Any) -> None:
        import atexit

        import torch

        if not torch.cuda.is_available():
            raise SamplerError("sampler_type vllm needs an NVIDIA GPU; use sampler_type hf on this machine")
        self.tokenizer, self.sampling = tokenizer, args.sampling
        self.version = 0
        self._adapter: Path | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="twinkle-vllm-"))
        atexit.register(self.close)
        try:
            self.engine = VLLMEngine(vllm_engine_args(model_dir, args, torch.cuda.is_bf16_supported()),
                                     sleep_mode=args.sampler.enable_sleep_mode)
        except SamplerError as exc:
            raise SamplerError(str(exc).replace("the vLLM sampler", "sampler_type vllm")) from None

    def sync(self, model: Any) -> None:
        self.version += 1
        target = self._tmp / f"adapter-v{self.version}"
        model.save_pretrained(str(target))
        if self._adapter is not None:
            shutil.rmtree(self._adapter, ignore_errors=True)
        self._adapter = target

    def generate(self, prompts: list[list[int]], n: int) -> list[Completion]:
        s = self.sampling
        sampling = {"n": n, "temperature": max(s.temperature, 0.0), "top_p": s.top_p,
                    "top_k": s.top_k if s.top_k > 0 else -1, "max_tokens": s.max_tokens, "logprobs": 0,
                    "stop": list(s.stop) or None}
        outputs = self.engine.generate(prompts, sampling, self._adapter)
        completions = []
        for i, out in enumerate(outputs):
            for c in out.outputs:
                tokens = list(c.token_ids)
                completions.append(Completion(i, tokens, truncated=c.finish_reason == "length",
                                              logprobs=sampled_logprobs(tokens, c.logprobs)))
        return completions

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def sampled_logprobs(tokens: list[int], per_position: Any) -> list[float] | None:
    """vLLM's log-probability of each sampled token (its logprobs output: one {token_id: Logprob} per position)."""
    if not per_position or len(per_position) != len(tokens):
        return None
    out = []
    for token, options in zip(tokens, per_position, strict=True):
        entry = options.get(token) if options else None
        if entry is None:
            return None
        out.append(logprob_of(entry))
    return out


def logprob_of(entry: Any) -> float:
    """The number in one of vLLM's logprobs entries (a Logprob object, or a bare float)."""
    return float(getattr(entry, "logprob", entry))
