"""Local model servers the agent starts and stops: vLLM's OpenAI-compatible server for a base model (optionally
with a run's LoRA checkpoint) on chosen GPUs. Each is a supervised child in its own process group, logged to
$TWINKLE_HOME/.logs/server-<name>.log, and stopped when the app exits."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.samplers import vllm_lora_rank
from twinkle_tui.agent.embedded import free_port


class ServerError(Exception):
    """A server that cannot be started or stopped; one line."""


@dataclass
class Server:
    name: str
    kind: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def gpu_count() -> int:
    """NVIDIA GPUs visible through NVML (0 without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


class ServerManager:
    def __init__(self, home: Path, python: str = sys.executable) -> None:
        self.home = home
        self.python = python
        self.servers: dict[str, Server] = {}

    def vllm_command(self, model: str, port: int, lora: tuple[str, Path] | None = None, lora_rank: int = 8,
                     tensor_parallel: int = 1) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--tensor-parallel-size", str(tensor_parallel)]
        if lora is not None:
            cmd += ["--enable-lora", "--max-lora-rank", str(vllm_lora_rank(lora_rank)), "--lora-modules",
                    f"{lora[0]}={lora[1]}"]
        return cmd

    def start_vllm(self, name: str, model: str, gpus: list[int] | None = None, lora: tuple[str, Path] | None = None,
                   lora_rank: int = 8) -> Server:
        if name in self.servers and self.servers[name].alive:
            raise ServerError(f"a server named {name!r} is already running at {self.servers[name].url}")
        count = gpu_count()
        if count == 0:
            raise ServerError("start_server needs an NVIDIA GPU for vLLM, and none is visible on this machine")
        if importlib.util.find_spec("vllm") is None:
            raise ServerError("start_server needs vLLM: pip install 'twinkle-tui[gpu]'")
        chosen = gpus or [0]
        if any(g >= count or g < 0 for g in chosen):
            raise ServerError(f"GPUs {chosen} asked for, but this machine has {count} (0-{count - 1})")
        port = free_port()
        log = self.home / ".logs" / f"server-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in chosen)}
        cmd = self.vllm_command(model, port, lora, lora_rank, tensor_parallel=len(chosen))
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = Server(name, "vllm", f"http://127.0.0.1:{port}/v1", proc, log, time.time())
        self.servers[name] = server
        return server

    def stop(self, name: str, grace: float = 10.0) -> Server:
        server = self.servers.pop(name, None)
        if server is None:
            known = ", ".join(self.servers) or "none"
            raise ServerError(f"no server named {name!r} (running: {known})")
        if server.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.proc.pid, signal.SIGTERM)
            try:
                server.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(timeout=grace)
        return server

    def stop_all(self) -> None:
        for name in list(self.servers):
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self.stop(name, grace=3.0)
