"""Trainer benchmarks on SmolLM2-135M (CPU here), each against a baseline measured in the same run.

    python bench/bench_trainer.py [sft] [grpo]

sft   training tokens/s of the embedded trainer (examples/sft_smollm2.toml, 12 steps) vs a plain hand-written
      HF + PEFT loop over the same batches with the same LoRA (target: >= 1.0x).
trl   step time vs TRL's SFTTrainer with the same model, LoRA, data and batch (only if trl is installed).
grpo  the time split of a GRPO step (generate / reward / train / sync) for examples/grpo_arith.yaml, as shares of
      the step time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STEPS = 12


def trainer_metrics(config: str, *overrides: str) -> list[dict]:
    """Run the embedded trainer in this process on a fresh run id; returns its metric lines."""
    from twinkle_trainer.config import CLI
    from twinkle_trainer.train import run

    run_id = f"bench-{os.getpid()}-{time.time_ns()}"
    os.environ["TWINKLE_RUN_ID"] = run_id
    run(CLI.from_args([config, *overrides]))
    path = Path(os.environ["TWINKLE_HOME"]) / run_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def bench_sft() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from twinkle_trainer.config import CLI
    from twinkle_trainer.dataset import DataOrder, collate, load_records, tokenize_sft
    from twinkle_trainer.models import load_model_and_tokenizer

    config = str(REPO / "examples" / "sft_smollm2.toml")
    rows = trainer_metrics(config, "--max_steps", str(STEPS), "--save_steps", "1000", "--num_warmup_steps", "0")
    ours = statistics.median(r["tokens/s"] for r in rows[2:])

    # Baseline: the loop from the PEFT examples, same model, same LoRA, same batches, same thread count.
    args = CLI.from_args([config])
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(args.model.model_id)
    model = get_peft_model(model, LoraConfig(**args.get_lora_args(),
                                             layers_to_transform=args.lora_layers(model.config.num_hidden_layers)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.optimizer.learning_rate)
    records = load_records(args.dataset.dataset_id, None, system=args.template.system)
    examples = [e for e in (tokenize_sft(r, tok, args.template.max_length, "left") for r in records) if e]
    order = DataOrder(len(examples), args.training.seed)
    model.train()
    rates = []
    for step in range(STEPS):
        batch_ex = [examples[i] for i in order.take(step * args.training.batch_size, args.training.batch_size)]
        batch = collate(batch_ex, tok.pad_token_id)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        t = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        rates.append(tokens / (time.perf_counter() - t))
    base = statistics.median(rates[2:])
    print(f"SFT on SmolLM2-135M, CPU, {STEPS} steps of {args.training.batch_size} examples (median after 2 warm-up steps):")
    print(f"  hand-written HF + PEFT loop: {base:7.1f} tokens/s   embedded trainer: {ours:7.1f} tokens/s   "
          f"ratio {ours / base:.2f}x   [target >= 1.0x]")
    print("  (trainer tokens/s counts the whole step: data, forward, backward, clip, optimizer, scheduler, logging;"
          " the baseline times forward to optimizer step only)")


def bench_trl() -> None:
    """The embedded trainer vs TRL's SFTTrainer on the same model, LoRA, data and batch size (needs `pip install
    trl`; not a dependency). TRL's time is its train_runtime over the same number of steps."""
    import statistics as st

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from twinkle_trainer.config import CLI
    from twinkle_trainer.dataset import load_records
    from twinkle_trainer.models import load_model_and_tokenizer

    config = str(REPO / "examples" / "sft_smollm2.toml")
    rows = trainer_metrics(config, "--max_steps", str(STEPS), "--save_steps", "1000", "--num_warmup_steps", "0")
    ours_step = st.median(b["ts"] - a["ts"] for a, b in zip(rows[1:], rows[2:], strict=False))
    args = CLI.from_args([config])
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(args.model.model_id)
    records = load_records(args.dataset.dataset_id, None, system=args.template.system)
    data = Dataset.from_list([{"messages": r["messages"]} for r in records])
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(output_dir=out, max_steps=STEPS, per_device_train_batch_size=args.training.batch_size,
                        learning_rate=args.optimizer.learning_rate, logging_steps=1, report_to=[], save_strategy="no",
                        use_cpu=True, max_length=args.template.max_length, assistant_only_loss=False,
                        completion_only_loss=None, packing=False, lr_scheduler_type="constant")
        lora = LoraConfig(**args.get_lora_args(), layers_to_transform=args.lora_layers(model.config.num_hidden_layers))
        trl_trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
        t = time.perf_counter()
        trl_trainer.train()
        trl_total = time.perf_counter() - t
    trl_step = trl_total / STEPS
    print(f"SFT step time on SmolLM2-135M, CPU, batch {args.training.batch_size}, {STEPS} steps:")
    print(f"  TRL SFTTrainer {trl_step:.2f} s/step (whole train() / steps)   embedded trainer {ours_step:.2f} s/step "
          f"(median)   ratio TRL/ours {trl_step / ours_step:.2f}x")


def bench_grpo() -> None:
    rows = trainer_metrics(str(REPO / "examples" / "grpo_arith.yaml"), "--max_steps", "6", "--save_steps", "1000")
    parts = ["time/generate", "time/reward", "time/train", "time/sync"]
    med = {p: statistics.median(r[p] for r in rows[1:]) for p in parts}
    total = sum(med.values())
    print(f"GRPO step on SmolLM2-135M, CPU, examples/grpo_arith.yaml (median of steps 2-6): {total:.2f} s")
    for p in parts:
        print(f"  {p[5:]:<9} {med[p]:7.3f} s  {med[p] / total:6.1%} of the step")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TWINKLE_HOME", tmp)
        for name in sys.argv[1:] or ["sft", "grpo"]:
            {"sft": bench_sft, "grpo": bench_grpo, "trl": bench_trl}[name]()
