"""A plain Hugging Face Trainer script made a full twinkle-tui run by one callback.

    twinkle-tui --run examples/hf_trainer.py -- --max-steps 60
    python examples/hf_trainer.py --model builtin:smollm2-135m-instruct --max-steps 30

Metrics, progress and checkpoints reach the dashboard; stop (s) ends training at a step boundary with a final save,
and resume (r) relaunches the script, which continues from that checkpoint through `resume_from_checkpoint`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from twinkle_trainer.integrations.hf import TwinkleCallback
from twinkle_trainer.models import resolve_model_dir

DATA = Path(__file__).resolve().parents[1] / "twinkle_trainer" / "data" / "self_cognition.jsonl"


class ChatData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The built-in self-cognition conversations, tokenized with the chat template, padded to one length."""

    def __init__(self, tokenizer, length: int = 96) -> None:  # type: ignore[no-untyped-def]
        self.rows = []
        for line in DATA.read_text().splitlines():
            messages = json.loads(line)["messages"]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
            pad = length - len(ids)
            self.rows.append({"input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
                              "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                              "labels": torch.tensor(ids + [-100] * pad)})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-llama")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--save-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--output-dir", default=None, help="default: hf-output/ in the run directory")
    ns = ap.parse_args()

    callback = TwinkleCallback()
    model_dir = resolve_model_dir(ns.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = TrainingArguments(
        output_dir=ns.output_dir or str(run_output_dir(callback)), max_steps=ns.max_steps,
        per_device_train_batch_size=4, learning_rate=ns.lr, logging_steps=1, save_steps=ns.save_steps,
        save_total_limit=2, report_to=[], use_cpu=not torch.cuda.is_available(), seed=7, data_seed=7,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ChatData(tokenizer), callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint())


def run_output_dir(callback: TwinkleCallback) -> Path:
    """hf-output/ inside the run's directory, so its checkpoints travel with the run."""
    from twinkle_trainer.runtime import TrainingRuntime

    return TrainingRuntime(callback.run_id).paths.root / "hf-output"


if __name__ == "__main__":
    main()
