"""Writes twinkle_trainer/data/mixed_lengths.jsonl: SFT examples with a realistic spread of lengths.

    python bench/make_mixed_lengths.py [--count 400] [--seed 7]

Instruction data is long-tailed: most answers are a sentence or a paragraph, a few run to pages (Alpaca, Dolly and
OpenAssistant all look like this). The self-cognition set is the opposite (every example about the same length), so
padding costs it nothing and packing cannot show what it saves. The examples here are questions about functions and
classes of CPython's standard library, answered with their docstrings (text of the Python Software Foundation,
PSF License 2.0, https://docs.python.org/3/license.html; each record names its object in `source`). Answers are
drawn so their lengths follow a log-normal (median about 60 words, a long tail past 300), with the seed fixed, so
the file is the same on every run of this script with the same Python version.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "twinkle_trainer" / "data" / "mixed_lengths.jsonl"
MODULES = ["json", "os", "os.path", "re", "random", "statistics", "itertools", "functools", "collections", "pathlib",
           "datetime", "textwrap", "string", "shutil", "subprocess", "heapq", "bisect", "math", "csv", "argparse",
           "logging", "threading", "queue", "zlib", "base64", "hashlib", "fractions", "decimal", "difflib", "glob",
           "fnmatch", "tempfile", "gzip", "tarfile", "zipfile", "urllib.parse", "html", "email.utils", "uuid", "time",
           "calendar", "copy", "pprint", "inspect", "dataclasses", "enum", "typing", "contextlib", "operator", "io",
           "struct", "array", "sqlite3", "socket", "select", "signal", "traceback", "warnings", "weakref", "abc"]
QUESTIONS = ["What does `{name}` do in Python?", "Explain `{name}` from the `{module}` module.",
             "How do I use `{name}`?", "Describe the Python function `{name}`.",
             "I found `{name}` in some code. What is it for, and how does it behave?"]


def docstrings() -> list[tuple[str, str, str]]:
    """(module, qualified name, cleaned docstring) of public functions, classes and methods, without duplicates."""
    seen: set[str] = set()
    out = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            home = getattr(obj, "__module__", None) or module_name
            if name.startswith("_") or home.split(".")[0].lstrip("_") != module_name.split(".")[0]:
                continue
            members = [(name, obj)]
            if inspect.isclass(obj):
                members += [(f"{name}.{m}", f) for m, f in sorted(vars(obj).items())
                            if not m.startswith("_") and callable(f)]
            for qual, thing in members:
                doc = inspect.getdoc(thing)
                if not doc or len(doc.split()) < 4 or doc in seen:
                    continue
                seen.add(doc)
                out.append((module_name, f"{module_name}.{qual}", doc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ns = ap.parse_args()
    rng = random.Random(ns.seed)
    pool = docstrings()
    by_words = sorted(pool, key=lambda d: len(d[2].split()))
    lengths = [len(d[2].split()) for d in by_words]
    chosen: list[tuple[str, str, str]] = []
    used: set[int] = set()
    while len(chosen) < ns.count:
        target = min(700, max(4, int(rng.lognormvariate(math.log(60), 0.9))))
        # the unused docstring closest to the target length
        i = min(range(len(lengths)), key=lambda k: (k in used, abs(lengths[k] - target)))
        if i in used:
            break
        used.add(i)
        chosen.append(by_words[i])
    rng.shuffle(chosen)
    with open(OUT, "w", encoding="utf-8") as f:
        for module, name, doc in chosen:
            question = rng.choice(QUESTIONS).format(name=name, module=module)
            record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": doc}],
                      "source": f"CPython standard library docstring of {name} (PSF License 2.0)"}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    words = sorted(len(d[2].split()) for d in chosen)
    print(f"{len(chosen)} examples to {OUT}: answer words min {words[0]}, median {words[len(words) // 2]}, "
          f"p90 {words[int(len(words) * 0.9)]}, max {words[-1]}; {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
