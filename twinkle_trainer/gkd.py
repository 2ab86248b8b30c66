"""On-policy distillation (GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models"): the student
samples completions, the teacher scores the same tokens, and the loss is the generalized Jensen-Shannon divergence
between the two next-token distributions at every completion position.

rl.gkd_beta interpolates: 0 is the forward KL(teacher || student) (mode covering), 1 the reverse
KL(student || teacher) (mode seeking), values between the generalized JSD with the mixture
M = beta * teacher + (1 - beta) * student (TRL's GKDTrainer uses the same form). Every completion is the student's own
(the paper's lambda = 1): nothing is read from the dataset but its prompts.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinkle_trainer.clock import running_time
from twinkle_trainer.dataset import DataError, DataOrder
from twinkle_trainer.loop import base_dtype
from twinkle_trainer.models import ModelError, load_model_and_tokenizer
from twinkle_trainer.rl import advance, padded_batch, record_step, sample_prompts
from twinkle_trainer.samplers import make_sampler

if TYPE_CHECKING:
    from twinkle_trainer.loop import Trainer


def log_probs(logits: Any, temperature: float = 1.0) -> Any:
    import torch

    return torch.log_softmax(logits.float() / temperature, dim=-1)


def generalized_jsd(student_logits: Any, teacher_logits: Any, beta: float, temperature: float = 1.0) -> Any:
    """Per-position generalized JSD of the two distributions (rows x vocab logits → rows); the teacher carries no
    gradient."""
    return jsd_of(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), beta)


def kl_of(p: Any, q: Any) -> Any:
    """KL(P || Q) per position from two log-probability tables."""
    return (p.exp() * (p - q)).sum(-1)


def jsd_of(s: Any, t: Any, beta: float) -> Any:
    """The generalized JSD from the two log-probability tables (student s, teacher t)."""
    import torch

    if beta == 0:
        return kl_of(t, s)  # KL(teacher || student)
    if beta == 1:
        return kl_of(s, t)  # KL(student || teacher)
    m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
    return beta * kl_of(t, m) + (1 - beta) * kl_of(s, m)  # KL(teacher || M) and KL(student || M)


def reverse_kl(student_logits: Any, teacher_logits: Any, temperature: float = 1.0) -> Any:
    """KL(student || teacher) per position, without gradient: how far the student is from the teacher on its own
    samples (the number to watch fall, whatever beta)."""
    import torch

    with torch.no_grad():
        return kl_of(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))


def load_teacher(model_id: str, student_tokenizer: Any, dtype: Any, attn_implementation: str,
                 trust_remote_code: bool) -> Any:
    """The teacher, frozen, in eval mode. A model id as for model_id, or a LoRA adapter: a run's directory (its
    final `adapter/`), that `adapter/` itself, or a checkpoint `checkpoints/step-N` (the base model named in
    adapter_config.json with the adapter merged in). Its tokenizer must be the student's: the loss compares
    distributions over the same vocabulary, token by token."""
    path = Path(model_id).expanduser()
    adapter = path / "adapter_config.json"
    if path.is_dir() and not adapter.exists() and (path / "adapter" / "adapter_config.json").exists():
        path, adapter = path / "adapter", path / "adapter" / "adapter_config.json"  # a checkpoint directory
    if adapter.exists():
        import json

        from peft import PeftModel

        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"teacher adapter {path} does not name its base model (base_model_name_or_path)")
        model, tokenizer, _ = load_model_and_tokenizer(base, dtype, attn_implementation, trust_remote_code)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model, tokenizer, _ = load_model_and_tokenizer(model_id, dtype, attn_implementation, trust_remote_code)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ModelError(f"teacher {model_id} has another tokenizer than the student ({len(tokenizer)} vs "
                         f"{len(student_tokenizer)} tokens): GKD compares the two distributions token by token, so "
                         "teacher and student must share a tokenizer")
    model.eval()
    model.requires_grad_(False)
    return model


def train_gkd(t: Trainer) -> None:
    import torch

    a = t.args
    records = t.records()
    if not records:
        raise DataError("the dataset has no prompts")
    world = t.accelerator.num_processes
    device = t.accelerator.device
    t0 = running_time()
    teacher = load_teacher(str(a.rl.teacher_model_id), t.tokenizer, base_dtype(t.accelerator, a),
                           a.model.attn_implementation, a.model.trust_remote_code).to(device)
    t.log(f"teacher {a.rl.teacher_model_id} loaded in {running_time() - t0:.1f}s")
    order = DataOrder(len(records), a.training.seed, a.dataset.shuffle)
    unwrapped = t.accelerator.unwrap_model(t.model)
    sampler = make_sampler(a.sampler.sampler_type, unwrapped, t.tokenizer, a, t.model_dir, world)
    sampler.sync(unwrapped)
    n_gen = a.rl.num_generations
    beta = a.rl.gkd_beta
    temperature = a.sampling.temperature if a.sampling.temperature > 0 else 1.0
    micro = max(1, a.training.micro_batch_size) * n_gen  # prompts per forward, as in GRPO
    t.log(f"GKD on {len(records)} prompts: {a.training.batch_size} prompts x {n_gen} student samples per step, "
          f"beta {beta:g} ({'forward KL' if beta == 0 else 'reverse KL' if beta == 1 else 'generalized JSD'}), "
          f"sampler {type(sampler).__name__}")
    while t.step < a.training.max_steps:
        started = running_time()
        _, prompts, completions, t_gen = sample_prompts(t, records, order, sampler, n_gen)

        t.model.train()
        n_tokens = sum(max(1, len(c.token_ids)) for c in completions)
        sums = {"loss": 0.0, "kl/teacher": 0.0, "entropy": 0.0}
        t_teacher = 0.0
        t_train = running_time()
        for k in range(0, len(completions), micro):
            ids, attn, comp = padded_batch(prompts, completions[k : k + micro], t.tokenizer.pad_token_id, device,
                                           torch.bool)
            last = k + micro >= len(completions)
            with contextlib.nullcontext() if world == 1 or last else t.accelerator.no_sync(t.model):
                clock = running_time()
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=ids, attention_mask=attn).logits[:, :-1][comp]
                t_teacher += running_time() - clock
                student_logits = t.model(input_ids=ids, attention_mask=attn).logits[:, :-1][comp]
                width_v = min(student_logits.size(-1), teacher_logits.size(-1))  # padded vocabularies differ
                # One log-softmax of each (full-vocabulary tables): the loss, the KL and the entropy all read them.
                s = log_probs(student_logits[:, :width_v], temperature)
                teacher_lp = log_probs(teacher_logits[:, :width_v], temperature)
                loss = jsd_of(s, teacher_lp, beta).sum() / n_tokens  # the mean over all the step's completion tokens
                t.accelerator.backward(loss)
            sums["loss"] += float(loss.detach())
            with torch.no_grad():  # the reverse_kl and entropy of the same tables
                sums["kl/teacher"] += float(kl_of(s, teacher_lp).sum()) / n_tokens
                sums["entropy"] += float(-(s.exp() * s).sum()) / n_tokens
        grad_norm = t.optimizer_step()
        t_train = running_time() - t_train - t_teacher
        t_sync = advance(t, sampler)

        lengths = [len(c.token_ids) for c in completions]
        tokens = sum(lengths) + sum(len(p) for p in prompts) * n_gen
        metrics = {
            "loss": sums["loss"], "kl/teacher": sums["kl/teacher"], "entropy": sums["entropy"],
            "grad_norm": grad_norm, "learning rate": t.lr(),
            "completion_length": sum(lengths) / max(1, len(lengths)),
            "truncation_rate": sum(c.truncated for c in completions) / max(1, len(completions)),
            "tokens/s": tokens / (running_time() - started),
            "time/generate": t_gen, "time/teacher": t_teacher, "time/train": t_train, "time/sync": t_sync,
        }
        metrics = record_step(t, metrics)
        if t.step == 1 or t.step % 5 == 0 or t.step == a.training.max_steps:
            t.log(f"step {t.step}/{a.training.max_steps}: loss {metrics['loss']:.4f}, KL to the teacher "
                  f"{metrics['kl/teacher']:.4f}, {metrics['completion_length']:.1f} tokens per sample")
        if t.end_of_step():
            return
