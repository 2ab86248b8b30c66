"""Servers the agent starts and stops.

- training: the tinker-compatible training service (twinkle_trainer.service), as a supervised run like any other (its log
  is the run's; stop it with shutdown_server or `s`), on CPU or GPU. It keeps serving after the app exits, as runs
  keep training.
- vllm: vLLM's OpenAI-compatible server for a base model (optionally with a run's LoRA checkpoint) on chosen GPUs,
  a child in its own process group, logged to $TWINKLE_HOME/.logs/server-<name>.log and stopped when the app
  exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twinkle_trainer.samplers import vllm_lora_rank
from twinkle_tui.process.controller import ProcessController, RunControlError


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(Exception):
    """A server that cannot be started or stopped; one line."""


@dataclass
class Server:
    name: str
    kind: str  # training or vllm
    url: str
    proc: subprocess.Popen[bytes]  # vllm: the server; training: the run's supervisor
    log: Path
    started: float
    run_id: str | None = None  # training: the service's run

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
    def __init__(self, home: Path, controller: ProcessController, python: str = sys.executable) -> None:
        self.home = home
        self.controller = controller  # the training service is a run: launched and stopped like one
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

    def start_training(self, name: str, port: int | None = None) -> Server:
        """The training service as a supervised run on a free loopback port (or the one asked for)."""
        from twinkle_trainer.protocol import RunKind, new_run_id
        from twinkle_trainer.service.__main__ import missing_packages
        if name in self.servers and self.servers[name].alive:
            raise ServerError(f"a server named {name!r} is already running at {self.servers[name].url}")
        if problem := missing_packages():
            raise ServerError(problem)
        port = port or free_port()
        try:
            launched = self.controller.launch_module("twinkle_trainer.service", ["--port", str(port)],
                                                     new_run_id(f"service-{port}"), model_id="tinker training service",
                                                     kind=RunKind.SERVICE)
        except (RunControlError, ValueError) as exc:
            raise ServerError(str(exc)) from None
        server = Server(name, "training", f"http://127.0.0.1:{port}", launched.supervisor,
                        self.controller.paths(launched.run_id).log, time.time(), launched.run_id)
        self.servers[name] = server
        return server

    def stop(self, name: str, grace: float = 10.0) -> Server:
        server = self.servers.pop(name, None)
        if server is None:
            known = ", ".join(self.servers) or "none"
            raise ServerError(f"no server named {name!r} (running: {known})")
        if server.kind == "training" and server.run_id:
            try:  # a graceful stop: its clients' runs are recorded as stopped
                self.controller.stop(server.run_id)
            except RunControlError:
                pass  # it has ended already
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=grace + 5)
            return server
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
        """The vLLM servers; training services are runs, and keep serving like runs keep training."""
        for name in [n for n, srv in self.servers.items() if srv.kind == "vllm"]:
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self.stop(name, grace=3.0)
