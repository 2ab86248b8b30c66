"""GRPO (and RLOO advantages): group sampling, rewards, clipped policy loss, KL to the base model through the
disabled adapter (no second model copy), entropy, and the time split of every step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trainer import rewards as reward_lib
from trainer.dataset import DataOrder, prompt_ids
from trainer.samplers import make_sampler

if TYPE_CHECKING:
    from trainer.train import Trainer


def group_advantages(scores: list[float], group: int, kind: str, scale: bool) -> tuple[list[float], float]:
    """Per-completion advantages and the fraction of groups whose rewards were all equal (no signal)."""
    import statistics

    adv, flat_groups = [], 0
    for g in range(0, len(scores), group):
        chunk = scores[g : g + group]
        mean = sum(chunk) / len(chunk)
        std = statistics.pstdev(chunk) if len(chunk) > 1 else 0.0
        if std == 0:
            flat_groups += 1
        for r in chunk:
            if kind == "rloo":  # leave-one-out baseline: the mean of the other completions
                a = (r - (sum(chunk) - r) / (len(chunk) - 1)) if len(chunk) > 1 else 0.0
            else:
                a = r - mean
            if scale and kind == "grpo":
                a = a / (std + 1e-4)
            adv.append(a)
    return adv, flat_groups / max(1, len(scores) // group)


def best_completions(scores: list[float], group: int) -> set[int]:
    """The index of the best completion of each group whose rewards differ (a tie teaches nothing)."""
    out = set()
    for g in range(0, len(scores), group):
        chunk = scores[g : g + group]
        if max(chunk) > min(chunk):
            out.add(g + chunk.index(max(chunk)))
    return out


def token_logprobs(model: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
    """Log-probabilities of each next token and the per-position entropy of the model's distribution."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def train_grpo(t: Trainer) -> None:
    import torch

    a = t.args
    records = t.records()
    fns = {name: reward_lib.resolve(name) for name in a.rl.reward_fns}
    order = DataOrder(len(records), a.training.seed, a.dataset.shuffle)
    unwrapped = t.accelerator.unwrap_model(t.model)
    sampler = make_sampler(a.sampler.sampler_type, unwrapped, t.tokenizer, a.sampling, a.sampler, t.model_dir, a.lora)
    sampler.sync(unwrapped)
    world, rank = t.accelerator.num_processes, t.accelerator.process_index
    G = a.rl.num_generations
    device = t.accelerator.device
    eos = t.tokenizer.eos_token_id
    t.log(f"GRPO on {len(records)} prompts: {a.training.batch_size} prompts x {G} generations per step, "
          f"rewards {', '.join(fns)}, sampler {type(sampler).__name__}")
    while t.step < a.training.max_steps:
        started = time.perf_counter()
        picked = [records[i] for i in list(order.take(t.data_position, a.training.batch_size))[rank::world]]
        prompts = [prompt_ids(r, t.tokenizer, a.template.max_length, a.template.enable_thinking) for r in picked]

        t_gen = time.perf_counter()
        completions = sampler.generate(prompts, G)
        t_gen = time.perf_counter() - t_gen

        t_rew = time.perf_counter()
        texts = [t.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        answers = [picked[c.prompt_index].get("answer") for c in completions]
        per_fn = reward_lib.score(fns, texts, answers)
        total = [sum(per_fn[name][i] for name in fns) for i in range(len(completions))]
        advantages, flat_frac = group_advantages(total, G, a.rl.advantage_type, a.rl.scale_rewards)
        t_rew = time.perf_counter() - t_rew

        t_train = time.perf_counter()
        t.model.train()
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "sft_loss": 0.0}
        best = best_completions(total, G) if a.loss.sft_weight > 0 else set()
        n_groups = max(1, len(total) // G)
        micro = max(1, a.training.micro_batch_size) * G
        n_seq = len(completions)
        for k in range(0, n_seq, micro):
            chunk = list(range(k, min(k + micro, n_seq)))
            seqs = [prompts[completions[i].prompt_index] + completions[i].token_ids for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), t.tokenizer.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            comp = torch.zeros((len(seqs), width - 1))  # which next-token positions are completion tokens
            for row, (i, s) in enumerate(zip(chunk, seqs, strict=True)):
                ids[row, : len(s)] = torch.tensor(s)
                attn[row, : len(s)] = 1
                p = len(prompts[completions[i].prompt_index])
                comp[row, p - 1 : len(s) - 1] = 1
            ids, attn, comp = ids.to(device), attn.to(device), comp.to(device)
            adv = torch.tensor([advantages[i] for i in chunk], device=device).unsqueeze(1)
            logp, entropy = token_logprobs(t.model, ids, attn)
            ratio = torch.exp(logp - logp.detach())  # one update per batch: old policy = current, gradient kept
            clipped = torch.clamp(ratio, 1 - a.loss.epsilon, 1 + a.loss.epsilon)
            per_token = -torch.min(ratio * adv, clipped * adv)
            kl = torch.zeros_like(logp)
            if a.loss.beta > 0 and a.lora.use_lora:
                with torch.no_grad(), t.accelerator.unwrap_model(t.model).disable_adapter():
                    ref_logp, _ = token_logprobs(t.model, ids, attn)
                delta = ref_logp - logp
                kl = torch.exp(delta) - delta - 1  # k3 estimator, always >= 0
                per_token = per_token + a.loss.beta * kl
            lengths = comp.sum(1).clamp(min=1)
            seq_loss = (per_token * comp).sum(1) / lengths
            loss = seq_loss.sum() / n_seq
            chosen = [row for row, i in enumerate(chunk) if i in best]
            if chosen:  # an SFT term on each group's best completion (loss.sft_weight)
                nll = -(logp * comp).sum(1) / lengths
                sft = nll[chosen].sum() / n_groups
                loss = loss + a.loss.sft_weight * sft
                sums["sft_loss"] += float(sft.detach())
            t.accelerator.backward(loss)
            sums["loss"] += float(loss.detach())
            sums["kl"] += float(((kl.detach() * comp).sum(1) / lengths).sum()) / n_seq
            sums["entropy"] += float(((entropy * comp).sum(1) / lengths).sum()) / n_seq
        grad_norm = t.optimizer_step()
        t_train = time.perf_counter() - t_train

        t_sync = time.perf_counter()
        sampler.sync(t.accelerator.unwrap_model(t.model))
        t_sync = time.perf_counter() - t_sync
        t.step += 1
        t.data_position += a.training.batch_size

        lengths_list = [len(c.token_ids) for c in completions]
        tokens = sum(lengths_list) + sum(len(p) for p in prompts) * G
        metrics = {
            "loss": sums["loss"], "grad_norm": grad_norm, "learning rate": t.lr(),
            **({"sft_loss": sums["sft_loss"]} if a.loss.sft_weight > 0 else {}),
            "reward": _mean(total), "reward_std": _std(total),
            **{f"reward/{name}": _mean(v) for name, v in per_fn.items()},
            "kl": sums["kl"], "entropy": sums["entropy"],
            "completion_length": _mean(lengths_list),
            "truncation_rate": _mean([float(c.truncated and eos not in c.token_ids) for c in completions]),
            "zero_advantage_groups": flat_frac,
            "tokens/s": tokens / (time.perf_counter() - started),
            "time/generate": t_gen, "time/reward": t_rew, "time/train": t_train, "time/sync": t_sync,
            "adapter_version": sampler.version,
        }
        if world > 1:
            keys = list(metrics)
            vec = t.accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=device), reduction="mean")
            metrics = dict(zip(keys, vec.tolist(), strict=True))
        if t.runtime is not None and t.step % a.training.logging_steps == 0:
            t.runtime.log_metrics(step=t.step, **metrics)
        if t.step == 1 or t.step % 5 == 0:
            t.log(f"step {t.step}: reward {metrics['reward']:.3f}; sample: {texts[0][:80]!r} (answer {answers[0]})")
        if t.end_of_step():
            return


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    import statistics

    return statistics.pstdev(values) if len(values) > 1 else 0.0
