"""Peak memory of the GRPO log-probability step with a 150k-token vocabulary: the full log-softmax (the way it
was) against the gathered, chunked log-probabilities (the way it is), each in a fresh process, forward and backward.

    python bench/bench_logprobs.py [--vocab 151936 --rows 8 --length 256]

Prints the peak resident memory of each and the ratio (the logits themselves count in both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from twinkle_trainer.grpo import entropy_of, gathered_logprobs
vocab, rows, length, how = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
logits = torch.randn(rows, length, vocab, requires_grad=True)
targets = torch.randint(0, vocab, (rows, length))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if how == "full":
    logp_all = torch.log_softmax(logits.float() / 0.9, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
else:
    logp = gathered_logprobs(logits, targets, 0.9)
    entropy = entropy_of(logits, 0.9)
logp.sum().backward()
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": peak / 1024, "above_inputs_mib": (peak - base) / 1024, "seconds": seconds,
                  "logp": float(logp.sum()), "entropy": float(entropy.mean())}))
"""


def run(how: str, vocab: int, rows: int, length: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(vocab), str(rows), str(length), how], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ns = ap.parse_args()
    logits_mib = ns.rows * ns.length * ns.vocab * 4 / 2**20
    full = run("full", ns.vocab, ns.rows, ns.length)
    gathered = run("gathered", ns.vocab, ns.rows, ns.length)
    assert abs(full["logp"] - gathered["logp"]) < 1e-2 * abs(full["logp"]), (full, gathered)
    print(f"logits: {ns.rows} x {ns.length} x {ns.vocab} fp32 = {logits_mib:.0f} MiB (and as much for their gradient)")
    for name, r in (("full log-softmax", full), ("gathered, chunked", gathered)):
        print(f"{name:>18}: peak {r['peak_mib']:7.0f} MiB, {r['above_inputs_mib']:7.0f} MiB above the inputs, "
              f"{r['seconds']:.2f} s")
    print(f"ratio gathered/full: peak x{gathered['peak_mib'] / full['peak_mib']:.2f}, "
          f"above the inputs x{gathered['above_inputs_mib'] / full['above_inputs_mib']:.2f}, "
          f"time x{gathered['seconds'] / full['seconds']:.2f}")


if __name__ == "__main__":
    main()
