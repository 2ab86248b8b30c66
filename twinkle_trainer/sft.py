"""Supervised fine-tuning: loss only on completion tokens, gradient accumulation over micro-batches."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from twinkle_trainer.dataset import DataError, DataOrder, collate, tokenize_sft

if TYPE_CHECKING:
    from twinkle_trainer.loop import Trainer

LOG_EVERY = 5  # a line in the run's log every few steps, so the log panel shows progress too


def completion_loss_sum(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Sum of next-token cross-entropy over completion tokens, and how many there were."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Shift the labels, not the logits: slicing logits would copy a (batch x length x vocab) tensor every step.
    labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return loss, int((labels != -100).sum())


def train_sft(t: Trainer) -> None:
    import torch

    a = t.args
    records = t.records()
    tokenized = [tokenize_sft(r, t.tokenizer, a.template.max_length, a.template.truncation_strategy,
                             a.template.enable_thinking) for r in records]
    examples = [e for e in tokenized if e is not None]  # truncation_strategy=delete drops long ones
    if not examples:
        raise DataError("every example was dropped by truncation; raise max_length")
    order = DataOrder(len(examples), a.training.seed, a.dataset.shuffle)
    world, rank = t.accelerator.num_processes, t.accelerator.process_index
    if a.training.batch_size % world:
        raise DataError(f"batch_size {a.training.batch_size} must be a multiple of the {world} processes")
    micro = min(a.training.micro_batch_size, a.training.batch_size // world)
    device = t.accelerator.device
    t.model.train()
    t.log(f"SFT on {len(examples)} examples, batch {a.training.batch_size} ({micro} per forward x {world} process(es))")
    while t.step < a.training.max_steps:
        started = time.perf_counter()
        indices = list(order.take(t.data_position, a.training.batch_size))[rank::world]
        batch_examples = [examples[i] for i in indices]
        tokens = sum(sum(x != -100 for x in e.labels[1:]) for e in batch_examples)
        loss_sum = torch.zeros((), device=device)
        for k in range(0, len(batch_examples), micro):
            batch = {key: v.to(device) for key, v in collate(batch_examples[k : k + micro], t.tokenizer.pad_token_id).items()}
            last = k + micro >= len(batch_examples)
            # Under DDP, gradients are averaged across processes once per step, on the last micro-batch.
            with contextlib.nullcontext() if world == 1 or last else t.accelerator.no_sync(t.model):
                loss, _ = completion_loss_sum(t.model, batch)
                t.accelerator.backward(loss / max(tokens, 1))  # the step's loss is the mean over all its tokens
            loss_sum += loss.detach()
        grad_norm = t.optimizer_step()
        t.step += 1
        t.data_position += a.training.batch_size
        totals = torch.tensor([float(loss_sum), float(tokens)], device=device)
        if world > 1:
            totals = t.accelerator.reduce(totals, reduction="sum")
        elapsed = time.perf_counter() - started
        loss_value = float(totals[0]) / max(float(totals[1]), 1.0)
        if t.step == 1 or t.step % LOG_EVERY == 0 or t.step == a.training.max_steps:
            t.log(f"step {t.step}/{a.training.max_steps}: loss {loss_value:.4f}, lr {t.lr():.2e}, "
                  f"{float(totals[1]) / elapsed:.0f} tokens/s")
        if t.runtime is not None and t.step % a.training.logging_steps == 0:
            t.runtime.log_metrics(step=t.step, loss=loss_value, grad_norm=grad_norm,
                                  **{"learning rate": t.lr(), "tokens/s": float(totals[1]) / elapsed,
                                     "epoch": order.epoch(t.data_position)})
        if t.end_of_step():
            return
