"""Trainer benchmarks on SmolLM2-135M (CPU here; the same on a GPU), each against a baseline measured in the same run.

    python bench/bench_trainer.py [sft] [trl] [grpo] [--rounds N] [--device cpu|cuda]

sft   useful tokens/s (every non-padding token of a step's examples) of the embedded trainer's SFT step (packing,
      as configured by default) vs a plain hand-written HF + PEFT loop that pads each batch to its longest example,
      on the same batches of builtin:mixed-lengths (long-tailed lengths), with the same LoRA. Steps of the two
      alternate in one process, so load on the machine hits both; the median of the rounds (target: >= 1.5x).
trl   the same against TRL's SFTTrainer with packing (its defaults, less gradient checkpointing, which ours does not
      do; needs `pip install trl`, the `bench` extra): one of our steps runs after each of TRL's, from a callback,
      and TRL's tokens are its own count of the tokens it trained on.
grpo  the time split of a GRPO step (generate / reward / train / sync) for examples/grpo_arith.yaml, as shares of
      the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = str(REPO / "examples" / "sft_smollm2.toml")
# A realistic spread of lengths: the shipped recipe's model and LoRA on the long-tailed set, with room for it.
MIXED = ["--dataset_id", "builtin:mixed-lengths", "--max_length", "512", "--batch_size", "8", "--micro_batch_size", "4",
         "--num_warmup_steps", "0", "--scheduler_cls", "constant"]


def trainer_metrics(config: str, *overrides: str) -> list[dict]:
    """Run the embedded trainer in this process on a fresh run id; returns its metric lines."""
    from twinkle_trainer.config import CLI
    from twinkle_trainer.train import run

    run_id = f"bench-{os.getpid()}-{time.time_ns()}"
    os.environ["TWINKLE_RUN_ID"] = run_id
    run(CLI.from_args([config, *overrides]))
    path = Path(os.environ["TWINKLE_HOME"]) / run_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def base_model(args: Any, device: str) -> tuple[Any, Any]:
    """The configured base model (bf16 weights on a GPU, as the trainer keeps them under LoRA) and its tokenizer."""
    import torch

    from twinkle_trainer.models import load_model_and_tokenizer

    torch.manual_seed(args.training.seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok, _ = load_model_and_tokenizer(args.model.model_id, dtype=dtype,
                                             attn_implementation=args.model.attn_implementation)
    return model, tok


def lora_model(args: Any, device: str) -> tuple[Any, Any]:
    """The configured base model with the configured LoRA (as the trainer builds it), on `device`."""
    from peft import LoraConfig, get_peft_model

    from twinkle_trainer.train import linear_module_names

    model, tok = base_model(args, device)
    lora_args = args.get_lora_args()
    layers = args.lora_layers(model.config.num_hidden_layers)
    if layers is not None and lora_args["target_modules"] == "all-linear":
        lora_args["target_modules"] = linear_module_names(model)
    return get_peft_model(model, LoraConfig(**lora_args, layers_to_transform=layers)).to(device), tok


def embedded_trainer(args: Any, device: str) -> Any:
    """The embedded trainer's Trainer (model, LoRA, optimizer, schedule, accelerator) as _train builds it, without a
    run directory: sft_step on it is exactly the step a run takes."""
    from accelerate import Accelerator

    from twinkle_trainer.loop import Trainer
    from twinkle_trainer.optim import build_optimizer, build_scheduler

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if device == "cuda" else "no")
    model, tok = lora_model(args, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, args)
    t = Trainer(args, accelerator, None, model, tok, optimizer, build_scheduler(optimizer, args), params, None)
    t.model, t.optimizer = accelerator.prepare(model, optimizer)
    t.model.train()
    return t


def hf_peft_loop(args: Any, device: str) -> Any:
    """The baseline: the loop from the PEFT examples, a padded batch per step, HF's own loss."""
    import torch

    model, tok = lora_model(args, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.optimizer.learning_rate)
    model.train()

    def step(examples: list[Any]) -> None:
        from twinkle_trainer.dataset import collate

        batch = {k: v.to(device) for k, v in collate(examples, tok.pad_token_id).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.optimizer.max_grad_norm)
        opt.step()
        opt.zero_grad()

    return step


def mixed_examples(args: Any, tok: Any) -> list[Any]:
    from twinkle_trainer.dataset import load_records, tokenize_sft

    records = load_records(args.dataset.dataset_id, None, system=args.template.system)
    out = [tokenize_sft(r, tok, args.template.max_length, args.template.truncation_strategy) for r in records]
    return [e for e in out if e is not None]


def timed(fn: Any, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_sft(rounds: int, device: str) -> None:
    import torch

    from twinkle_trainer.config import CLI
    from twinkle_trainer.packed_attention import packed_attention_in
    from twinkle_trainer.sft import choose_batching

    args = CLI.from_args([CONFIG, *MIXED])
    t = embedded_trainer(args, device)
    baseline = hf_peft_loop(args, device)
    examples = mixed_examples(args, t.tokenizer)
    with packed_attention_in(t.model) as per_example:  # as train_sft does
        batching = choose_batching(t, args.training.micro_batch_size, per_example)
        ours, base, padded_share = interleave_sft(t, batching, baseline, examples, rounds, device)
    o, b = statistics.median(ours), statistics.median(base)
    lengths = sorted(len(e.input_ids) for e in examples)
    print(f"SFT on {args.model.model_id}, {device}, builtin:mixed-lengths ({len(examples)} examples, tokens per example "
          f"median {lengths[len(lengths) // 2]}, p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]}), "
          f"batch {args.training.batch_size}, {rounds} interleaved rounds after 2 warm-up, {torch.get_num_threads()} "
          f"thread(s):")
    print(f"  plain HF + PEFT loop (padded batch; {statistics.mean(padded_share):.0%} of its tokens are padding): "
          f"{b:7.1f} useful tokens/s")
    print(f"  embedded trainer ({batching.describe()}{', attention example by example' if per_example else ''}): "
          f"{o:7.1f} useful tokens/s   ratio {o / b:.2f}x   [target >= 1.5x]")


def interleave_sft(t: Any, batching: Any, baseline: Any, examples: list[Any], rounds: int,
                   device: str) -> tuple[list[float], list[float], list[float]]:
    """Useful tokens/s of our step and the baseline's on the same batches, alternating which goes first."""
    from twinkle_trainer.dataset import DataOrder
    from twinkle_trainer.sft import sft_step

    order = DataOrder(len(examples), t.args.training.seed)
    size = t.args.training.batch_size
    ours: list[float] = []
    base: list[float] = []
    padded_share: list[float] = []
    for step in range(rounds + 2):  # two warm-up rounds
        batch = [examples[i] for i in order.take(step * size, size)]
        tokens = sum(len(e.input_ids) for e in batch)
        sides = [("ours", lambda b=batch: sft_step(t, b, batching)), ("base", lambda b=batch: baseline(b))]
        for name, fn in sides if step % 2 == 0 else sides[::-1]:
            rate = tokens / timed(fn, device)
            if step >= 2:
                (ours if name == "ours" else base).append(rate)
        padded_share.append(1 - tokens / (size * max(len(e.input_ids) for e in batch)))
    return ours, base, padded_share


def bench_trl(rounds: int, device: str) -> None:
    """TRL's SFTTrainer with packing (best-fit decreasing into rows of max_length, padding-free), same model, LoRA
    and data; after each TRL step a callback runs one step of ours on the next batch, timed on its own."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from twinkle_trainer.config import CLI
    from twinkle_trainer.dataset import DataOrder, load_records
    from twinkle_trainer.packed_attention import packed_attention_in
    from twinkle_trainer.sft import choose_batching, sft_step

    args = CLI.from_args([CONFIG, *MIXED])
    t = embedded_trainer(args, device)
    examples = mixed_examples(args, t.tokenizer)
    attention = packed_attention_in(t.model)
    per_example = attention.__enter__()  # as train_sft does, for the whole comparison
    batching = choose_batching(t, args.training.micro_batch_size, per_example)
    order = DataOrder(len(examples), args.training.seed)
    size = args.training.batch_size
    records = load_records(args.dataset.dataset_id, None, system=args.template.system)
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    mean_tokens = statistics.mean(len(e.input_ids) for e in examples)
    rows = max(1, round(size * mean_tokens / args.template.max_length))  # TRL's rows hold what our batch holds
    trl_rates: list[float] = []
    our_rates: list[float] = []

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.tokens_before = 0.0
            self.seconds = 0.0

        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.started
            step = len(our_rates) + len(warm)
            batch = [examples[i] for i in order.take(step * size, size)]
            rate = sum(len(e.input_ids) for e in batch) / timed(lambda: sft_step(t, batch, batching), device)
            (warm if step < 2 else our_rates).append(rate)

        def on_log(self, _args: Any, state: Any, control: Any,  # type: ignore[override]
                   logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs:
                tokens = float(logs["num_tokens"]) - self.tokens_before
                self.tokens_before = float(logs["num_tokens"])
                if state.global_step > 2:
                    trl_rates.append(tokens / self.seconds)

    warm: list[float] = []
    base, tok = base_model(args, device)  # TRL adds the LoRA from peft_config
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(output_dir=out, max_steps=rounds + 2, per_device_train_batch_size=rows,
                        learning_rate=args.optimizer.learning_rate, logging_steps=1, report_to=[], save_strategy="no",
                        use_cpu=device == "cpu", bf16=device == "cuda", max_length=args.template.max_length,
                        packing=True, lr_scheduler_type="constant", max_grad_norm=args.optimizer.max_grad_norm,
                        disable_tqdm=True, dataloader_num_workers=0,
                        gradient_checkpointing=False)  # TRL's default recomputes; ours does not: same work on both
        lora = LoraConfig(**args.get_lora_args(), layers_to_transform=args.lora_layers(base.config.num_hidden_layers))
        trainer = SFTTrainer(model=base, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora,
                             callbacks=[Interleave()])
        trainer.train()
    attention.__exit__(None, None, None)
    o, r = statistics.median(our_rates), statistics.median(trl_rates)
    print(f"SFT on {args.model.model_id}, {device}, builtin:mixed-lengths, {len(trl_rates)} interleaved steps after "
          f"2 warm-up:")
    print(f"  TRL SFTTrainer, packing (rows of {args.template.max_length}, {rows} per step): {r:7.1f} tokens/s   "
          f"embedded trainer ({batching.describe()}, batch {size}): {o:7.1f} tokens/s   ratio {o / r:.2f}x")


def bench_grpo() -> None:
    rows = trainer_metrics(str(REPO / "examples" / "grpo_arith.yaml"), "--max_steps", "6", "--save_steps", "1000")
    parts = ["time/generate", "time/reward", "time/train", "time/sync"]
    med = {p: statistics.median(r[p] for r in rows[1:]) for p in parts}
    total = sum(med.values())
    print(f"GRPO step on SmolLM2-135M, CPU, examples/grpo_arith.yaml (median of steps 2-6): {total:.2f} s")
    for p in parts:
        print(f"  {p[5:]:<9} {med[p]:7.3f} s  {med[p] / total:6.1%} of the step")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["sft", "grpo"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads (default: every core, as the trainer takes; 1 is steadier on a busy machine)")
    ns = ap.parse_args()
    import torch

    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TWINKLE_HOME", tmp)
        for name in ns.which:
            if name == "grpo":
                bench_grpo()
            else:
                {"sft": bench_sft, "trl": bench_trl}[name](ns.rounds, ns.device)
