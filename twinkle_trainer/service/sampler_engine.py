"""The service's samplers: base models for sampling, each with the adapters of saved checkpoints loaded by name,
sampled with HF generate; or, on a GPU with the gpu extra, the shared vLLM engine (twinkle_trainer.samplers.VLLMEngine)
with the tinker semantics of the HF path (stop, logprobs, top-k, prompt log-probabilities).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinkle_trainer.samplers import VLLMEngine, logprob_of, sampled_logprobs, vllm_lora_rank
from twinkle_trainer.service.errors import EngineError, MemoryBudgetError
from twinkle_trainer.service.lora import MAX_RANK, device, stored_parameters
from twinkle_trainer.service.memory import FIXED, GiB, MemoryBudget, release_freed_memory, sample_bytes
from twinkle_trainer.service.wire import Sequence


@dataclass
class SampleParams:
    max_tokens: int | None
    seed: int | None
    stop: str | list[str] | list[int] | None
    temperature: float
    top_k: int
    top_p: float

    def check(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise EngineError("temperature must be >= 0 and top_p in (0, 1]")
        if self.top_k == 0 or self.top_k < -1:
            raise EngineError("top_k must be -1 (off) or a positive number")


@dataclass
class SampleResult:
    sequences: list[Sequence]
    prompt_logprobs: np.ndarray | None = None
    topk_prompt: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class _Base:
    model: Any
    tokenizer: Any
    adapters: dict[str, float] = field(default_factory=dict)  # name -> last use


class Samplers:
    """Base models for sampling, each with the adapters of saved checkpoints loaded by name (up to MAX_ADAPTERS,
    least recently used first out). A sampling session names a checkpoint folder, or none for the base model.

    With the vLLM sampler (a GPU with the gpu extra) the first base model sampled gets a vLLM engine that takes
    every adapter as a LoRARequest; other base models sample with HF generate on the same GPU (one engine holds
    a fixed share of GPU memory, and a second would starve the training models)."""

    MAX_ADAPTERS = 8

    def __init__(self, kind: str = "hf", gpu_memory_utilization: float = 0.3,
                 budget: MemoryBudget | None = None) -> None:
        self.bases: dict[str, _Base] = {}
        self.kind = kind
        self.gpu_memory_utilization = gpu_memory_utilization
        self.vllm: ServiceVLLM | None = None
        self.budget = budget or MemoryBudget(None)

    def _base(self, base_model: str) -> _Base:
        from twinkle_trainer.models import ModelError, load_model_and_tokenizer, resolve_model_dir

        if base_model not in self.bases:
            try:
                self.budget.check_model(stored_parameters(resolve_model_dir(base_model)),
                                        f"a sampling copy of {base_model}")
                model, tokenizer, _ = load_model_and_tokenizer(base_model)
            except ModelError as exc:
                raise EngineError(str(exc)) from None
            self.bases[base_model] = _Base(model.to(device()).eval(), tokenizer)
        return self.bases[base_model]

    def tokenizer_dir(self, base_model: str) -> Path:
        from twinkle_trainer.models import ModelError, resolve_model_dir

        try:
            return resolve_model_dir(base_model)
        except ModelError as exc:
            raise EngineError(str(exc)) from None

    def _with_adapter(self, base: _Base, folder: Path | None) -> Any:
        """The model to sample from: the base (adapters off) or the folder's adapter, loaded once per version."""
        from peft import PeftModel

        if folder is None:
            return None
        stamp = (folder / "adapter_model.safetensors").stat().st_mtime_ns
        name = f"a{abs(hash((str(folder), stamp)))}"
        if not isinstance(base.model, PeftModel):
            base.model = PeftModel.from_pretrained(base.model, str(folder), adapter_name=name).eval()
        elif name not in base.adapters:
            base.model.load_adapter(str(folder), adapter_name=name)
        base.adapters[name] = time.monotonic()
        while len(base.adapters) > self.MAX_ADAPTERS:
            oldest = min((n for n in base.adapters if n != name), key=base.adapters.__getitem__)
            base.model.delete_adapter(oldest)
            del base.adapters[oldest]
        base.model.set_adapter(name)
        return name

    def sample(self, base_model: str, folder: Path | None, prompt: list[int], num_samples: int, params: SampleParams,
               prompt_logprobs: bool, topk_prompt: int, topk_sample: int, last_n: int | None) -> SampleResult:
        import contextlib

        import torch

        params.check()
        if not prompt:
            raise EngineError("the prompt is empty")
        if not 1 <= num_samples <= 64:
            raise EngineError("num_samples must be between 1 and 64")
        if self.kind == "vllm" and base_model not in self.bases:
            if self.vllm is None:
                self.vllm = ServiceVLLM(base_model, self.tokenizer_dir(base_model), self.gpu_memory_utilization,
                                        self.MAX_ADAPTERS)
            if self.vllm.base_model == base_model:
                return self.vllm.sample(folder, prompt, num_samples, params, prompt_logprobs, topk_prompt,
                                        topk_sample, last_n)
        base = self._base(base_model)
        adapter = self._with_adapter(base, folder)
        model, tok = base.model, base.tokenizer
        vocab = model.get_input_embeddings().weight.shape[0]
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise EngineError(f"the prompt has a token id outside the vocabulary (0 to {vocab - 1})")
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 4096
        room = limit - len(prompt)
        if room < 1:
            raise EngineError(f"the prompt has {len(prompt)} tokens; {base_model} takes at most {limit}")
        device = next(model.parameters()).device
        off = model.disable_adapter() if adapter is None and hasattr(model, "disable_adapter") else \
            contextlib.nullcontext()
        with off, torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            max_new = min(room, params.max_tokens or room)
            result = SampleResult(self._generate_within_budget(model, tok, prompt, num_samples, params, max_new,
                                                               topk_sample))
            if prompt_logprobs or topk_prompt:
                logits = model(input_ids=torch.tensor([prompt], device=device)).logits[0, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                first = 1 if last_n is None else len(prompt) - last_n
                if prompt_logprobs:
                    values = np.full(len(prompt), np.nan, dtype=np.float32)
                    chosen = logp.gather(-1, torch.tensor(prompt[1:], device=device)[:, None]).squeeze(-1)
                    values[1:] = chosen.cpu().numpy()
                    values[:first] = np.nan
                    result.prompt_logprobs = values
                if topk_prompt:
                    top = logp.topk(min(topk_prompt, vocab), dim=-1)
                    ids = np.zeros((len(prompt), topk_prompt), dtype=np.int32)
                    lps = np.full((len(prompt), topk_prompt), -99999.0, dtype=np.float32)  # the SDK's empty mark
                    ids[1:, : top.indices.shape[1]] = top.indices.cpu().numpy()
                    lps[1:, : top.values.shape[1]] = top.values.cpu().numpy()
                    ids[:first], lps[:first] = 0, -99999.0
                    result.topk_prompt = (ids, lps)
        return result

    def _generate_within_budget(self, model: Any, tok: Any, prompt: list[int], n: int, params: SampleParams,
                                max_new: int, topk_sample: int) -> list[Sequence]:
        """n samples, in as many generate calls as the memory budget needs. Greedy (temperature 0) decoding gives
        every sample the same tokens: it is done once and repeated (HF refuses several greedy sequences)."""
        if params.temperature == 0:
            one = self._generate(model, tok, prompt, 1, params, max_new, topk_sample)
            return [one[0]] * n
        per_sample = sample_bytes(model.config, len(prompt) + max_new, max_new,
                                  int(model.get_input_embeddings().weight.shape[0]))
        room = self.budget.room()
        if per_sample + FIXED > room:
            raise MemoryBudgetError(
                f"one sample of {max_new} new tokens after a {len(prompt)}-token prompt needs about "
                f"{per_sample / GiB:.2f} GB and {max(0, room) / GiB:.2f} GB of the service's memory budget are free; "
                "ask for fewer max_tokens or start the service with a larger --memory-budget")
        chunk = max(1, min(n, int((room - FIXED) // per_sample)))
        out: list[Sequence] = []
        while len(out) < n:
            out += self._generate(model, tok, prompt, min(chunk, n - len(out)), params, max_new, topk_sample)
            release_freed_memory()
        return out

    def _generate(self, model: Any, tok: Any, prompt: list[int], n: int, params: SampleParams, max_new: int,
                  topk_sample: int) -> list[Sequence]:
        import torch

        from twinkle_trainer.samplers import finished_at

        device = next(model.parameters()).device
        stop_ids: list[int] = []
        stop_strings: list[str] = []
        stop = params.stop
        if stop is None:
            eos = model.generation_config.eos_token_id if model.generation_config is not None else None
            eos = eos if eos is not None else tok.eos_token_id
            stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
        elif isinstance(stop, str):
            stop_strings = [stop]
        elif all(isinstance(s, int) for s in stop):
            stop_ids = [int(s) for s in stop]
        else:
            stop_strings = [str(s) for s in stop]
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new, do_sample=not greedy, num_return_sequences=n,
                                      return_dict_in_generate=True, output_logits=True,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                                      eos_token_id=stop_ids or None)
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k if params.top_k > 0 else None)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tok)
        if not stop_ids and not stop_strings and model.generation_config is not None:
            kwargs["generation_config"] = model.generation_config.__class__.from_dict(
                {**model.generation_config.to_dict(), "eos_token_id": None})
        ids = torch.tensor([prompt], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out.sequences[:, len(prompt):]
        steps = torch.stack(out.logits, dim=1).float() if out.logits else None  # [n, steps, vocab], raw logits
        sequences = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            end = None
            for j, t in enumerate(tokens, 1):
                if t in stop_ids:
                    end = j
                    break
            if stop_strings:
                at = finished_at(tokens[: end or len(tokens)], _NoEos(tok), stop_strings)
                end = at if at is not None else end
            kept = tokens if end is None else tokens[:end]
            logprobs = None
            topk = None
            if steps is not None and kept:
                lp = torch.log_softmax(steps[row, : len(kept)], dim=-1)
                logprobs = lp.gather(-1, torch.tensor(kept, device=lp.device)[:, None]).squeeze(-1).tolist()
                if topk_sample:
                    top = lp.topk(topk_sample, dim=-1)
                    topk = (top.indices.cpu().numpy().astype(np.int32), top.values.cpu().numpy())
            sequences.append(Sequence(kept, logprobs, stop=end is not None, topk=topk))
        return sequences


class _NoEos:
    """A tokenizer view for finished_at that knows only stop strings (token stops are found before)."""

    eos_token_id = -1

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def decode(self, tokens: list[int], **kw: Any) -> str:
        return str(self.tok.decode(tokens, **kw))


# ---------------------------------------------------------------------- vLLM (GPU): the tinker semantics
def vllm_sampling_kwargs(params: SampleParams, n: int, max_new: int, eos: list[int], topk_sample: int,
                         prompt_k: int) -> dict[str, Any]:
    """vllm.SamplingParams arguments with the tinker semantics of the HF path: stop None = the model's end tokens;
    a list of strings or token ids = only those (the end token does not stop then); [] = nothing but max_tokens. A
    stop string stays in the output, as the HF path keeps the token that completed it. logprobs are of the raw
    distribution (vLLM's default logprobs mode), as the trainer computes them."""
    kw: dict[str, Any] = {"n": n, "max_tokens": max_new, "temperature": params.temperature,
                          "top_p": params.top_p, "top_k": params.top_k if params.top_k > 0 else -1,
                          "seed": params.seed, "logprobs": max(topk_sample, 0),
                          "prompt_logprobs": prompt_k if prompt_k > 0 else None, "detokenize": True}
    stop = params.stop
    if stop is None:
        kw["stop_token_ids"] = list(eos)
    elif isinstance(stop, str):
        kw.update(stop=[stop], ignore_eos=True, include_stop_str_in_output=True)
    elif stop and all(isinstance(s, int) for s in stop):
        kw.update(stop_token_ids=[int(s) for s in stop], ignore_eos=True)
    elif stop:
        kw.update(stop=[str(s) for s in stop], ignore_eos=True, include_stop_str_in_output=True)
    else:
        kw["ignore_eos"] = True
    return kw


def topk_table(per_position: list[Any], k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n, k], logprobs [n, k]): the k most likely of each position's {token id: Logprob}, from `first` on
    (vLLM adds the sampled token to its k: it may fall outside). Empty slots hold the SDK's empty mark."""
    ids = np.zeros((len(per_position), k), dtype=np.int32)
    lps = np.full((len(per_position), k), -99999.0, dtype=np.float32)
    for row in range(first, len(per_position)):
        if per_position[row]:
            ordered = sorted(per_position[row].items(), key=lambda kv: -logprob_of(kv[1]))[:k]
            ids[row, : len(ordered)] = [int(t) for t, _ in ordered]
            lps[row, : len(ordered)] = [logprob_of(v) for _, v in ordered]
    return ids, lps


def vllm_sequences(outputs: list[Any], topk_sample: int) -> list[Sequence]:
    """Sequences from one RequestOutput's CompletionOutputs (token_ids, logprobs, finish_reason)."""
    sequences = []
    for c in outputs:
        tokens = [int(t) for t in c.token_ids]
        per_position = c.logprobs or []
        logprobs = sampled_logprobs(tokens, per_position)
        topk = None
        if topk_sample and tokens and len(per_position) == len(tokens):
            topk = topk_table(per_position, topk_sample)
        sequences.append(Sequence(tokens, logprobs, stop=c.finish_reason == "stop", topk=topk))
    return sequences


def vllm_prompt_logprobs(prompt: list[int], per_position: list[Any] | None, last_n: int | None,
                         want_values: bool, topk_prompt: int) -> tuple[np.ndarray | None, Any]:
    """The prompt's log-probabilities (NaN where none: the first token, and before the last_n asked for) and its
    top-k, from RequestOutput.prompt_logprobs (None, then one {token id: Logprob} per position)."""
    first = 1 if last_n is None else len(prompt) - last_n
    per_position = per_position or [None] * len(prompt)
    values = None
    if want_values:
        values = np.full(len(prompt), np.nan, dtype=np.float32)
        for i in range(max(1, first), len(prompt)):
            options = per_position[i]
            if options and prompt[i] in options:
                values[i] = logprob_of(options[prompt[i]])
    topk = topk_table(per_position, topk_prompt, max(1, first)) if topk_prompt else None
    return values, topk


class ServiceVLLM:
    """The shared vLLM engine (twinkle_trainer.samplers.VLLMEngine) for one base model on the service's GPU, taking each
    saved checkpoint's adapter, with the tinker semantics of the HF path."""

    def __init__(self, base_model: str, model_dir: Path, gpu_memory_utilization: float, max_adapters: int) -> None:
        import json

        import torch
        from transformers import AutoTokenizer

        self.base_model = base_model
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((model_dir / "config.json").read_text())
        self.max_len = min(int(config.get("max_position_embeddings") or 4096), 8192)
        eos = config.get("eos_token_id", tokenizer.eos_token_id)
        self.eos = [eos] if isinstance(eos, int) else [int(e) for e in eos or []]
        self.engine = VLLMEngine({"model": str(model_dir), "enable_lora": True,
                                  "max_lora_rank": vllm_lora_rank(MAX_RANK), "max_loras": 1,
                                  "max_cpu_loras": max_adapters, "gpu_memory_utilization": gpu_memory_utilization,
                                  "dtype": "bfloat16" if torch.cuda.is_bf16_supported() else "float16", "seed": 0,
                                  "max_model_len": self.max_len})

    def sample(self, folder: Path | None, prompt: list[int], num_samples: int, params: SampleParams,
               prompt_logprobs: bool, topk_prompt: int, topk_sample: int, last_n: int | None) -> SampleResult:
        room = self.max_len - len(prompt)
        if room < 1:
            raise EngineError(f"the prompt has {len(prompt)} tokens; {self.base_model} takes at most {self.max_len}")
        prompt_k = max(topk_prompt, 1 if prompt_logprobs else 0)
        kw = vllm_sampling_kwargs(params, num_samples, min(room, params.max_tokens or room), self.eos, topk_sample,
                                  prompt_k)
        (out,) = self.engine.generate([prompt], kw, folder)
        values, topk = vllm_prompt_logprobs(prompt, out.prompt_logprobs, last_n, prompt_logprobs, topk_prompt)
        return SampleResult(vllm_sequences(out.outputs, topk_sample), values, topk)
