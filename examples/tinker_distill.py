"""On-policy distillation through the tinker API, the way tinker-cookbook's distillation recipe does it: the student
samples, the teacher scores the same tokens (compute_logprobs), and the student takes an importance-sampling step
with per-token advantages = -(log p_student - log p_teacher), the negative reverse KL.

The teacher here is the same base model taught a little arithmetic first (SFT through the same service), so the
script runs offline. Start the service, then run this (or start it from the dashboard's `n` or with
`twinkle-tui --run` to see it as a run):

    twinkle-tui serve &
    python examples/tinker_distill.py     # TINKER_BASE_URL defaults to the local service, http://127.0.0.1:8000

Prints one line per step; the KL to the teacher falls as the student takes on the teacher's answers. The per-token
advantages have a constant baseline subtracted (the batch's mean KL): with few samples and a student far from the
teacher, most raw advantages are negative, and the first steps would push probability onto tokens the teacher likes
even less (the KL rose for several steps before it fell).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.request

import numpy as np
import tinker
from tinker import types


def problems(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append((f"Q: {a}+{b}=\nA:", f" {a + b}\n"))
    return out


def teach(sc: tinker.ServiceClient, base: str, steps: int, lr: float) -> tinker.SamplingClient:
    """The teacher: a LoRA taught the answers by SFT; returns a sampling client over its weights."""
    tc = sc.create_lora_training_client(base_model=base, rank=8, seed=0, user_metadata={"name": "teacher"}).result()
    tok = tc.get_tokenizer()
    data = []
    for prompt, answer in problems(32, seed=1):
        p, c = tok.encode(prompt, add_special_tokens=False), tok.encode(answer, add_special_tokens=False)
        ids = p + c
        weights = np.array([0.0] * (len(p) - 1) + [1.0] * len(c), dtype=np.float32)
        data.append(types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                                loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64),
                                                "weights": weights}))
    for step in range(steps):
        out = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=lr)).result()
        loss = out.result().metrics["loss:sum"] / sum(float(d.loss_fn_inputs["weights"].to_numpy().sum())
                                                       for d in data)
        print(json.dumps({"phase": "teacher", "step": step + 1, "loss": round(loss, 4)}), flush=True)
    return tc.save_weights_and_get_sampling_client().result()


def distill(sc: tinker.ServiceClient, teacher: tinker.SamplingClient, base: str, steps: int, lr: float,
            group: int, max_tokens: int) -> list[float]:
    student = sc.create_lora_training_client(base_model=base, rank=8, seed=1,
                                              user_metadata={"name": "student"}).result()
    tok = student.get_tokenizer()
    prompts = [tok.encode(p, add_special_tokens=False) for p, _ in problems(64, seed=2)]
    kls = []
    for step in range(steps):
        sampler = student.save_weights_and_get_sampling_client().result()
        batch = prompts[(step * 4) % len(prompts) :][:4]
        futures = [sampler.sample(types.ModelInput.from_ints(p), group,
                                  types.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=step, stop=["\n"]))
                   for p in batch]
        scored = []
        for prompt, future in zip(batch, futures, strict=True):
            for seq in future.result().sequences:
                if not seq.tokens:
                    continue
                full = prompt + list(seq.tokens)
                teacher_lp = teacher.compute_logprobs(types.ModelInput.from_ints(full)).result()
                student_lp = np.array(seq.logprobs, dtype=np.float32)
                scored.append((prompt, full, student_lp, student_lp - np.array(teacher_lp[len(prompt) :],
                                                                               dtype=np.float32)))
        every = np.concatenate([kl for *_, kl in scored]) if scored else np.zeros(1, np.float32)
        kl_sum, n_tokens = float(every.sum()), sum(len(kl) for *_, kl in scored)
        baseline = float(every.mean())  # a constant baseline: the same expected gradient, far less variance
        data = []
        for prompt, full, student_lp, reverse_kl in scored:
            n = len(full) - 1
            logprobs, advantages = np.zeros(n, np.float32), np.zeros(n, np.float32)
            logprobs[len(prompt) - 1 :] = student_lp
            advantages[len(prompt) - 1 :] = -(reverse_kl - baseline)
            data.append(types.Datum(model_input=types.ModelInput.from_ints(full[:-1]),
                                    loss_fn_inputs={"target_tokens": np.array(full[1:], dtype=np.int64),
                                                    "logprobs": logprobs, "advantages": advantages}))
        student.forward_backward(data, "importance_sampling")
        student.optim_step(types.AdamParams(learning_rate=lr)).result()
        kls.append(kl_sum / max(1, n_tokens))
        print(json.dumps({"phase": "student", "step": step + 1, "kl/teacher": round(kls[-1], 4),
                          "tokens": n_tokens}), flush=True)
    return kls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--teacher-steps", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--teacher-lr", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=6)
    args = ap.parse_args()
    base_url = os.environ.setdefault("TINKER_BASE_URL", "http://127.0.0.1:8000")  # the local service by default
    os.environ.setdefault("TINKER_API_KEY", "tml-local")
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    try:  # the SDK retries a refused connection for minutes: say at once that nothing answers
        urllib.request.urlopen(f"{base_url.rstrip('/')}/api/v1/healthz", timeout=5).close()
    except OSError as exc:
        sys.exit(f"error: no tinker service answers at {base_url} ({getattr(exc, 'reason', exc)}); start one with "
                 "`twinkle-tui serve` or set TINKER_BASE_URL")
    sc = tinker.ServiceClient()
    teacher = teach(sc, args.base, args.teacher_steps, args.teacher_lr)
    kls = distill(sc, teacher, args.base, args.steps, args.lr, args.group, args.max_tokens)
    third = max(1, len(kls) // 3)
    print(f"KL to the teacher: {np.mean(kls[:third]):.4f} in the first steps, {np.mean(kls[-third:]):.4f} in the "
          "last", flush=True)


if __name__ == "__main__":
    main()
