"""The training service's cost over the same work done in-process, both measured in this run.

    python bench/bench_service.py [--model builtin:smollm2-135m-instruct] [--steps 8] [--batch 8] [--length 128]

step      one SFT step (forward_backward of a batch + optim_step) sent by the official tinker SDK to
          `python -m trainer.service` on the loopback address, against the same step on the service's own engine
          (trainer.service.lora.LoraTrainer) called in this process: same model, LoRA rank, data, optimizer.
          Target: <= 1.15x.
request   the overhead of one request: a forward of a 4-token datum through the SDK and the service, against the
          same forward in-process (the difference is HTTP, protobuf, the future and its long poll).

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
    from trainer.dataset import load_records

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
    ap.add_argument("--in-process", type=int, default=0, help=argparse.SUPPRESS)  # the baseline's own process
    args = ap.parse_args()
    if args.in_process:
        print(json.dumps(in_process(args)))
        return
    home = Path(tempfile.mkdtemp(prefix="bench-service-"))
    port = free_port()
    env = {**os.environ, "TWINKLE_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TWINKLE_RUN_ID", None)
    log = open(home / "service.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "trainer.service", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
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
        run(args)
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

    from trainer.service import losses
    from trainer.service.__main__ import quiet_libraries
    from trainer.service.lora import LoraSpec, LoraTrainer
    from trainer.service.wire import Datum

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


def run(args: argparse.Namespace) -> None:
    import tinker
    import torch
    from tinker import types

    from trainer.service.__main__ import quiet_libraries

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
    served, served_request = statistics.median(served), statistics.median(served_request)
    tokens = args.batch * args.length
    print(f"model {args.model}, LoRA rank {args.rank}, batch {args.batch} x {args.length} tokens, "
          f"{torch.get_num_threads()} threads, medians of {args.steps} steps")
    print(f"step     service {served:.3f} s ({tokens / served:,.0f} tokens/s)  in-process {in_process:.3f} s "
          f"({tokens / in_process:,.0f} tokens/s)  ratio x{served / in_process:.3f}  (target <= 1.15)")
    print(f"request  service {served_request * 1000:.1f} ms  in-process {in_process_request * 1000:.1f} ms  "
          f"overhead {(served_request - in_process_request) * 1000:.1f} ms per request  "
          f"ratio x{served_request / in_process_request:.2f}")


if __name__ == "__main__":
    main()
