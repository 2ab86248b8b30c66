"""What the service checks and settles before it serves: its packages, its address and key, the key's source,
the sampler, the port, and how many threads torch may use on this machine."""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import os
import socket
import stat
from pathlib import Path
from typing import Any

from twinkle_trainer.threads import env_threads

KEY_ENV = "TWINKLE_SERVICE_API_KEY"
KEY_MAX = 4096


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def missing_packages() -> str | None:
    """Why the service cannot run in this environment (its optional packages are absent), or None."""
    absent = [name for name in ("tinker", "fastapi", "uvicorn", "zstandard") if importlib.util.find_spec(name) is None]
    if absent:
        return f"the training service needs {', '.join(absent)}: pip install 'twinkle-tui[service]'"
    return None


def check_key(host: str, key: str | None) -> str | None:
    """Why the service must not start with this address and key, or None."""
    if key is not None and not key.startswith("tml-"):
        return "the API key must start with 'tml-' (the tinker SDK sends no other key)"
    if key is not None and len(key) < 12 and not is_loopback(host):  # guessable from other machines
        return "the API key is too short for an address other machines reach: use at least 8 characters after 'tml-'"
    if key is not None and (len(key) > KEY_MAX or any(c.isspace() or not c.isprintable() for c in key)):
        return "the API key must be one line of printable characters without spaces"
    if not is_loopback(host) and key is None:
        return (f"binding {host} exposes the service to other machines: set an API key (twinkle-tui serve "
                f"--api-key-file PATH, or {KEY_ENV})")
    return None


class KeySourceError(ValueError):
    """The key's source cannot be read; the text says which and why."""


def read_key_file(path: str) -> str:
    """The key in a file (its first line): a regular file, readable, small."""
    p = Path(path).expanduser()
    try:
        info = p.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeySourceError(f"the API key file {p} is not a regular file")
        if info.st_size > KEY_MAX:
            raise KeySourceError(f"the API key file {p} is larger than an API key")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeySourceError(f"cannot read the API key file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeySourceError(f"the API key file {p} is not text") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise KeySourceError(f"the API key file {p} is empty")
    return key


def read_key_env(name: str, required: bool) -> str | None:
    """The key in an environment variable, taken out of the environment (the runs the service starts never see
    it). `required`: the service was started with a key from there, and must not start without one."""
    key = os.environ.pop(name, None) or None
    if key is None and required:
        raise KeySourceError(f"this service takes its API key from ${name}, which is not set here; set it, or start the "
                        "service again with twinkle-tui serve --api-key-file PATH")
    return key


def chosen_sampler(kind: str) -> str:
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


def port_holder(port: int) -> str | None:
    """Which process listens on this TCP port, in words, if one can be found."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if not conn.pid:
                    return "another user's process"
                try:
                    proc = psutil.Process(conn.pid)
                    command = " ".join(proc.cmdline()[:6]) or proc.name()
                except psutil.Error:
                    command = "?"
                return f"pid {conn.pid} ({command[:160]})"
    except (psutil.Error, OSError):
        return None
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why this address cannot be listened on (the port is taken: by which process), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                return f"port {port} is in use" + (f" by {holder}" if holder else "") + \
                    "; stop it or choose another --port"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def choose_threads(setting: str, cpus: int | None = None, load: float | None = None,
                   environ: dict[str, str] | None = None) -> int:
    """Torch's intra-op threads: a number, or auto: the cores this process may use less the work already running
    on them (the 1-minute load average), at least one. On a busy machine, more threads than free cores make every
    step slower, not faster (a 6-token step took 20-38 s with the default threads on a busy 2-core machine, 0.95 s
    with one). OMP_NUM_THREADS, where set, is a ceiling."""
    if setting != "auto":
        try:
            n = int(setting)
        except ValueError:
            raise ValueError(f"--threads must be a positive number or auto (got {setting!r})") from None
        if n < 1:
            raise ValueError(f"--threads must be a positive number or auto (got {setting!r})")
        return n
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    load = load if load is not None else os.getloadavg()[0]
    free = max(1, min(cpus, int(cpus - load + 0.5)))
    return min(free, env_threads(environ) or free)  # OMP_NUM_THREADS, where set, is a ceiling


def option_problem(args: Any) -> str | None:
    """What is wrong with the service's numeric options (threads, memory budget, vLLM's memory share, connection
    limits), or None. Shared by `python -m twinkle_trainer.service` and `twinkle-tui serve`, which checks them
    before it starts anything (the same message either way)."""
    from twinkle_trainer.service.memory import parse_size

    try:
        choose_threads(args.threads, cpus=1, load=0.0)
        if args.memory_budget != "auto":
            parse_size(args.memory_budget)
    except ValueError as exc:
        return str(exc)
    if not 0 < args.gpu_memory_utilization <= 1:
        return f"--gpu-memory-utilization must be in (0, 1] (got {args.gpu_memory_utilization})"
    if not (args.max_connections >= 1 and args.idle_timeout > 0 and args.gap_timeout > 0):
        return "--max-connections, --idle-timeout and --gap-timeout must be positive"
    return None
