"""python -m twinkle_trainer.service [--host 127.0.0.1] [--port 8000] [--zstd]

The training service on its own (`twinkle-tui serve` runs it as a supervised run). The API key, if any, comes from
the environment (TWINKLE_SERVICE_API_KEY), never from the command line, so it is not in the process list or the
run's recorded command. Binding an address other than loopback requires one.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import Any

from twinkle_trainer.protocol import RUN_ID_ENV, RunPaths, twinkle_home

KEY_ENV = "TWINKLE_SERVICE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def missing_packages() -> str | None:
    """Why the service cannot run in this environment (its optional packages are absent), or None."""
    import importlib.util

    absent = [name for name in ("tinker", "fastapi", "uvicorn", "zstandard") if importlib.util.find_spec(name) is None]
    if absent:
        return f"the training service needs {', '.join(absent)}: pip install 'twinkle-tui[service]'"
    return None


def chosen_sampler(kind: str) -> str:
    import importlib.util

    import torch

    from twinkle_trainer.samplers import choose_sampler

    # The service trains LoRA adapters in one process on the default device: vLLM wherever it can run.
    return choose_sampler(kind, True, "auto", 1, torch.cuda.is_available(), importlib.util.find_spec("vllm") is not None,
                          option="--sampler")


def sampler_problem(kind: str) -> str | None:
    """Why the sampler asked for cannot run here (vllm without a GPU or vLLM), or None."""
    if kind == "auto" or kind == "hf":
        return None
    from twinkle_trainer.samplers import SamplerError

    try:
        chosen_sampler(kind)
    except SamplerError as exc:
        return str(exc)
    return None


def check_key(host: str, key: str | None) -> str | None:
    """Why the service must not start with this address and key, or None."""
    if key is not None and not key.startswith("tml-"):
        return "the API key must start with 'tml-' (the tinker SDK sends no other key)"
    if key is not None and len(key) < 12:
        return "the API key is too short: use at least 8 characters after 'tml-'"
    if not is_loopback(host) and key is None:
        return (f"binding {host} exposes the service to other machines: set an API key (twinkle-tui serve "
                f"--api-key tml-..., or {KEY_ENV})")
    return None


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


def server_class() -> type:
    import contextlib
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, without raising the signal again once it has shut down: the sessions are closed
        (their runs recorded as stopped) after it returns, and the exit code is 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twinkle_trainer.service", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--zstd", action="store_true", help="ask clients to zstd-compress forward_backward bodies")
    ap.add_argument("--sampler", default="auto", choices=("auto", "hf", "vllm"),
                    help="auto: vLLM on an NVIDIA GPU with the gpu extra, else HF generate")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="GPU memory share of the vLLM engine")
    args = ap.parse_args(argv)
    key = os.environ.pop(KEY_ENV, None) or None  # out of the environment: the runs the service spawns never see it
    problem = missing_packages() or check_key(args.host, key) or sampler_problem(args.sampler)
    if not problem and not 0 < args.gpu_memory_utilization <= 1:
        problem = f"--gpu-memory-utilization must be in (0, 1] (got {args.gpu_memory_utilization})"
    if problem:
        print(f"twinkle service: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[service %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "uvicorn.access", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_libraries()

    import uvicorn

    from twinkle_trainer.service.app import create_app
    from twinkle_trainer.service.engine import Samplers
    from twinkle_trainer.service.state import Service

    kind = chosen_sampler(args.sampler)
    service = Service(twinkle_home(), Samplers(kind, args.gpu_memory_utilization))
    app = create_app(service, key, compress_fwdbwd=args.zstd)
    url = f"http://{args.host}:{args.port}"
    own = os.environ.get(RUN_ID_ENV)
    if own:  # started as a run (twinkle-tui serve, the agent's start_server)
        service.announce(RunPaths(service.home / own), url, kind)
    print(f"[twinkle] training service on {url} (runs in {service.home}; sampling with "
          f"{'vLLM' if kind == 'vllm' else 'HF generate'})", flush=True)
    print(f"[twinkle] clients: TINKER_BASE_URL={url} TINKER_API_KEY="
          + ("<the key you set>" if key else "tml-local (any key that starts with tml-)"), flush=True)
    Server = server_class()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5)
    server = Server(config)
    try:
        server.run()
    finally:
        service.shutdown()
    if not server.started:
        print(f"twinkle service: could not listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    print("[twinkle] training service stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
