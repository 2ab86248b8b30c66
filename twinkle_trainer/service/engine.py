"""What the service computes: LoRA training models (forward_backward, optim_step, save and load) and samplers
(HF generate with the newest saved adapter; vLLM on a GPU when it is installed). Torch lives here.

Every call runs on the service's one worker thread (state.py), so nothing here is shared between threads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinkle_trainer.samplers import logprob_of, sampled_logprobs
from twinkle_trainer.service import losses
from twinkle_trainer.service.wire import Datum, Sequence

MAX_RANK = 32
LORA_ALPHA = 32  # the scale is alpha / rank, so a larger rank does not train faster by itself
MICRO_BATCH_TOKENS = 4096  # padded tokens per forward pass


class EngineError(ValueError):
    """A request this service refuses or cannot serve; the text is one sentence for the client."""


@dataclass
class LoraSpec:
    rank: int
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True

    def check(self) -> None:
        if not 1 <= self.rank <= MAX_RANK:
            raise EngineError(f"LoRA rank {self.rank} is not supported: this service trains ranks 1 to {MAX_RANK}")
        if not (self.train_unembed or self.train_mlp or self.train_attn):
            raise EngineError("the LoRA config trains nothing: set at least one of train_attn, train_mlp, "
                              "train_unembed")


def lora_targets(model: Any, spec: LoraSpec) -> list[str]:
    """Full names of the linear layers the spec adapts: attention, MLP (MoE experts included), the unembedding."""
    import torch

    output = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is output:
            if spec.train_unembed:
                names.append(name)
        elif ".mlp." in f".{name}." or ".experts." in name:
            if spec.train_mlp:
                names.append(name)
        elif "attn" in name or "attention" in name:
            if spec.train_attn:
                names.append(name)
    if not names:
        raise EngineError("this model has no linear layers of the kinds the LoRA config trains")
    return names


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class StepTotals:
    """What the forward_backward calls since the last optimizer step added up to (for the run's metrics)."""

    loss: float = 0.0
    weight: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    calls: int = 0


@dataclass
class CheckpointInfo:
    base_model: str
    lora: dict[str, Any]
    step: int
    kind: str  # "training" (adapter + optimizer) or "sampler" (adapter only)
    created: float
    expires_at: float | None = None
    user_metadata: dict[str, str] | None = None
    optimizer: bool = False

    @classmethod
    def read(cls, folder: Path) -> CheckpointInfo:
        try:
            raw = json.loads((folder / "tinker.json").read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise EngineError(f"{folder} is not a checkpoint of this service ({exc})") from None


class TrainingModel:
    """One training client's LoRA on its own copy of the base model, with an AdamW optimizer made at the first
    optim_step. Gradients accumulate over forward_backward calls until optim_step, as in tinker."""

    def __init__(self, base_model: str, spec: LoraSpec) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from twinkle_trainer.models import ModelError, load_model_and_tokenizer

        spec.check()
        try:
            model, self.tokenizer, self.model_dir = load_model_and_tokenizer(base_model)
        except ModelError as exc:
            raise EngineError(str(exc)) from None
        self.base_model, self.spec = base_model, spec
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        config = LoraConfig(r=spec.rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                            target_modules=lora_targets(model, spec), bias="none")
        self.device = _device()
        self.model = get_peft_model(model, config).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer: Any = None
        self.step = 0
        self.totals = StepTotals()
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    # ------------------------------------------------------------------ forward / backward
    def forward_backward(self, data: list[Datum], spec: losses.LossSpec,
                         forward_only: bool) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        import torch

        from twinkle_trainer.grpo import gathered_logprobs

        vocab = self.model.get_input_embeddings().weight.shape[0]
        for i, d in enumerate(data):
            if self.max_length and len(d.tokens) > self.max_length:
                raise EngineError(f"datum {i} has {len(d.tokens)} tokens; {self.base_model} takes at most "
                                  f"{self.max_length}")
            every = np.concatenate([d.tokens, np.asarray(d.inputs["target_tokens"], dtype=np.int64)])
            if every.min() < 0 or every.max() >= vocab:
                raise EngineError(f"datum {i} has a token id outside the vocabulary (0 to {vocab - 1})")
        started = time.perf_counter()
        outputs: list[dict[str, np.ndarray]] = [{} for _ in data]
        total = 0.0
        order = sorted(range(len(data)), key=lambda i: len(data[i].tokens))
        batches: list[list[int]] = [[]]
        for i in order:  # similar lengths together: less padding
            width = max([len(data[j].tokens) for j in batches[-1]] + [len(data[i].tokens)])
            if batches[-1] and width * (len(batches[-1]) + 1) > MICRO_BATCH_TOKENS:
                batches.append([])
            batches[-1].append(i)
        pad = self.tokenizer.pad_token_id or 0
        with torch.set_grad_enabled(not forward_only):
            for batch in batches:
                width = max(len(data[i].tokens) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                targets = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(data[i].tokens)
                    ids[row, :n] = torch.as_tensor(data[i].tokens)
                    targets[row, :n] = torch.as_tensor(np.array(data[i].inputs["target_tokens"], dtype=np.int64))
                    mask[row, :n] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = gathered_logprobs(logits, targets.to(self.device))
                batch_loss = None
                for row, i in enumerate(batch):
                    n = len(data[i].tokens)
                    inputs = {k: torch.as_tensor(np.array(v, dtype=np.float32), device=self.device)
                              for k, v in data[i].inputs.items() if k != "target_tokens"}
                    loss, per_token = losses.loss_terms(spec, logp[row, :n].float(), inputs)
                    batch_loss = loss if batch_loss is None else batch_loss + loss
                    outputs[i] = {"logprobs": logp[row, :n].detach().float().cpu().numpy(),
                                  "elementwise_loss": per_token.detach().float().cpu().numpy()}
                assert batch_loss is not None
                if not forward_only:
                    batch_loss.backward()
                total += float(batch_loss.detach())
        if not forward_only:
            t = self.totals
            t.loss += total
            t.weight += sum(losses.weight_of(spec, d.inputs) for d in data)
            t.tokens += sum(len(d.tokens) for d in data)
            t.seconds += time.perf_counter() - started
            t.calls += 1
        return outputs, {"loss:sum": total}

    # ------------------------------------------------------------------ optimizer
    def optim_step(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                   grad_clip_norm: float) -> dict[str, float]:
        import torch

        if not (lr >= 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1 and eps > 0 and weight_decay >= 0):
            raise EngineError("Adam parameters out of range: learning_rate >= 0, 0 <= beta1, beta2 < 1, eps > 0, "
                              "weight_decay >= 0")
        started = time.perf_counter()
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(beta1, beta2), eps=eps,
                                               weight_decay=weight_decay)
        for group in self.optimizer.param_groups:
            group.update(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
        norm = torch.nn.utils.clip_grad_norm_(self.params, grad_clip_norm if grad_clip_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        t, self.totals = self.totals, StepTotals()
        seconds = t.seconds + time.perf_counter() - started
        metrics = {"grad_norm": float(norm), "learning rate": lr, "step time": seconds,
                   "tokens/s": t.tokens / seconds if seconds > 0 else 0.0, "tokens": float(t.tokens)}
        if t.weight > 0:
            metrics["loss"] = t.loss / t.weight
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: Path, kind: str, with_optimizer: bool, expires_at: float | None,
             user_metadata: dict[str, str] | None) -> None:
        import torch

        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # The base weights never change: a tied unembedding must not drag the embedding matrix into every checkpoint.
        self.model.save_pretrained(str(tmp), save_embedding_layers=False)
        optimizer = with_optimizer and self.optimizer is not None
        if optimizer:
            torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step}, tmp / "optimizer.pt")
        info = CheckpointInfo(self.base_model, asdict(self.spec), self.step, kind, time.time(), expires_at,
                              user_metadata, optimizer)
        (tmp / "tinker.json").write_text(json.dumps(asdict(info)))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    def load(self, folder: Path, with_optimizer: bool) -> CheckpointInfo:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        info = CheckpointInfo.read(folder)
        if info.base_model != self.base_model:
            raise EngineError(f"the checkpoint is of {info.base_model}; this model is {self.base_model}")
        if info.lora.get("rank") != self.spec.rank:
            raise EngineError(f"the checkpoint has LoRA rank {info.lora.get('rank')}; this model has {self.spec.rank}")
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise EngineError(f"{folder} has no adapter weights")
        result: Any = set_peft_model_state_dict(self.model, load_file(str(weights), device=str(self.device)))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise EngineError(f"the checkpoint's adapter does not fit this model ({len(unexpected)} unexpected "
                              "tensors)")
        if with_optimizer:
            if not info.optimizer:
                raise EngineError("this checkpoint has no optimizer state (it was saved for sampling or without "
                                  "the optimizer); load it without the optimizer")
            state = torch.load(folder / "optimizer.pt", map_location=self.device)
            self.optimizer = torch.optim.AdamW(self.params)
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state.get("step", info.step))
        else:
            self.optimizer = None
        self.model.zero_grad(set_to_none=True)
        self.totals = StepTotals()
        return info

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.optimizer = None
        self.params = []


# ---------------------------------------------------------------------- sampling
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

    def __init__(self, kind: str = "hf", gpu_memory_utilization: float = 0.3) -> None:
        self.bases: dict[str, _Base] = {}
        self.kind = kind
        self.gpu_memory_utilization = gpu_memory_utilization
        self.vllm: VLLMEngine | None = None

    def _base(self, base_model: str) -> _Base:
        from twinkle_trainer.models import ModelError, load_model_and_tokenizer

        if base_model not in self.bases:
            try:
                model, tokenizer, _ = load_model_and_tokenizer(base_model)
            except ModelError as exc:
                raise EngineError(str(exc)) from None
            self.bases[base_model] = _Base(model.to(_device()).eval(), tokenizer)
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
                self.vllm = VLLMEngine(base_model, self.tokenizer_dir(base_model), self.gpu_memory_utilization,
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
            result = SampleResult(self._generate(model, tok, prompt, num_samples, params, min(room, params.max_tokens
                                                                                                or room), topk_sample))
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


# ---------------------------------------------------------------------- vLLM (GPU)
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


class VLLMEngine:
    """One vLLM engine for one base model, on the service's GPU, taking each saved adapter as a LoRARequest (an
    adapter file rewritten under the same name is a new version: a new request id, never a stale cached one)."""

    def __init__(self, base_model: str, model_dir: Path, gpu_memory_utilization: float, max_adapters: int) -> None:
        import torch
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        self.base_model = base_model
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((model_dir / "config.json").read_text())
        self.max_len = int(config.get("max_position_embeddings") or 4096)
        eos = config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos = [eos] if isinstance(eos, int) else [int(e) for e in eos or []]
        torch.cuda.empty_cache()  # what the training models' cache holds, the engine cannot take
        self.llm = LLM(model=str(model_dir), enable_lora=True, max_lora_rank=MAX_RANK, max_loras=1,
                       max_cpu_loras=max_adapters, gpu_memory_utilization=gpu_memory_utilization,
                       dtype="bfloat16" if torch.cuda.is_bf16_supported() else "float16", seed=0,
                       max_model_len=min(self.max_len, 8192))
        self.ids: dict[tuple[str, int], int] = {}

    def _request(self, folder: Path | None) -> Any:
        if folder is None:
            return None
        key = (str(folder), (folder / "adapter_model.safetensors").stat().st_mtime_ns)
        if key not in self.ids:
            self.ids[key] = len(self.ids) + 1
        return self._LoRARequest(f"tinker-{self.ids[key]}", self.ids[key], str(folder))

    def sample(self, folder: Path | None, prompt: list[int], num_samples: int, params: SampleParams,
               prompt_logprobs: bool, topk_prompt: int, topk_sample: int, last_n: int | None) -> SampleResult:
        room = min(self.max_len, 8192) - len(prompt)
        if room < 1:
            raise EngineError(f"the prompt has {len(prompt)} tokens; {self.base_model} takes at most "
                              f"{min(self.max_len, 8192)}")
        prompt_k = max(topk_prompt, 1 if prompt_logprobs else 0)
        kw = vllm_sampling_kwargs(params, num_samples, min(room, params.max_tokens or room), self.eos, topk_sample,
                                  prompt_k)
        (out,) = self.llm.generate([{"prompt_token_ids": prompt}], self._SamplingParams(**kw),
                                   lora_request=self._request(folder), use_tqdm=False)
        values, topk = vllm_prompt_logprobs(prompt, out.prompt_logprobs, last_n, prompt_logprobs, topk_prompt)
        return SampleResult(vllm_sequences(out.outputs, topk_sample), values, topk)
