"""`python -m twinkle_trainer CONFIG [--key value ...]`: LoRA SFT, GRPO or GKD (on-policy distillation) as a twinkle run.

One process by default; with nproc_per_node > 1 it re-launches itself under `accelerate launch`. Rank 0 owns the
run (metrics, checkpoints, meta.json); a stop request (SIGTERM) reaches every rank, and the ranks agree at a step
boundary so they stop at the same step.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from twinkle_trainer.config import CLI, Args, ConfigError
from twinkle_trainer.dataset import DataError
from twinkle_trainer.loop import Trainer, base_dtype
from twinkle_trainer.models import ModelError
from twinkle_trainer.rewards import RewardError
from twinkle_trainer.runtime import TrainingRuntime
from twinkle_trainer.samplers import SamplerError
from twinkle_trainer.threads import env_threads

USER_ERRORS = (DataError, ModelError, RewardError, SamplerError)
LAUNCHED_ENV = "TWINKLE_DISTRIBUTED_CHILD"


def main(argv: list[str]) -> int:
    from twinkle_trainer.preflight import preflight

    try:
        args = preflight(CLI.from_args(argv))  # data, model and reward problems now, not after the model loads
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.infra.nproc_per_node == 1:
        select_cuda_device(args.model.device, os.environ)  # type: ignore[arg-type]
    if (args.infra.nproc_per_node > 1 or args.infra.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        if os.environ.get(LAUNCHED_ENV):  # a rank without a rank: never launch again (that would recurse)
            print("error: accelerate launch started this process without LOCAL_RANK", file=sys.stderr)
            return 2
        return launch_distributed(args, argv)
    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def launch_command(args: Args, argv: list[str], port: int) -> list[str]:
    """`accelerate launch` for this run: nproc_per_node processes here, on node node_rank of nnodes.

    --multi_gpu selects accelerate's torchrun launcher, which is also the one that starts several CPU processes (its
    --cpu flag starts just one); on CPU the ranks use the gloo backend. torch.distributed is the transport between
    nodes: node 0 hosts the rendezvous at master_addr:master_port.
    """
    inf = args.infra
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(inf.nproc_per_node * inf.nnodes), "--num_machines", str(inf.nnodes),
            "--machine_rank", str(inf.node_rank), "--main_process_ip", inf.master_addr,
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "twinkle_trainer", *argv]


def launch_distributed(args: Args, argv: list[str]) -> int:
    """Re-run this command under `accelerate launch` and wait for it."""
    import torch

    port = args.infra.master_port
    if not port:
        with socket.socket() as s:  # one machine: any free port for the process group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = launch_command(args, argv, port)
    env = {**os.environ, LAUNCHED_ENV: "1"}
    if args.model.device == "cpu" or not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    # The stop signal reaches the whole process group; the ranks handle it, this launcher only waits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return subprocess.call(cmd, env=env)


def resolve_device(device: str, cuda_available: bool) -> bool:
    """True to train on the CPU. A named CUDA device needs one; cuda:N was mapped to CUDA_VISIBLE_DEVICES by main."""
    if device.startswith("cuda") and not cuda_available:
        raise ModelError(f"model.device {device} needs an NVIDIA GPU and none is visible; use device auto or cpu")
    return device == "cpu" or not cuda_available


def choose_precision(requested: str, use_cpu: bool, bf16_supported: bool) -> str:
    """auto: fp32 on CPU, bf16 where the GPU supports it, else fp16 (T4, V100). bf16 asked for on a GPU without
    it is refused rather than left to fail inside a kernel."""
    if use_cpu:
        return "no" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    if requested == "bf16" and not bf16_supported:
        raise ModelError("mixed_precision bf16 is not supported by this GPU; use fp16 or auto")
    return requested


def select_cuda_device(device: str, env: dict[str, str]) -> None:
    """model.device cuda:N in one process: make GPU N the only visible one (before CUDA starts), so every library
    (accelerate, vLLM) uses it as cuda:0."""
    if not device.startswith("cuda:"):
        return
    index = int(device[5:])
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)


def run(args: Args) -> int:
    """Train in this process (one rank); a user error (bad data, model, reward) is recorded as the run's failure."""
    import torch
    from accelerate import Accelerator

    use_cpu = resolve_device(args.model.device, torch.cuda.is_available())
    precision = choose_precision(args.model.mixed_precision, use_cpu,
                                 (not use_cpu) and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision)
    runtime = None
    if accelerator.is_main_process:
        runtime = TrainingRuntime().start(model_id=args.model.model_id, config=args.to_dict(),
                                          total_steps=args.training.max_steps)
    try:
        return _train(args, accelerator, runtime, use_cpu)
    except USER_ERRORS as exc:
        if runtime is not None:
            runtime.finish("failed", error=str(exc))
        raise


def _read_resume_checkpoint(trainer: Trainer, runtime: TrainingRuntime | None, args: Args) -> Any:
    """The newest checkpoint that loads completely (rank 0 chooses; every rank reads the same one), or None.
    A checkpoint with a missing or damaged file is skipped with a line in the log, never resumed half-way."""
    from twinkle_trainer import checkpoint

    chosen: list[str | None] = [None]
    loaded = None
    if runtime is not None and args.checkpoint.resume:
        for info in runtime.resume_candidates():
            if info.path is None:
                continue
            try:
                loaded = checkpoint.read(info.path, needs_adapter=args.lora.use_lora)
                chosen[0] = str(info.path)
                break
            except checkpoint.CheckpointError as exc:
                trainer.log(f"cannot resume from {exc}; trying an older checkpoint")
        else:
            if runtime.paths.checkpoints.is_dir() and any(runtime.paths.checkpoints.iterdir()):
                trainer.log("no complete checkpoint to resume from: starting from step 0")
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(chosen)
        if loaded is None and chosen[0]:
            from pathlib import Path

            loaded = checkpoint.read(Path(chosen[0]), needs_adapter=args.lora.use_lora)
    return loaded


def linear_module_names(model: Any) -> list[str]:
    """The names (last part) of the model's linear layers, as PEFT's all-linear means them: without the output
    layer."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not output}
    return sorted(names)


def _train(args: Args, accelerator: Any, runtime: TrainingRuntime | None, use_cpu: bool) -> int:
    import random

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from twinkle_trainer import checkpoint
    from twinkle_trainer.models import load_model_and_tokenizer
    from twinkle_trainer.optim import build_optimizer, build_scheduler

    stop_flag = [False]
    if runtime is None:  # other ranks: remember the request, rank 0's decision is shared at the next step boundary
        signal.signal(signal.SIGTERM, lambda *_: stop_flag.__setitem__(0, True))
    seed = args.training.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed + accelerator.process_index)
    if use_cpu:  # the cores shared out among the processes, unless OMP_NUM_THREADS says how many (research lanes)
        torch.set_num_threads(env_threads() or max(1, (os.cpu_count() or 1) // accelerator.num_processes))

    t0 = time.time()
    with accelerator.main_process_first():  # rank 0 converts or builds a cached model once; the others wait
        model, tokenizer, model_dir = load_model_and_tokenizer(args.model.model_id,
                                                               dtype=base_dtype(accelerator, args),
                                                               attn_implementation=args.model.attn_implementation,
                                                               trust_remote_code=args.model.trust_remote_code)
    if args.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    # Seed again after loading: building or converting a model may consume or reset the RNG, and the adapter's
    # initialisation must not depend on whether the model was cached.
    torch.manual_seed(seed + accelerator.process_index)
    if args.lora.use_lora:
        lora_args = args.get_lora_args()
        layers = args.lora_layers(model.config.num_hidden_layers)
        if layers is not None and lora_args["target_modules"] == "all-linear":
            # PEFT takes layers_to_transform only with named modules: all-linear spelled out for this model
            lora_args["target_modules"] = linear_module_names(model)
        model = get_peft_model(model, LoraConfig(**lora_args, layers_to_transform=layers))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, args)
    scheduler = build_scheduler(optimizer, args)
    trainer = Trainer(args, accelerator, runtime, model, tokenizer, optimizer, scheduler, params, model_dir,
                      stop_flag=stop_flag)
    for note in args.notes:
        trainer.log(f"note: {note}")
    trainable = sum(p.numel() for p in params)
    trainer.log(f"model {args.model.model_id} loaded in {time.time() - t0:.1f}s; {trainable:,} trainable parameters; "
                f"{accelerator.num_processes} process(es) on {accelerator.device}, precision "
                f"{accelerator.mixed_precision if accelerator.mixed_precision != 'no' else 'fp32'}")

    loaded = _read_resume_checkpoint(trainer, runtime, args)
    if loaded is not None:
        # Restores rank 0's RNG exactly: the same dropout masks and samples an uninterrupted run would draw.
        checkpoint.apply(loaded, model, optimizer, scheduler)
        if accelerator.process_index > 0:
            torch.manual_seed(seed + accelerator.process_index + loaded.step)
        trainer.step, trainer.data_position = loaded.step, loaded.data_position
        trainer.log(f"resumed from step {trainer.step} (data position {trainer.data_position})")
    trainer.model, trainer.optimizer = accelerator.prepare(model, optimizer)

    if args.training.task == "grpo":
        from twinkle_trainer.grpo import train_grpo

        train_grpo(trainer)
    elif args.training.task == "gkd":
        from twinkle_trainer.gkd import train_gkd

        train_gkd(trainer)
    else:
        from twinkle_trainer.sft import train_sft

        train_sft(trainer)
    accelerator.wait_for_everyone()
    if runtime is not None:
        if trainer.step >= args.training.max_steps:
            unwrapped = accelerator.unwrap_model(trainer.model)
            out_dir = args.training.output_dir or str(runtime.paths.root / "adapter")
            unwrapped.save_pretrained(out_dir)
            trainer.tokenizer.save_pretrained(out_dir)  # the adapter (or model) directory loads on its own
            if args.checkpoint.merge_and_sync and args.lora.use_lora:
                unwrapped.merge_and_unload().save_pretrained(out_dir + "-merged")
                trainer.tokenizer.save_pretrained(out_dir + "-merged")
            runtime.log(f"finished {trainer.step} steps; adapter saved to {out_dir}")
            runtime.finish("completed")
        else:
            runtime.finish("stopped")
    accelerator.end_training()
    return 0
