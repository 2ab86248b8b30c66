"""The training service's cost over the same work done in-process, its memory against a plain HF+PEFT loop, and
its memory over a long client, each measured in this run.

    python bench/bench_service.py [--model builtin:smollm2-135m-instruct] [--steps 8] [--batch 8] [--length 128]
    python bench/bench_service.py --mode memory [--budget 4GB] [--sizes 1,4,8,16] [--length 500]
    python bench/bench_service.py --mode rss [--model builtin:tiny-llama] [--long 1000]

speed     (default) one SFT step (forward_backward of a batch + optim_step) sent by the official tinker SDK to
          `python -m twinkle_trainer.service` on the loopback address, against the same step on the service's own engine
          (twinkle_trainer.service.lora.LoraTrainer) called in this process: same model, LoRA rank, data, optimizer.
          Target: <= 1.15x. Also the overhead of one request (a 4-token forward through the SDK and the service).
memory    the peak RSS of one forward_backward + optim_step of N x LENGTH tokens in the service (with
          --memory-budget BUDGET) against a plain HF+PEFT loop on the same batch in a process of its own (the
          whole batch in one pass, or in passes of 4 rows where the whole batch would not fit this machine).
          Target: within the budget, and below the plain loop from 4 rows on.
rss       the service's RSS after 100 and after LONG steps of one client (a retrieved result is released):
          target flat (ratio <= 1.10).

Medians over --steps steps after two warm-up steps. Both sides use every core (the service's worker and this process
never run at once).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def batch(tokenizer: object, size: int, length: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(input, target) token lists of `length` tokens each: text from the shipped self-cognition set."""
    from twinkle_trainer.dataset import load_records

    text = " ".join(m["content"] for r in load_records("builtin:self-cognition", None) for m in r["messages"])
    ids = tokenizer.encode(text)  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(size):
        start = int(rng.integers(0, len(ids) - length - 2))
        chunk = ids[start : start + length + 1]
        out.append((chunk[:-1], chunk[1:]))
    return out


def timed(fn: object, steps: int, warm: int = 2) -> list[float]:
    for _ in range(warm):
        fn()  # type: ignore[operator]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--mode", default="speed", choices=("speed", "memory", "rss"))
    ap.add_argument("--budget", default="4GB", help="memory mode: the service's --memory-budget")
    ap.add_argument("--sizes", default="1,4,8,16", help="memory mode: rows of --length tokens per request")
    ap.add_argument("--long", type=int, default=1000, help="rss mode: steps of the long client")
    ap.add_argument("--in-process", type=int, default=0, help=argparse.SUPPRESS)  # the baseline's own process
    ap.add_argument("--plain", type=int, default=0, help=argparse.SUPPRESS)  # memory mode's plain loop, N rows
    args = ap.parse_args()
    if args.in_process:
        print(json.dumps(in_process(args)))
        return
    if args.plain:
        print(json.dumps(plain_loop(args)))
        return
    home = Path(tempfile.mkdtemp(prefix="bench-service-"))
    port = free_port()
    env = {**os.environ, "TWINKLE_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TWINKLE_RUN_ID", None)
    log = open(home / "service.log", "wb")
    import torch

    # the same threads as the in-process baseline (the service's default, auto, counts the machine's free cores)
    extra = ["--threads", str(torch.get_num_threads())] + (["--memory-budget", args.budget]
                                                            if args.mode == "memory" else [])
    server = subprocess.Popen([sys.executable, "-m", "twinkle_trainer.service", "--port", str(port), *extra], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the service did not start: {(home / 'service.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        os.environ.update(TINKER_BASE_URL=f"http://127.0.0.1:{port}", TINKER_API_KEY="tml-bench-key",
                          TINKER_TELEMETRY="0", TWINKLE_HOME=str(home))
        {"speed": run, "memory": memory, "rss": long_client}[args.mode](args, server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def baseline(args: argparse.Namespace, steps: int) -> dict[str, list[float]]:
    out = subprocess.run([sys.executable, __file__, "--model", args.model, "--steps", str(steps), "--batch",
                          str(args.batch), "--length", str(args.length), "--rank", str(args.rank), "--in-process", "1"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process(args: argparse.Namespace) -> dict[str, list[float]]:
    """The same steps on the service's engine, called directly in this process."""
    import torch

    from twinkle_trainer.service import losses
    from twinkle_trainer.service.__main__ import quiet_libraries
    from twinkle_trainer.service.lora import LoraSpec, LoraTrainer
    from twinkle_trainer.service.wire import Datum

    quiet_libraries()
    torch.manual_seed(0)
    local = LoraTrainer(args.model, LoraSpec(rank=args.rank, seed=0))
    pairs = batch(local.tokenizer, args.batch, args.length, seed=0)
    data = [Datum(np.array(x, dtype=np.int64), {"target_tokens": np.array(y, dtype=np.int64)}) for x, y in pairs]
    spec = losses.LossSpec("cross_entropy", {})

    def local_step() -> None:
        local.forward_backward(data, spec, forward_only=False)
        local.optim_step(1e-4, 0.9, 0.95, 1e-12, 0.0, 0.0)

    first = pairs[0]
    tiny = [Datum(np.array(first[0][:4], dtype=np.int64), {"target_tokens": np.array(first[1][:4], dtype=np.int64)})]
    return {"step": timed(local_step, args.steps),
            "request": timed(lambda: local.forward_backward(tiny, spec, forward_only=True), args.steps * 4)}


def run(args: argparse.Namespace, service_pid: int) -> None:
    import tinker
    import torch
    from tinker import types

    from twinkle_trainer.service.__main__ import quiet_libraries

    quiet_libraries()
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model=args.model, rank=args.rank, seed=0).result()
    pairs = batch(tc.get_tokenizer(), args.batch, args.length, seed=0)
    sdk_data = [types.Datum(model_input=types.ModelInput.from_ints(x),
                            loss_fn_inputs={"target_tokens": np.array(y, dtype=np.int64)}) for x, y in pairs]
    adam = types.AdamParams(learning_rate=1e-4)

    def service_step() -> None:
        tc.forward_backward(sdk_data, "cross_entropy")
        tc.optim_step(adam).result()

    tiny = [types.Datum(model_input=types.ModelInput.from_ints(pairs[0][0][:4]),
                        loss_fn_inputs={"target_tokens": np.array(pairs[0][1][:4], dtype=np.int64)})]

    def service_request() -> None:
        tc.forward(tiny, "cross_entropy").result()

    # The baseline runs in a process of its own (as the service does: no SDK threads beside it), in two rounds of
    # opposite order (service, in-process, in-process, service) so that drift favours neither side.
    half = max(1, args.steps // 2)
    served = timed(service_step, half)
    served_request = timed(service_request, half * 4)
    local = [baseline(args, half) for _ in range(2)]
    served += timed(service_step, half, warm=0)
    served_request += timed(service_request, half * 4, warm=0)
    in_process = statistics.median(local[0]["step"] + local[1]["step"])
    in_process_request = statistics.median(local[0]["request"] + local[1]["request"])
    served_s, served_request_s = statistics.median(served), statistics.median(served_request)
    tokens = args.batch * args.length
    print(f"model {args.model}, LoRA rank {args.rank}, batch {args.batch} x {args.length} tokens, "
          f"{torch.get_num_threads()} threads, medians of {args.steps} steps")
    print(f"step     service {served_s:.3f} s ({tokens / served_s:,.0f} tokens/s)  in-process {in_process:.3f} s "
          f"({tokens / in_process:,.0f} tokens/s)  ratio x{served_s / in_process:.3f}  (target <= 1.15)")
    print(f"request  service {served_request_s * 1000:.1f} ms  in-process {in_process_request * 1000:.1f} ms  "
          f"overhead {(served_request_s - in_process_request) * 1000:.1f} ms per request  "
          f"ratio x{served_request_s / in_process_request:.2f}")



# ---------------------------------------------------------------------- memory
def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def current_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now


def token_rows(size: int, length: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, length).tolist(), rng.integers(3, vocab, length).tolist()) for _ in range(size)]


def plain_loop(args: argparse.Namespace) -> dict[str, float]:
    """The baseline: the model, LoRA on every linear layer, AdamW, one step over N rows; the process's peak RSS."""
    import torch
    from peft import LoraConfig, get_peft_model

    from twinkle_trainer.models import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer(args.model)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=32, target_modules="all-linear"))
    vocab = model.get_input_embeddings().weight.shape[0]
    rows = token_rows(args.plain, args.length, vocab, seed=0)
    micro = args.plain if args.plain * args.length <= 4 * 500 else 4  # the whole batch where it fits this machine
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for i in range(0, len(rows), micro):
        ids = torch.tensor([r[0] for r in rows[i : i + micro]])
        targets = torch.tensor([r[1] for r in rows[i : i + micro]])
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        loss.backward()
        del logits, loss
    optimizer.step()
    return {"peak": peak_rss(os.getpid()), "micro": micro}


def memory(args: argparse.Namespace, service_pid: int) -> None:
    import tinker
    from tinker import types

    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model=args.model, rank=args.rank, seed=0).result()
    vocab = tc.get_tokenizer().vocab_size
    print(f"model {args.model}, LoRA rank {args.rank}, rows of {args.length} tokens, service --memory-budget "
          f"{args.budget}; peak RSS of one forward_backward + optim_step")
    for size in [int(x) for x in args.sizes.split(",")]:
        data = [types.Datum(model_input=types.ModelInput.from_ints(x),
                            loss_fn_inputs={"target_tokens": np.array(y, dtype=np.int64)})
                for x, y in token_rows(size, args.length, vocab, seed=size)]
        reset_peak(service_pid)
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        served = peak_rss(service_pid)
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--rank", str(args.rank), "--length",
                              str(args.length), "--plain", str(size)], capture_output=True, text=True, check=True)
        plain = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size:3d} x {args.length}  service {served / 2**30:5.2f} GB  plain loop {plain['peak'] / 2**30:5.2f} GB "
              f"({plain['micro']} rows a pass)  ratio x{served / plain['peak']:.2f}", flush=True)
    sc.close("success").result()


def long_client(args: argparse.Namespace, service_pid: int) -> None:
    import tinker
    from tinker import types

    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model=args.model, rank=args.rank, seed=0).result()
    pairs = batch(tc.get_tokenizer(), args.batch, args.length, seed=0)
    data = [types.Datum(model_input=types.ModelInput.from_ints(x),
                        loss_fn_inputs={"target_tokens": np.array(y, dtype=np.int64)}) for x, y in pairs]
    rss = {}
    for step in range(1, args.long + 1):
        fb = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        fb.result()
        if step in (100, args.long):
            rss[step] = current_rss(service_pid)
    print(f"model {args.model}, batch {args.batch} x {args.length} tokens: service RSS after 100 steps "
          f"{rss[100] / 2**20:.0f} MB, after {args.long} {rss[args.long] / 2**20:.0f} MB, "
          f"ratio x{rss[args.long] / rss[100]:.3f} (target <= 1.10)")
    sc.close("success").result()


if __name__ == "__main__":
    main()
