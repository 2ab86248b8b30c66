"""python -m twinkle_trainer.service [--host 127.0.0.1] [--port 8000] [--zstd] [--threads auto] ...

The training service on its own (`twinkle-tui serve` runs it as a supervised run). The API key, if any, comes from
the environment (TWINKLE_SERVICE_API_KEY, or the variable --api-key-env names) or a file (--api-key-file), never
from the command line, so it is not in the process list or the run's recorded command. Binding an address other
than loopback requires one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from twinkle_trainer.protocol import RUN_ID_ENV, RunPaths, twinkle_home
from twinkle_trainer.service.memory import GiB, default_budget, parse_size
from twinkle_trainer.service.startup import (
    KEY_ENV,
    KeySourceError,
    check_key,
    choose_threads,
    chosen_sampler,
    is_loopback,
    missing_packages,
    option_problem,
    port_problem,
    read_key_env,
    read_key_file,
    sampler_problem,
)

__all__ = ["KEY_ENV", "check_key", "is_loopback", "main", "missing_packages", "quiet_libraries"]


def quiet_libraries() -> None:
    """No progress bars (a log of a long-lived service is read line by line) and no warning that does not apply:
    the unembedding's LoRA is trained on purpose while the embedding it is tied to stays frozen."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
    warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
    except ImportError:
        pass


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m twinkle_trainer.service", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key-file", metavar="PATH", help="read the API key clients must send from this file")
    ap.add_argument("--api-key-env", metavar="NAME", help=f"read the API key from this variable (default {KEY_ENV}, "
                    "if set); named, the service does not start without it")
    ap.add_argument("--zstd", action="store_true", help="ask clients to zstd-compress forward_backward bodies")
    ap.add_argument("--sampler", default="auto", choices=("auto", "hf", "vllm"),
                    help="auto: vLLM on an NVIDIA GPU with the gpu extra, else HF generate")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="GPU memory share of the vLLM engine")
    ap.add_argument("--memory-budget", default="auto", metavar="SIZE",
                    help="the most memory (RSS) the service may use, e.g. 6GB; auto: 40%% of this machine's memory, "
                         "at most what is free less 2 GB. Micro-batches are sized to it; a request that cannot fit is "
                         "refused")
    ap.add_argument("--threads", default="auto",
                    help="torch's threads: a number, or auto (the free cores of this machine, at least one)")
    ap.add_argument("--model-root", action="append", default=None, metavar="DIR",
                    help="a folder base models may be loaded from (repeatable; default: the converted-model cache "
                         "and the Hugging Face cache)")
    ap.add_argument("--max-connections", type=int, default=512, help="open connections at most (within the file "
                    "handle limit)")
    ap.add_argument("--idle-timeout", type=float, default=30.0,
                    help="seconds a connection may stay silent before it is closed")
    ap.add_argument("--gap-timeout", type=float, default=30.0,
                    help="seconds a client's requests wait for an earlier one that never arrived")
    return ap


def resolve_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        return read_key_file(args.api_key_file)
    if args.api_key_env:
        return read_key_env(args.api_key_env, required=True)
    return read_key_env(KEY_ENV, required=False)  # out of the environment: the runs the service spawns never see it


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        key = resolve_key(args)
        threads = choose_threads(args.threads)
        budget = default_budget() if args.memory_budget == "auto" else parse_size(args.memory_budget)
    except (KeySourceError, ValueError) as exc:
        print(f"twinkle service: {exc}", file=sys.stderr)
        return 2
    problem = missing_packages() or check_key(args.host, key) or option_problem(args) or sampler_problem(args.sampler)
    if problem:
        print(f"twinkle service: {problem}", file=sys.stderr)
        return 2
    busy = port_problem(args.host, args.port)
    if busy:
        print(f"twinkle service: {busy}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="[service %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "uvicorn.access", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_libraries()

    from pathlib import Path

    import torch

    from twinkle_trainer.service.app import create_app
    from twinkle_trainer.service.catalog import ModelCatalog
    from twinkle_trainer.service.memory import MemoryBudget
    from twinkle_trainer.service.sampler_engine import Samplers
    from twinkle_trainer.service.server import serve
    from twinkle_trainer.service.service import Service
    from twinkle_trainer.service.settings import ServiceSettings

    torch.set_num_threads(threads)
    kind = chosen_sampler(args.sampler)
    roots = [Path(r) for r in args.model_root] if args.model_root else None
    service = Service(twinkle_home(), Samplers(kind, args.gpu_memory_utilization), args.gap_timeout,
                      ModelCatalog(roots), MemoryBudget(budget))
    app = create_app(service, ServiceSettings(args.host, args.port, key, args.zstd))
    url = f"http://{args.host}:{args.port}"
    own = os.environ.get(RUN_ID_ENV)
    if own:  # started as a run (twinkle-tui serve, the agent's start_server)
        service.announce(RunPaths(service.home / own), url, kind)
    print(f"[twinkle] training service on {url} (runs in {service.home}; sampling with "
          f"{'vLLM' if kind == 'vllm' else 'HF generate'}; {threads} thread{'s' if threads > 1 else ''}; memory "
          f"budget {budget / GiB:.1f} GB)",
          flush=True)
    print(f"[twinkle] clients: TINKER_BASE_URL={url} TINKER_API_KEY="
          + ("<the key you set>" if key else "tml-local (any key that starts with tml-)"), flush=True)
    try:
        started = serve(app, args.host, args.port, args.max_connections, args.idle_timeout)
    finally:
        finished = service.shutdown()
    if not started:
        print(f"twinkle service: could not listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    print("[twinkle] training service stopped", flush=True)
    if not finished:  # the worker is still inside a computation: leave without running torch's teardown under it
        print("[twinkle] the current request did not finish in time; it was abandoned", flush=True)
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
