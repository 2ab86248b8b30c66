"""The typed training configuration: one dataclass per group, every field with a default and a help text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


class ConfigError(ValueError):
    """A configuration problem; the message says which key, which source and what to do."""


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: default, one-line help, and optionally the allowed string values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelArgs:
    model_id: str = opt(DEFAULT_MODEL, "base model: hub id, local HF directory, .gguf file, or builtin:smollm2-135m-instruct")
    mixed_precision: str = opt("auto", "auto = bf16 on GPU, fp32 on CPU", ("auto", "no", "fp16", "bf16"))
    strategy: str = opt("auto", "multi-process strategy", ("auto", "ddp", "native_fsdp"))
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    trust_remote_code: bool = opt(False, "allow model code from the model repository")
    attn_implementation: str = opt("sdpa", "attention kernel", ("eager", "sdpa", "flash_attention_2"))


@dataclass
class LoraArgs:
    use_lora: bool = opt(True, "train a LoRA adapter instead of all weights")
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA path")
    lora_target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj"], "module names to adapt, or all-linear")
    lora_last_layers: int = opt(0, "adapt only the last N transformer layers (0 = all); backward then stops early")


@dataclass
class DatasetArgs:
    dataset_id: str | None = opt("builtin:self-cognition", "builtin:self-cognition, builtin:arith, builtin:mixed-lengths, "
                                 "or a hub id (hf://, ms://)")
    data_file: str | None = opt(None, "local JSONL file (messages, prompt/completion or prompt/answer); replaces dataset_id")
    subset_name: str | None = opt(None, "dataset subset (configuration) name")
    split: str = opt("train", "dataset split")
    streaming: bool = opt(False, "stream the dataset instead of loading it")
    max_examples: int | None = opt(None, "use at most this many examples")
    shuffle: bool = opt(True, "shuffle examples (seeded)")


@dataclass
class TemplateArgs:
    template_cls: str = opt("auto", "prompt template: auto uses the tokenizer's chat template")
    max_length: int = opt(512, "maximum tokens per example")
    packing: bool = opt(True, "SFT: pack whole examples into rows without padding (attention kept inside each "
                        "example; the loss of every step is unchanged)")
    pack_length: int = opt(0, "SFT packing: tokens per row, one row per forward (0 = micro_batch_size x max_length, "
                           "at most 1024 on CPU, where the mask's attention cost grows with the row)")
    truncation_strategy: str = opt("left", "how to fit long examples", ("left", "right", "delete", "raise"))
    enable_thinking: bool = opt(False, "let chat templates that support it emit reasoning")
    system: str | None = opt(None, "system prompt added to every conversation")


@dataclass
class TrainingArgs:
    task: str = opt("sft", "training algorithm: sft, grpo (RL with rewards), gkd (on-policy distillation)",
                    ("sft", "grpo", "gkd"))
    max_steps: int = opt(100, "optimizer steps to train")
    batch_size: int = opt(8, "examples (prompts for RL) per optimizer step")
    micro_batch_size: int = opt(4, "examples per forward pass; batch_size / micro_batch_size = accumulation")
    output_dir: str | None = opt(None, "where to save the final adapter (default: the run directory)")
    save_steps: int = opt(50, "checkpoint every this many steps")
    logging_steps: int = opt(1, "log metrics every this many steps")
    seed: int = opt(42, "random seed for data order, init and sampling")


@dataclass
class OptimizerArgs:
    optimizer_cls: str = opt("AdamW", "optimizer", ("AdamW", "Adam", "SGD"))
    learning_rate: float = opt(1e-4, "peak learning rate")
    weight_decay: float = opt(0.0, "decoupled weight decay")
    max_grad_norm: float = opt(1.0, "clip gradients to this global norm (0 = off)")
    betas: list[float] = opt([0.9, 0.999], "Adam betas")
    eps: float = opt(1e-8, "Adam epsilon")


@dataclass
class SchedulerArgs:
    scheduler_cls: str = opt("cosine", "learning-rate schedule", ("cosine", "linear", "constant"))
    num_warmup_steps: int = opt(0, "linear warmup steps")
    t_max: int | None = opt(None, "schedule length in steps (default max_steps)")
    min_lr_ratio: float = opt(0.0, "final learning rate as a fraction of the peak")


@dataclass
class LossArgs:
    loss_cls: str = opt("auto", "auto = cross_entropy for sft, grpo for grpo, gkd (generalized JSD) for gkd",
                        ("auto", "cross_entropy", "grpo", "gkd"))
    epsilon: float = opt(0.2, "PPO-style ratio clip range")
    beta: float = opt(0.04, "KL penalty to the base model")
    sft_weight: float = opt(0.0, "weight of an SFT loss on the best completion during RL")


@dataclass
class SamplerArgs:
    sampler_type: str = opt("auto", "auto = vLLM on GPU when installed, else HF generate", ("auto", "hf", "vllm"))
    gpu_memory_utilization: float = opt(0.4, "fraction of GPU memory vLLM may use")
    tensor_parallel_size: int = opt(1, "GPUs per vLLM engine")
    enable_sleep_mode: bool = opt(True, "let vLLM release GPU memory during training steps")


@dataclass
class SamplingArgs:
    max_tokens: int = opt(64, "maximum new tokens per completion")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)")
    top_k: int = opt(0, "sample from the k most likely tokens (0 = off)")
    top_p: float = opt(1.0, "nucleus sampling mass")
    num_samples: int = opt(1, "completions per prompt outside RL")
    stop: list[str] = opt([], "strings that end a completion (a completion that reaches one is finished, not cut)")


@dataclass
class InfraArgs:
    mode: str = opt("local", "where training runs", ("local", "ray", "server"))
    nproc_per_node: int = opt(1, "training processes on this machine (accelerate launch)")
    nnodes: int = opt(1, "machines taking part (each runs nproc_per_node processes; torch.distributed connects them)")
    node_rank: int = opt(0, "this machine's index among the nnodes (0 writes the run's metrics)")
    master_addr: str = opt("127.0.0.1", "address of node 0 (its rendezvous)")
    master_port: int = opt(0, "rendezvous port on node 0 (0 = a free one; set it when nnodes > 1)")
    model_gpus: list[int] = opt([], "GPU indices for the trained model")
    sampler_gpus: list[int] = opt([], "GPU indices for the sampler")
    dp_size: int = opt(1, "data-parallel replicas")


@dataclass
class ServerArgs:
    config: str | None = opt(None, "server configuration file (set as server.config)")
    host: str = opt("127.0.0.1", "address the training server binds")
    port: int = opt(8000, "port the training server binds")
    ray_namespace: str = opt("twinkle", "Ray namespace")


@dataclass
class RLArgs:
    num_generations: int = opt(4, "completions per prompt (the group)")
    advantage_type: str = opt("grpo", "group advantage estimator", ("grpo", "rloo"))
    reward_fns: list[str] = opt(["math", "format"], "rewards: match, math, format, or module.function")
    scale_rewards: bool = opt(True, "divide group advantages by the group's reward std")
    teacher_model_id: str | None = opt(None, "teacher for task gkd: a model id as for model_id, or a run's LoRA "
                                       "adapter directory (same tokenizer as the student)")
    gkd_beta: float = opt(0.5, "task gkd: 0 = forward KL(teacher||student), 1 = reverse KL(student||teacher), "
                          "between = generalized JSD")


@dataclass
class CheckpointArgs:
    save_optimizer: bool = opt(True, "save optimizer, scheduler and RNG state for exact resume")
    merge_and_sync: bool = opt(False, "also save the adapter merged into the base weights at the end")
    platform: str = opt("local", "where checkpoints go", ("local", "hub"))
    resume: bool = opt(True, "continue from the run's last checkpoint when relaunched")


GROUPS: dict[str, type] = {
    "model": ModelArgs,
    "lora": LoraArgs,
    "dataset": DatasetArgs,
    "template": TemplateArgs,
    "training": TrainingArgs,
    "optimizer": OptimizerArgs,
    "scheduler": SchedulerArgs,
    "loss": LossArgs,
    "sampler": SamplerArgs,
    "sampling": SamplingArgs,
    "infra": InfraArgs,
    "server": ServerArgs,
    "rl": RLArgs,
    "checkpoint": CheckpointArgs,
}


@dataclass
class Args:
    """The whole configuration of a run. Build it with CLI.from_args() or ConfigResolver."""

    model: ModelArgs = field(default_factory=ModelArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    template: TemplateArgs = field(default_factory=TemplateArgs)
    training: TrainingArgs = field(default_factory=TrainingArgs)
    optimizer: OptimizerArgs = field(default_factory=OptimizerArgs)
    scheduler: SchedulerArgs = field(default_factory=SchedulerArgs)
    loss: LossArgs = field(default_factory=LossArgs)
    sampler: SamplerArgs = field(default_factory=SamplerArgs)
    sampling: SamplingArgs = field(default_factory=SamplingArgs)
    infra: InfraArgs = field(default_factory=InfraArgs)
    server: ServerArgs = field(default_factory=ServerArgs)
    rl: RLArgs = field(default_factory=RLArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    # Which source set each value ("group.field" -> source); not part of the configuration itself.
    provenance: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # What resolution adjusted, for the run's log ("num_warmup_steps 3 -> 0: the run has 1 step").
    notes: list[str] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data (JSON-ready), as stored in meta.json `config`."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in GROUPS}

    def get(self, key: str) -> Any:
        group, name = key.split(".", 1)
        return getattr(getattr(self, group), name)

    # Dictionaries ready for component construction.

    def get_lora_args(self) -> dict[str, Any]:
        """Keyword arguments for peft.LoraConfig."""
        targets: Any = self.lora.lora_target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return {"r": self.lora.lora_r, "lora_alpha": self.lora.lora_alpha, "lora_dropout": self.lora.lora_dropout,
                "target_modules": targets, "task_type": "CAUSAL_LM"}

    def lora_layers(self, num_layers: int) -> list[int] | None:
        """Indices for peft's layers_to_transform, or None for every layer."""
        n = self.lora.lora_last_layers
        return list(range(max(0, num_layers - n), num_layers)) if 0 < n < num_layers else None

    def get_optimizer_args(self) -> dict[str, Any]:
        """Keyword arguments for the torch optimizer named by optimizer_cls."""
        o = self.optimizer
        if o.optimizer_cls == "SGD":
            return {"lr": o.learning_rate, "weight_decay": o.weight_decay}
        return {"lr": o.learning_rate, "weight_decay": o.weight_decay, "betas": tuple(o.betas), "eps": o.eps}

    def get_scheduler_args(self) -> dict[str, Any]:
        s = self.scheduler
        return {"name": s.scheduler_cls, "num_warmup_steps": s.num_warmup_steps,
                "num_training_steps": s.t_max or self.training.max_steps, "min_lr_ratio": s.min_lr_ratio}
