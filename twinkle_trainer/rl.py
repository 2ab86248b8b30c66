"""What the RL loops (GRPO and on-policy distillation) share around their losses: this rank's prompts and their
sampled completions, padded prompt+completion batches, the end of a step (sampler sync, step and data position),
and the step's metrics averaged over the processes."""

from __future__ import annotations

from typing import Any

from twinkle_trainer.clock import running_time
from twinkle_trainer.dataset import DataOrder, prompt_ids
from twinkle_trainer.loop import Trainer


def sample_prompts(t: Trainer, records: list[dict[str, Any]], order: DataOrder, sampler: Any,
                   n: int) -> tuple[list[dict[str, Any]], list[list[int]], list[Any], float]:
    """This rank's share of the step's prompts, n completions of each, and the seconds generation took."""
    a, world, rank = t.args, t.accelerator.num_processes, t.accelerator.process_index
    picked = [records[i] for i in list(order.take(t.data_position, a.training.batch_size))[rank::world]]
    prompts = [prompt_ids(r, t.tokenizer, a.template.max_length, a.template.enable_thinking) for r in picked]
    started = running_time()
    completions = sampler.generate(prompts, n)
    return picked, prompts, completions, running_time() - started


def advance(t: Trainer, sampler: Any) -> float:
    """After the optimizer step: the sampler gets the new weights and the step and data position move on. Returns
    the seconds the sync took."""
    started = running_time()
    sampler.sync(t.accelerator.unwrap_model(t.model))
    t.step += 1
    t.data_position += t.args.training.batch_size
    return running_time() - started


def record_step(t: Trainer, metrics: dict[str, float]) -> dict[str, float]:
    """The step's metrics averaged over the processes, written by rank 0 every logging_steps; returns them."""
    import torch

    if t.accelerator.num_processes > 1:
        keys = list(metrics)
        vec = t.accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=t.accelerator.device),
                                   reduction="mean")
        metrics = dict(zip(keys, vec.tolist(), strict=True))
    if t.runtime is not None and t.step % t.args.training.logging_steps == 0:
        t.runtime.log_metrics(step=t.step, **metrics)
    return metrics


def padded_batch(prompts: list[list[int]], completions: list[Any], pad_id: int, device: Any,
                 mask_dtype: Any = None) -> tuple[Any, Any, Any]:
    """Prompt + completion rows, right-padded: token ids, attention mask, and which next-token positions are
    completion tokens (width - 1 columns; the loss is taken there only)."""
    import torch

    seqs = [prompts[c.prompt_index] + c.token_ids for c in completions]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros((len(seqs), width - 1), dtype=mask_dtype or torch.float32)
    for row, (c, s) in enumerate(zip(completions, seqs, strict=True)):
        ids[row, : len(s)] = torch.tensor(s)
        attn[row, : len(s)] = 1
        comp[row, len(prompts[c.prompt_index]) - 1 : len(s) - 1] = 1
    return ids.to(device), attn.to(device), comp.to(device)
