"""Invariants across fields, checked after all sources are applied."""

from __future__ import annotations

from twinkle_trainer.config.schema import GROUPS, Args, ConfigError


def problems(args: Args) -> list[str]:
    """Every violated invariant, each as a sentence that says what to change."""
    out: list[str] = [*_ranges(args), *_unsupported(args)]
    t, o, lo, d, s, rl = args.training, args.optimizer, args.lora, args.dataset, args.sampling, args.rl
    for name, value in (("max_steps", t.max_steps), ("batch_size", t.batch_size), ("micro_batch_size", t.micro_batch_size),
                        ("save_steps", t.save_steps), ("logging_steps", t.logging_steps),
                        ("max_tokens", s.max_tokens), ("nproc_per_node", args.infra.nproc_per_node),
                        ("tensor_parallel_size", args.sampler.tensor_parallel_size), ("dp_size", args.infra.dp_size)):
        if value < 1:
            out.append(f"{name} must be at least 1 (got {value})")
    if t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size:
        out.append(
            f"micro_batch_size ({t.micro_batch_size}) must divide batch_size ({t.batch_size}); "
            f"try micro_batch_size {_largest_divisor(t.batch_size, t.micro_batch_size)}"
        )
    if args.template.pack_length < 0:
        out.append(f"pack_length must be 0 (automatic) or a number of tokens (got {args.template.pack_length})")
    if not o.learning_rate > 0:
        out.append(f"learning_rate must be greater than 0 (got {o.learning_rate})")
    if o.weight_decay < 0:
        out.append(f"weight_decay must not be negative (got {o.weight_decay})")
    if o.max_grad_norm < 0:
        out.append(f"max_grad_norm must be 0 (off) or positive (got {o.max_grad_norm})")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        out.append(f"betas must be two numbers in [0, 1) (got {o.betas})")
    if lo.use_lora:
        if lo.lora_r < 1:
            out.append(f"lora_r must be at least 1 (got {lo.lora_r})")
        if lo.lora_alpha <= 0:
            out.append(f"lora_alpha must be greater than 0 (got {lo.lora_alpha})")
        if not 0 <= lo.lora_dropout < 1:
            out.append(f"lora_dropout must be in [0, 1) (got {lo.lora_dropout})")
        if not lo.lora_target_modules:
            out.append("lora_target_modules is empty; name modules such as q_proj,v_proj or use all-linear")
    if bool(d.dataset_id) == bool(d.data_file):
        out.append(
            "set exactly one data source: dataset_id or data_file"
            + (" (both are set; use --dataset-id none to use only the file)" if d.dataset_id else " (neither is set)")
        )
    if d.max_examples is not None and d.max_examples < 1:
        out.append(f"max_examples must be at least 1 (got {d.max_examples})")
    if not 0 <= s.top_p <= 1:
        out.append(f"top_p must be between 0 and 1 (got {s.top_p})")
    if s.temperature < 0:
        out.append(f"temperature must not be negative (got {s.temperature})")
    if s.top_k < 0:
        out.append(f"top_k must be 0 (off) or positive (got {s.top_k})")
    if not 0 < args.sampler.gpu_memory_utilization <= 1:
        out.append(f"gpu_memory_utilization must be in (0, 1] (got {args.sampler.gpu_memory_utilization})")
    if args.template.max_length < 8:
        out.append(f"max_length must be at least 8 tokens (got {args.template.max_length})")
    sch = args.scheduler
    if sch.num_warmup_steps < 0:
        out.append(f"num_warmup_steps must not be negative (got {sch.num_warmup_steps})")
    if not 0 <= sch.min_lr_ratio <= 1:
        out.append(f"min_lr_ratio must be in [0, 1] (got {sch.min_lr_ratio})")
    if t.task == "grpo":
        if rl.num_generations < 2:
            out.append(f"num_generations must be at least 2 for group advantages (got {rl.num_generations})")
        if not rl.reward_fns:
            out.append("reward_fns is empty; GRPO needs at least one reward (match, math, format or module.function)")
        if args.loss.epsilon <= 0:
            out.append(f"epsilon must be greater than 0 (got {args.loss.epsilon})")
        if args.loss.beta < 0:
            out.append(f"beta must not be negative (got {args.loss.beta})")
    if t.task == "gkd":
        if not rl.teacher_model_id:
            out.append("task gkd needs rl.teacher_model_id (the model the student learns from)")
        if not 0 <= rl.gkd_beta <= 1:
            out.append(f"gkd_beta must be between 0 (forward KL) and 1 (reverse KL) (got {rl.gkd_beta})")
        if rl.num_generations < 1:
            out.append(f"num_generations must be at least 1 (got {rl.num_generations})")
    elif rl.gkd_beta != 0.5:
        out.append("gkd_beta is only used by task gkd (distillation)")
    processes = args.infra.nproc_per_node * args.infra.nnodes
    if args.sampler.sampler_type == "vllm":
        if args.model.device == "cpu":
            out.append("sampler_type vllm needs a GPU; use sampler_type hf on CPU")
        if not lo.use_lora:
            out.append("sampler_type vllm needs use_lora (a full fine-tune would have to push all weights into the "
                       "engine every step); use sampler_type hf")
        if processes > 1:
            out.append("sampler_type vllm runs in one training process; with several processes use sampler_type hf")
        if lo.use_lora and lo.lora_r > 512:
            out.append(f"lora_r {lo.lora_r} is larger than vLLM supports (512)")
    if t.batch_size >= 1 and processes > 1 and t.batch_size % processes:
        out.append(f"batch_size ({t.batch_size}) must be a multiple of the {processes} training processes, or the "
                   "processes would run different numbers of steps and wait for each other forever")
    if t.task in ("grpo", "gkd") and s.temperature > 2:
        out.append(f"temperature must be at most 2 (got {s.temperature})")
    if t.task == "grpo":
        if s.temperature == 0 and rl.num_generations >= 2:
            out.append("temperature 0 (greedy) makes every completion of a group the same: GRPO needs temperature > 0")
        if s.top_p == 0:
            out.append("top_p 0 keeps no tokens; use a value in (0, 1]")
    return out


INT_LIMIT = 10**9  # no count in a configuration is sensibly larger; beyond, a typo (1e29 steps) is likely


def _ranges(args: Args) -> list[str]:
    """Non-finite floats and integers out of any sane range, for every field."""
    import dataclasses
    import math

    out = []
    for group in GROUPS:
        for f in dataclasses.fields(getattr(args, group)):
            value = getattr(getattr(args, group), f.name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    out.append(f"{f.name} must be a finite number (got {v})")
                elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_LIMIT and f.name != "seed":
                    out.append(f"{f.name} is out of range (got {v}; at most {INT_LIMIT:,})")
    if not 0 <= args.training.seed < 2**32:
        out.append(f"seed must be between 0 and 2^32-1 (got {args.training.seed})")
    return out


def _unsupported(args: Args) -> list[str]:
    """Keys that are accepted by the schema but not built yet: refused when set to anything but their default,
    so no option is silently ignored."""
    out = []
    m, d, t, lo, sa, inf, sv, rl, ck = (args.model, args.dataset, args.template, args.loss, args.sampling, args.infra,
                                         args.server, args.rl, args.checkpoint)
    if m.strategy == "native_fsdp":
        out.append("strategy native_fsdp is not supported yet; several processes train with DDP (strategy ddp)")
    if d.streaming:
        out.append("dataset streaming is not supported yet; datasets are loaded whole")
    if t.template_cls != "auto":
        out.append(f"template_cls {t.template_cls!r} is not supported yet; the tokenizer's chat template is used (auto)")
    expected_loss = {"sft": "cross_entropy", "grpo": "grpo", "gkd": "gkd"}.get(args.training.task)
    if lo.loss_cls not in ("auto", expected_loss):
        out.append(f"loss_cls {lo.loss_cls!r} does not fit task {args.training.task!r} (use auto or {expected_loss})")
    if sa.num_samples != 1:
        out.append("num_samples is not supported yet (only RL samples, with num_generations)")
    if inf.mode != "local":
        out.append(f"infra mode {inf.mode!r} is not supported yet; training runs locally (mode local); "
                   "for a training service use `twinkle-tui serve`")
    if inf.dp_size != 1:
        out.append("dp_size is not supported; use nproc_per_node for data-parallel processes")
    if inf.model_gpus or inf.sampler_gpus:
        out.append("model_gpus and sampler_gpus are not supported yet; choose GPUs with CUDA_VISIBLE_DEVICES or "
                   "model.device cuda:N")
    defaults = type(sv)()
    for key in ("config", "host", "port", "ray_namespace"):
        if getattr(sv, key) != getattr(defaults, key):
            out.append(f"server.{key} is not used by the trainer; the training service takes --host/--port "
                       "(twinkle-tui serve)")
    if rl.teacher_model_id and args.training.task != "gkd":
        out.append("teacher_model_id is only used by task gkd (distillation)")
    if ck.platform != "local":
        out.append(f"checkpoint platform {ck.platform!r} is not supported yet; checkpoints are saved locally")
    if inf.nnodes < 1:
        out.append(f"nnodes must be at least 1 (got {inf.nnodes})")
    elif not 0 <= inf.node_rank < inf.nnodes:
        out.append(f"node_rank must be between 0 and nnodes-1 (got {inf.node_rank} of {inf.nnodes})")
    if inf.nnodes > 1 and not 0 < inf.master_port < 65536:
        out.append("master_port must be set (1-65535) when nnodes > 1: every node must meet node 0 at the same port")
    device = m.device
    if device.startswith("cuda:") and inf.nproc_per_node > 1:
        out.append("device cuda:N names one GPU, but nproc_per_node > 1 runs several processes; use device auto "
                   "(one GPU per process)")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        out.append(f"device must be auto, cpu, cuda or cuda:N (got {device!r})")
    return out


def _largest_divisor(n: int, at_most: int) -> int:
    return max((k for k in range(1, max(1, min(n, at_most)) + 1) if n % k == 0), default=1)


def validate_args(args: Args) -> Args:
    """Raise ConfigError listing every problem (one per line), or return args."""
    found = problems(args)
    if found:
        raise ConfigError("invalid configuration: " + "; ".join(found))
    return args
