"""GRPO (and RLOO advantages): group sampling, rewards, clipped policy loss, KL to the base model through the
disabled adapter (no second model copy), entropy, and the time split of every step."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twinkle_trainer import rewards as reward_lib
from twinkle_trainer.clock import running_time
from twinkle_trainer.dataset import DataOrder
from twinkle_trainer.rl import advance, padded_batch, record_step, sample_prompts
from twinkle_trainer.samplers import make_sampler

if TYPE_CHECKING:
    from twinkle_trainer.loop import Trainer


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


ENTROPY_CHUNK = 64  # positions per chunk when the entropy needs the whole distribution
CHUNK_ELEMENTS = 2**24  # logits per chunk of the logsumexp (64 MB in fp32)


def gathered_logprobs(logits: Any, targets: Any, temperature: float = 1.0) -> Any:
    """log p(target) under softmax(logits / temperature), a chunk of rows at a time, forward and backward.

    No full-vocabulary tensor is made besides the gradient itself: no log-softmax, no tempered or fp32 copy of the
    logits, no scatter buffer for a gather. With a 150k vocabulary those (batch x length x vocab) tensors are what
    does not fit. The backward pass recomputes each chunk's softmax: d log p(t) / d logits = (onehot(t) - p) / T.
    """
    import torch

    class ChunkedLogProb(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any, targets: Any) -> Any:
            rows, flat_t = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
            exact = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits are summed in fp32
            out = torch.empty(rows.size(0), device=logits.device, dtype=exact)
            step = max(1, CHUNK_ELEMENTS // rows.size(1))
            for a in range(0, rows.size(0), step):
                part = rows[a : a + step].to(exact) / temperature
                chosen = part.gather(-1, flat_t[a : a + step, None]).squeeze(-1)
                out[a : a + step] = chosen - torch.logsumexp(part, dim=-1)
            ctx.save_for_backward(logits, targets)
            return out.reshape(targets.shape)

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> tuple[Any, None]:
            logits, targets = ctx.saved_tensors
            rows, flat_t, flat_g = logits.reshape(-1, logits.size(-1)), targets.reshape(-1), grad_out.reshape(-1)
            grad = torch.empty_like(rows)
            step = max(1, CHUNK_ELEMENTS // rows.size(1))
            exact = torch.promote_types(logits.dtype, torch.float32)
            for a in range(0, rows.size(0), step):
                probs = torch.softmax(rows[a : a + step].to(exact) / temperature, dim=-1)
                probs.neg_().scatter_add_(-1, flat_t[a : a + step, None], torch.ones_like(probs[:, :1]))
                probs.mul_((flat_g[a : a + step, None] / temperature).to(exact))
                grad[a : a + step] = probs.to(grad.dtype)
            return grad.reshape(logits.shape), None

    return ChunkedLogProb.apply(logits, targets)  # type: ignore[no-untyped-call,unused-ignore]


def entropy_of(logits: Any, temperature: float = 1.0, chunk: int = ENTROPY_CHUNK) -> Any:
    """Per-position entropy of softmax(logits / temperature), computed a few positions at a time (no gradient)."""
    import torch

    with torch.no_grad():
        rows = logits.reshape(-1, logits.size(-1))
        exact = torch.promote_types(logits.dtype, torch.float32)
        out = torch.empty(rows.size(0), device=logits.device, dtype=exact)
        for a in range(0, rows.size(0), chunk):
            part = rows[a : a + chunk].to(exact) / temperature
            logp = torch.log_softmax(part, dim=-1)
            out[a : a + chunk] = -(logp.exp() * logp).sum(-1)
        return out.reshape(logits.shape[:-1])


def token_logprobs(model: Any, ids: Any, mask: Any, temperature: float = 1.0,
                   with_entropy: bool = True) -> tuple[Any, Any]:
    """Log-probabilities of each next token under the policy that sampled them (the logits divided by the sampling
    temperature, as TRL does: the gradient is then for that policy), and the per-position entropy."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    logp = gathered_logprobs(logits, ids[:, 1:], temperature)
    entropy = entropy_of(logits, temperature) if with_entropy else None
    return logp, entropy


def importance_weights(train_logp: Any, sampler_logp: Any, cap: float) -> tuple[Any, Any]:
    """Truncated importance sampling (TRL's vllm_importance_sampling_correction): the sampler (vLLM) and the trainer
    compute slightly different probabilities for the same tokens; weight each token by min(p_train / p_sampler, cap).
    Returns the weights and the mean absolute log-probability difference (a metric the monitor watches)."""
    import torch

    diff = (train_logp.detach() - sampler_logp).clamp(max=20.0)
    weights = torch.exp(diff).clamp(max=cap)
    return weights, diff.abs()


def train_grpo(t: Trainer) -> None:
    import torch

    a = t.args
    records = t.records()
    fns = {name: reward_lib.resolve(name) for name in a.rl.reward_fns}
    order = DataOrder(len(records), a.training.seed, a.dataset.shuffle)
    unwrapped = t.accelerator.unwrap_model(t.model)
    sampler = make_sampler(a.sampler.sampler_type, unwrapped, t.tokenizer, a, t.model_dir,
                           t.accelerator.num_processes)
    sampler.sync(unwrapped)
    world = t.accelerator.num_processes
    G = a.rl.num_generations
    device = t.accelerator.device
    t.log(f"GRPO on {len(records)} prompts: {a.training.batch_size} prompts x {G} generations per step, "
          f"rewards {', '.join(fns)}, sampler {type(sampler).__name__}")
    while t.step < a.training.max_steps:
        started = running_time()
        picked, prompts, completions, t_gen = sample_prompts(t, records, order, sampler, G)

        t_rew = running_time()
        texts = [t.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        answers = [picked[c.prompt_index].get("answer") for c in completions]
        per_fn = reward_lib.score(fns, texts, answers)
        total = [sum(per_fn[name][i] for name in fns) for i in range(len(completions))]
        advantages, flat_frac = group_advantages(total, G, a.rl.advantage_type, a.rl.scale_rewards)
        t_rew = running_time() - t_rew

        t_train = running_time()
        t.model.train()
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "sft_loss": 0.0}
        best = best_completions(total, G) if a.loss.sft_weight > 0 else set()
        n_groups = max(1, len(total) // G)
        micro = max(1, a.training.micro_batch_size) * G
        n_seq = len(completions)
        temperature = a.sampling.temperature if a.sampling.temperature > 0 else 1.0
        mismatch: list[float] = []
        for k in range(0, n_seq, micro):
            chunk = list(range(k, min(k + micro, n_seq)))
            ids, attn, comp = padded_batch(prompts, [completions[i] for i in chunk], t.tokenizer.pad_token_id,
                                           device)
            adv = torch.tensor([advantages[i] for i in chunk], device=device).unsqueeze(1)
            last_micro = k + micro >= n_seq
            # Under DDP, gradients are averaged across processes once per step, on the last micro-batch.
            sync = contextlib.nullcontext() if world == 1 or last_micro else t.accelerator.no_sync(t.model)
            with sync:
                logp, entropy = token_logprobs(t.model, ids, attn, temperature)
                ratio = torch.exp(logp - logp.detach())  # one update per batch: old policy = current, gradient kept
                clipped = torch.clamp(ratio, 1 - a.loss.epsilon, 1 + a.loss.epsilon)
                per_token = -torch.min(ratio * adv, clipped * adv)
                sampler_logp = sampler_logprobs([completions[i] for i in chunk], comp, device)
                if sampler_logp is not None:  # vLLM's probabilities differ a little from ours: correct for it
                    weights, diff = importance_weights(logp, sampler_logp, IS_CAP)
                    per_token = per_token * weights
                    mismatch.append(float((diff * comp).sum() / comp.sum().clamp(min=1)))
                loss, kl = micro_batch_loss(t, a, ids, attn, temperature, logp, per_token, comp, chunk, best, n_seq,
                                     n_groups, sums)
                t.accelerator.backward(loss)
            lengths = comp.sum(1).clamp(min=1)
            sums["loss"] += float(loss.detach())
            sums["kl"] += float(((kl.detach() * comp).sum(1) / lengths).sum()) / n_seq
            sums["entropy"] += float(((entropy * comp).sum(1) / lengths).sum()) / n_seq
        grad_norm = t.optimizer_step()
        t_train = running_time() - t_train
        t_sync = advance(t, sampler)

        lengths_list = [len(c.token_ids) for c in completions]
        tokens = sum(lengths_list) + sum(len(p) for p in prompts) * G
        metrics = {
            "loss": sums["loss"], "grad_norm": grad_norm, "learning rate": t.lr(),
            **({"sft_loss": sums["sft_loss"]} if a.loss.sft_weight > 0 else {}),
            "reward": _mean(total), "reward_std": _std(total),
            **{f"reward/{name}": _mean(v) for name, v in per_fn.items()},
            "kl": sums["kl"], "entropy": sums["entropy"],
            "completion_length": _mean(lengths_list),
            "truncation_rate": _mean([float(c.truncated) for c in completions]),
            "zero_advantage_groups": flat_frac,
            "tokens/s": tokens / (running_time() - started),
            "time/generate": t_gen, "time/reward": t_rew, "time/train": t_train, "time/sync": t_sync,
            "adapter_version": sampler.version,
            **({"sampler/logprob_diff": _mean(mismatch)} if mismatch else {}),
        }
        metrics = record_step(t, metrics)
        if t.step == 1 or t.step % 5 == 0:
            t.log(f"step {t.step}: reward {metrics['reward']:.3f}; sample: {texts[0][:80]!r} (answer {answers[0]})")
        if t.end_of_step():
            return


IS_CAP = 2.0  # TRL's default cap of the truncated importance weight


def sampler_logprobs(completions: list[Any], comp: Any, device: Any) -> Any:
    """The sampler's log-probabilities of the sampled tokens, aligned with the completion positions (or None when
    the sampler does not report them: HF generate samples from the training weights themselves)."""
    import torch

    if not completions or any(c.logprobs is None for c in completions):
        return None
    out = torch.zeros_like(comp)
    for row, c in enumerate(completions):
        positions = torch.nonzero(comp[row]).flatten()[: len(c.logprobs)]
        out[row, positions] = torch.tensor(c.logprobs[: len(positions)], device=comp.device, dtype=out.dtype)
    return out.to(device)


def micro_batch_loss(t: Trainer, a: Any, ids: Any, attn: Any, temperature: float, logp: Any, per_token: Any, comp: Any,
              chunk: list[int], best: set[int], n_seq: int, n_groups: int, sums: dict[str, float]) -> tuple[Any, Any]:
    """The micro-batch's loss: the clipped policy term, the KL to the base model (k3, through the disabled adapter),
    and the SFT term on each group's best completion; returns it and the per-token KL."""
    import torch

    kl = torch.zeros_like(logp)
    if a.loss.beta > 0 and a.lora.use_lora:
        with torch.no_grad(), t.accelerator.unwrap_model(t.model).disable_adapter():
            ref_logp, _ = token_logprobs(t.model, ids, attn, temperature, with_entropy=False)
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1  # k3 estimator, always >= 0
        per_token = per_token + a.loss.beta * kl
    lengths = comp.sum(1).clamp(min=1)
    loss = ((per_token * comp).sum(1) / lengths).sum() / n_seq
    chosen = [row for row, i in enumerate(chunk) if i in best]
    if chosen:  # an SFT term on each group's best completion (loss.sft_weight)
        nll = -(logp * comp).sum(1) / lengths
        sft = nll[chosen].sum() / n_groups
        loss = loss + a.loss.sft_weight * sft
        sums["sft_loss"] += float(sft.detach())
    return loss, kl


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    import statistics

    return statistics.pstdev(values) if len(values) > 1 else 0.0
