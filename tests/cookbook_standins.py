"""Run a tinker-cookbook recipe unchanged against the local training service, offline.

    python tests/cookbook_standins.py tinker_cookbook.recipes.sl_loop model_name=builtin:tiny-llama ...

Three things are put in place before the recipe's module runs, none of them a change to a cookbook file:
- local stand-ins for the hub datasets the recipes load (datasets.load_dataset), small, written here;
- the `role_colon` renderer for this service's built-in models (model_info knows only hub models);
- the tokenizer of a built-in model from the service's own converted copy (tokenizer_utils.register_tokenizer,
  the cookbook's hook for custom tokenizers).

The shapes of the stand-in records follow the public datasets' documented schemas (field names only; the text
is ours): HuggingFaceH4/no_robots (messages), openai/gsm8k "main" (question, answer ending "#### N"),
Anthropic/hh-rlhf (chosen, rejected: "\\n\\nHuman: ...\\n\\nAssistant: ..."), allenai/tulu-3-sft-mixture (messages),
zwhe99/DeepMath-103K (question, final_answer).
"""

from __future__ import annotations

import random
import runpy
import sys
from typing import Any

BUILTINS = ("builtin:tiny-llama", "builtin:tiny-qwen2", "builtin:smollm2-135m-instruct")


def _chats(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"prompt_id": f"p{i}", "category": "Math",
                    "messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                 {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    return out


def _gsm8k(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append({"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                    "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"})
    return out


def _hh(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        ask = f"\n\nHuman: What is {a} times {b}?\n\nAssistant:"
        out.append({"chosen": f"{ask} It is {a * b}.", "rejected": f"{ask} I do not know."})
    return out


def _deepmath(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"question": f"Compute {a} + {b}.", "final_answer": str(a + b), "difficulty": 1.0}
            for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(n))]


STANDINS: dict[str, Any] = {
    "HuggingFaceH4/no_robots": lambda: {"train": _chats(256, 0), "test": _chats(128, 1)},
    "openai/gsm8k": lambda: {"train": _gsm8k(128, 0), "test": _gsm8k(16, 1)},
    "Anthropic/hh-rlhf": lambda: {"train": _hh(64, 0), "test": _hh(16, 1)},
    "allenai/tulu-3-sft-mixture": lambda: {"train": _chats(64, 2)},
    "zwhe99/DeepMath-103K": lambda: {"train": _deepmath(64, 3)},
}


def load_dataset(path: str, name: str | None = None, split: str | None = None, **_: Any) -> Any:
    import datasets

    if path not in STANDINS:
        raise RuntimeError(f"no local stand-in for the hub dataset {path!r} (this test runs offline)")
    splits = {k: datasets.Dataset.from_list(v) for k, v in STANDINS[path]().items()}
    if split is not None:
        return splits[split.split("[")[0]]
    return datasets.DatasetDict(splits)


def install() -> None:
    import datasets
    from tinker_cookbook import model_info, tokenizer_utils
    from transformers import AutoTokenizer

    from twinkle_trainer.models import resolve_model_dir

    datasets.load_dataset = load_dataset
    original = model_info.get_recommended_renderer_names

    def renderers(model_name: str) -> list[str]:
        return ["role_colon"] if model_name.startswith("builtin:") else original(model_name)

    model_info.get_recommended_renderer_names = renderers
    for name in BUILTINS:
        tokenizer_utils.register_tokenizer(name, lambda name=name: AutoTokenizer.from_pretrained(  # type: ignore[misc,arg-type]
            str(resolve_model_dir(name))))


if __name__ == "__main__":
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
