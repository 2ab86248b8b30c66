"""Samplers: HF generate (CPU and GPU, the default) and vLLM (optional `gpu` extra) with LoRA hot-swap.

Both return, per prompt, num_generations completions as token ids plus whether each hit max_tokens.
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


def make_sampler(kind: str, model: Any, tokenizer: Any, sampling: Any, sampler: Any, model_dir: Path, lora: Any) -> Any:
    """auto = vLLM when a GPU and vLLM are present, else HF generate."""
    if kind == "auto":
        kind = "vllm" if _vllm_usable() else "hf"
    if kind == "vllm":
        return VLLMSampler(model_dir, tokenizer, sampling, sampler, lora)
    return HFSampler(model, tokenizer, sampling)


def _vllm_usable() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


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
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        if was_training:
            self.model.train()
        new = out[:, width:].tolist()
        completions = []
        for row, tokens in enumerate(new):
            cut = len(tokens)
            for j, t in enumerate(tokens):
                if t == tok.eos_token_id:
                    cut = j + 1
                    break
            kept = tokens[:cut]  # after the end token there is only padding
            completions.append(Completion(row // n, kept, truncated=tok.eos_token_id not in kept))
        return completions


class VLLMSampler:
    """vLLM in the training process: sleeps while we train, wakes to sample with the newest adapter.

    Each sync saves the adapter and sends it as a new LoRARequest (a new id each time), so vLLM never serves a
    stale adapter from its cache.
    """

    def __init__(self, model_dir: Path, tokenizer: Any, sampling: Any, sampler: Any, lora: Any) -> None:
        import torch

        if not torch.cuda.is_available():
            raise SamplerError("sampler_type vllm needs an NVIDIA GPU; use sampler_type hf on this machine")
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise SamplerError("sampler_type vllm needs vLLM: pip install 'twinkle-tui[gpu]'") from None
        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        self.tokenizer, self.sampling = tokenizer, sampling
        self.version = 0
        self._adapter: Path | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="twinkle-vllm-"))
        self.llm = LLM(model=str(model_dir), enable_lora=True, max_lora_rank=max(8, lora.lora_r),
                       gpu_memory_utilization=sampler.gpu_memory_utilization,
                       tensor_parallel_size=sampler.tensor_parallel_size,
                       enable_sleep_mode=sampler.enable_sleep_mode, dtype="bfloat16")
        self.sleep_mode = sampler.enable_sleep_mode

    def sync(self, model: Any) -> None:
        self.version += 1
        target = self._tmp / f"adapter-v{self.version}"
        model.save_pretrained(str(target))
        if self._adapter is not None:
            shutil.rmtree(self._adapter, ignore_errors=True)
        self._adapter = target

    def generate(self, prompts: list[list[int]], n: int) -> list[Completion]:
        s = self.sampling
        if self.sleep_mode:
            self.llm.wake_up()
        params = self._SamplingParams(n=n, temperature=max(s.temperature, 0.0), top_p=s.top_p,
                                      top_k=s.top_k if s.top_k > 0 else -1, max_tokens=s.max_tokens)
        request = None
        if self._adapter is not None:
            request = self._LoRARequest(f"twinkle-v{self.version}", self.version, str(self._adapter))
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=request,
                                    use_tqdm=False)
        if self.sleep_mode:
            self.llm.sleep(level=1)
        completions = []
        for i, out in enumerate(outputs):
            for c in out.outputs:
                completions.append(Completion(i, list(c.token_ids), truncated=c.finish_reason == "length"))
        return completions
