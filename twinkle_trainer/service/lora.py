"""The LoRA trainer behind a training client: its own copy of the base model with a LoRA adapter, forward_backward
and optim_step as tinker defines them, and save/load of its state. Torch lives here.

Every call runs on the service's one worker thread (futures.Worker), so nothing here is shared between threads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinkle_trainer.service import losses
from twinkle_trainer.service.errors import EngineError
from twinkle_trainer.service.memory import MemoryBudget, ModelShape, release_freed_memory
from twinkle_trainer.service.wire import Datum

MAX_RANK = 256  # tinker recipes use up to 128 (on-policy distillation); vLLM takes up to 512
LORA_ALPHA = 32  # the scale is alpha / rank, so a larger rank does not train faster by itself
MICRO_BATCH_TOKENS = 4096  # padded tokens per forward pass


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


def stored_parameters(model_dir: Path) -> int:
    """About how many parameters a model folder holds (from its weight files: fp32 or half precision)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    width = 2 if str(config.get("torch_dtype") or config.get("dtype") or "") in ("float16", "bfloat16") else 4
    size = sum(f.stat().st_size for f in model_dir.iterdir() if f.suffix in (".safetensors", ".bin"))
    return size // width


def device() -> Any:
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
    surrogate: bool = False  # the step's gradients came from forward_backward_custom's linear surrogate


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


class LoraTrainer:
    """One training client's LoRA on its own copy of the base model, with an AdamW optimizer made at the first
    optim_step. Gradients accumulate over forward_backward calls until optim_step, as in tinker."""

    def __init__(self, base_model: str, spec: LoraSpec, budget: MemoryBudget | None = None) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from twinkle_trainer.models import ModelError, load_model_and_tokenizer, resolve_model_dir

        spec.check()
        self.budget = budget or MemoryBudget(None)
        try:
            self.budget.check_model(stored_parameters(resolve_model_dir(base_model)), f"a training copy of {base_model}")
            model, self.tokenizer, self.model_dir = load_model_and_tokenizer(base_model)
        except ModelError as exc:
            raise EngineError(str(exc)) from None
        self.base_model, self.spec = base_model, spec
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        config = LoraConfig(r=spec.rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                            target_modules=lora_targets(model, spec), bias="none")
        self.device = device()
        self.model = get_peft_model(model, config).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer: Any = None
        self.step = 0
        self.totals = StepTotals()
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.shape = ModelShape.of(model.config, int(model.get_input_embeddings().weight.shape[0]))

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
        cap = MICRO_BATCH_TOKENS if self.device.type == "cuda" else None  # the budget is of host memory
        plan = self.budget.plan([len(d.tokens) for d in data], self.shape, not forward_only, cap)
        batches = plan.batches
        if plan.checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
                del logits, logp, batch_loss
        if plan.checkpointing:
            self.model.gradient_checkpointing_disable()
        release_freed_memory()
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
        if t.surrogate:  # -sum(grad * logp): a gradient carrier, not a loss; the recipe logs its own loss
            metrics["custom loss surrogate"] = t.loss
        elif t.weight > 0:
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
