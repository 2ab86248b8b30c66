"""Trainer: what every training loop (SFT, GRPO, GKD) works with: the model, optimizer and schedule, the run, the
step and data position; and how a step ends (clip, optimizer step, checkpoint when due, agreement on a stop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twinkle_trainer.config import Args
from twinkle_trainer.runtime import TrainingRuntime


@dataclass
class Trainer:
    """Everything a training loop needs; the loops live in twinkle_trainer.sft, .grpo and .gkd."""

    args: Args
    accelerator: Any
    runtime: TrainingRuntime | None
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    params: list[Any]
    model_dir: Any
    step: int = 0
    data_position: int = 0
    stop_flag: list[bool] = field(default_factory=lambda: [False])

    def records(self) -> list[dict[str, Any]]:
        """The configured dataset, normalized (see twinkle_trainer.dataset)."""
        from twinkle_trainer.dataset import load_records

        d = self.args.dataset
        return load_records(d.dataset_id, d.data_file, d.split, d.subset_name, d.max_examples, self.args.template.system)

    def log(self, message: str) -> None:
        if self.runtime is not None:
            self.runtime.log(message)

    def should_stop(self) -> bool:
        """True on every rank once any rank was asked to stop (SIGTERM)."""
        import torch

        local = self.stop_flag[0] or (self.runtime is not None and self.runtime.should_stop)
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def optimizer_step(self) -> float:
        """Clip, step optimizer and schedule; returns the gradient norm before clipping."""
        import torch

        max_norm = self.args.optimizer.max_grad_norm
        if max_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.params, max_norm)
        else:
            grads = [p.grad.detach().norm() for p in self.params if p.grad is not None]
            norm = torch.norm(torch.stack(grads)) if grads else torch.tensor(0.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def end_of_step(self) -> bool:
        """Checkpoint when due (every save_steps, at the last step, on a stop); True if the loop must stop now."""
        stop = self.should_stop()
        a = self.args.training
        if self.step % a.save_steps == 0 or stop or self.step == a.max_steps:
            self.checkpoint()
        if stop:
            self.log(f"stopped at step {self.step}")
        return stop

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def checkpoint(self) -> None:
        """Every rank waits; rank 0 writes checkpoints/step-N via the runtime (atomic, recorded in meta.json)."""
        from twinkle_trainer import checkpoint

        self.accelerator.wait_for_everyone()
        if self.runtime is not None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            self.runtime.save_checkpoint(
                self.step,
                lambda path: checkpoint.save(path, unwrapped, self.optimizer, self.scheduler, self.step,
                                             self.data_position, self.args.checkpoint.save_optimizer),
                data_position=self.data_position,
            )
        self.accelerator.wait_for_everyone()



def base_dtype(accelerator: Any, args: Args) -> Any:
    """The dtype to load the base model in: on a GPU with LoRA the frozen weights are kept in the compute dtype
    (bf16/fp16: half the memory); a full fine-tune keeps fp32 master weights, and the CPU trains in fp32."""
    import torch

    precision = accelerator.mixed_precision
    if args.lora.use_lora and accelerator.device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32
