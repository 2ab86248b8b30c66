"""Supervised fine-tuning: loss only on completion tokens, gradient accumulation over forwards.

With packing (the default), the examples of a step are packed whole into rows without padding, one row per forward:
positions restart at every example, so attention stays inside it (a block-diagonal mask on CPU, variable-length
kernels with flash-attention on a GPU), and logits are computed only where a completion token is predicted. The
step's loss is the mean over its completion tokens either way: packing changes the speed, not what is learned.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twinkle_trainer.clock import running_time
from twinkle_trainer.dataset import DataError, DataOrder, Example, collate, collate_packed, pack_rows, tokenize_sft
from twinkle_trainer.packed_attention import packed_attention_in

if TYPE_CHECKING:
    from twinkle_trainer.loop import Trainer

LOG_EVERY = 5  # a line in the run's log every few steps, so the log panel shows progress too
CPU_PACK_LENGTH = 1024  # rows under a dense mask on CPU: its cost grows with the row's length squared


@dataclass(frozen=True)
class Batching:
    """How a step's examples become forwards: packed rows of up to `pack_length` tokens, or padded micro-batches of
    `micro` examples when pack_length is 0."""

    pack_length: int
    micro: int
    pad_id: int
    logits_where_needed: bool = False  # the model takes logits_to_keep: no logits for prompt positions

    def forwards(self, examples: list[Example]) -> list[dict[str, Any]]:
        if not self.pack_length:
            return [collate(examples[k : k + self.micro], self.pad_id) for k in range(0, len(examples), self.micro)]
        rows = pack_rows([len(e.input_ids) for e in examples], self.pack_length)
        batches = [collate_packed([examples[i] for i in sorted(row)]) for row in rows]
        if self.logits_where_needed:
            for b in batches:
                b["logits_to_keep"] = (b["labels"][0, 1:] != -100).nonzero().flatten()
        return batches

    def describe(self) -> str:
        if self.pack_length:
            return f"packed rows of up to {self.pack_length} tokens, one per forward"
        return f"{self.micro} per forward, padded"


def forward_arguments(model: Any) -> set[str]:
    """The keyword arguments the underlying model's forward takes (through PEFT and accelerate wrappers)."""
    inner = getattr(model, "module", model)  # under DDP, the wrapped model
    if hasattr(inner, "get_base_model"):  # PEFT: the transformers model inside
        inner = inner.get_base_model()
    return set(inspect.signature(inner.forward).parameters)


def choose_batching(t: Trainer, micro: int, per_example_attention: bool) -> Batching:
    """Packing as configured, where the model can take it (position_ids); otherwise padded micro-batches. A row
    holds what a padded micro-batch could (micro x max_length tokens), unless attention over it is a dense mask on
    a CPU: then rows stay short."""
    a = t.args.template
    pad_id = t.tokenizer.pad_token_id
    accepted = forward_arguments(t.model)
    if not a.packing or "position_ids" not in accepted:
        if a.packing:
            t.log("note: this model's forward takes no position_ids; SFT pads micro-batches instead of packing")
        return Batching(0, micro, pad_id)
    length = a.pack_length or micro * a.max_length
    if not a.pack_length and not per_example_attention and t.accelerator.device.type == "cpu":
        length = max(a.max_length, min(length, CPU_PACK_LENGTH))
    return Batching(length, micro, pad_id, logits_where_needed="logits_to_keep" in accepted)


def completion_loss_sum(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Sum of next-token cross-entropy over completion tokens, and how many there were."""
    import torch.nn.functional as F

    # Shift the labels, not the logits: slicing logits would copy a (batch x length x vocab) tensor every step.
    labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    # No KV cache: with one, transformers would not read packed rows from the positions (nor does training need it).
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:  # a packed row: the restarting positions keep attention inside each example
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    keep = batch.get("logits_to_keep")
    if keep is not None:  # logits only where a completion token is predicted
        inputs["logits_to_keep"] = keep
        labels = labels[:, keep]
    logits = model(**inputs).logits
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return loss, int((labels != -100).sum())


@dataclass
class StepResult:
    loss_sum: float
    loss_tokens: int  # completion tokens the loss is the mean over
    tokens: int  # every non-padding token of the step's examples
    grad_norm: float


def sft_step(t: Trainer, examples: list[Example], batching: Batching) -> StepResult:
    """One optimizer step on this process's examples: forwards with gradient accumulation, then clip and step."""
    import torch

    world = t.accelerator.num_processes
    device = t.accelerator.device
    loss_tokens = sum(sum(x != -100 for x in e.labels[1:]) for e in examples)
    loss_sum = torch.zeros((), device=device)
    forwards = batching.forwards(examples)
    for k, cpu_batch in enumerate(forwards):
        batch = {key: v.to(device) for key, v in cpu_batch.items()}
        last = k == len(forwards) - 1
        # Under DDP, gradients are averaged across processes once per step, on the last forward.
        with contextlib.nullcontext() if world == 1 or last else t.accelerator.no_sync(t.model):
            loss, _ = completion_loss_sum(t.model, batch)
            t.accelerator.backward(loss / max(loss_tokens, 1))  # the step's loss is the mean over all its tokens
        loss_sum += loss.detach()
    grad_norm = t.optimizer_step()
    return StepResult(float(loss_sum), loss_tokens, sum(len(e.input_ids) for e in examples), grad_norm)


def train_sft(t: Trainer) -> None:
    a = t.args
    records = t.records()
    tokenized = [tokenize_sft(r, t.tokenizer, a.template.max_length, a.template.truncation_strategy,
                             a.template.enable_thinking) for r in records]
    examples = [e for e in tokenized if e is not None]  # truncation_strategy=delete drops long ones
    if not examples:
        raise DataError("every example was dropped by truncation; raise max_length")
    order = DataOrder(len(examples), a.training.seed, a.dataset.shuffle)
    world = t.accelerator.num_processes
    if a.training.batch_size % world:
        raise DataError(f"batch_size {a.training.batch_size} must be a multiple of the {world} processes")
    # The model's config (its attention implementation included) is never saved by a LoRA or full checkpoint as
    # this one: transformers leaves the implementation out of config.json.
    with packed_attention_in(t.model) if a.template.packing else contextlib.nullcontext(False) as per_example:
        batching = choose_batching(t, min(a.training.micro_batch_size, a.training.batch_size // world), per_example)
        t.model.train()
        t.log(f"SFT on {len(examples)} examples, batch {a.training.batch_size} ({batching.describe()}"
              f"{', attention example by example' if per_example and batching.pack_length else ''} x {world} "
              f"process(es))")
        _loop(t, examples, order, batching)


def _loop(t: Trainer, examples: list[Example], order: DataOrder, batching: Batching) -> None:
    import torch

    a = t.args
    world, rank = t.accelerator.num_processes, t.accelerator.process_index
    device = t.accelerator.device
    while t.step < a.training.max_steps:
        started = running_time()
        indices = list(order.take(t.data_position, a.training.batch_size))[rank::world]
        result = sft_step(t, [examples[i] for i in indices], batching)
        t.step += 1
        t.data_position += a.training.batch_size
        totals = torch.tensor([result.loss_sum, float(result.loss_tokens), float(result.tokens)], device=device)
        if world > 1:
            totals = t.accelerator.reduce(totals, reduction="sum")
        elapsed = running_time() - started
        loss_value = float(totals[0]) / max(float(totals[1]), 1.0)
        tokens_per_second = float(totals[2]) / elapsed  # real tokens only: padding is never counted
        if t.step == 1 or t.step % LOG_EVERY == 0 or t.step == a.training.max_steps:
            t.log(f"step {t.step}/{a.training.max_steps}: loss {loss_value:.4f}, lr {t.lr():.2e}, "
                  f"{tokens_per_second:.0f} tokens/s")
        if t.runtime is not None and t.step % a.training.logging_steps == 0:
            t.runtime.log_metrics(step=t.step, loss=loss_value, grad_norm=result.grad_norm,
                                  **{"learning rate": t.lr(), "tokens/s": tokens_per_second,
                                     "epoch": order.epoch(t.data_position)})
        if t.end_of_step():
            return
