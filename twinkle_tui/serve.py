"""`twinkle-tui serve`: the tinker-compatible training service as a supervised run, followed in this terminal (its
log here; Ctrl-C, SIGTERM or SIGHUP stop it; the dashboard shows it and the runs of its clients).

The API key comes from --api-key-file, $TWINKLE_SERVICE_API_KEY, $TINKER_API_KEY, or --api-key (which this
command takes off its own command line at once). The service reads it from a file: the one given, or one in the
user's runtime folder (a memory file system, never the disk), so a restart from the dashboard keeps the key while
no command line, meta.json or log ever holds it.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import HOME_ENV, RunKind, new_run_id
from twinkle_tui.headless import HeadlessRun, OutputClosed
from twinkle_tui.process.controller import Launched, ProcessController, RunControlError

KEY_SOURCES = ("TWINKLE_SERVICE_API_KEY", "TINKER_API_KEY")


class ServeFollower(HeadlessRun):
    """Follows the service's run. Unlike a training run, the service belongs to this terminal: a stop signal or
    a closed terminal (or pipe) stops it, and the stop is requested before anything is written."""

    def follow(self, launch: Any) -> int:
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            return super().follow(launch)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._stop_pending = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self._stop_pending = True  # first: the message below may fail (a closed pipe, a gone terminal)
            self._quietly("twinkle-tui: stopping the training service; Ctrl-C again to kill it")
        else:
            try:
                self.controller.kill(self.run_id)
            except RunControlError as exc:
                self._quietly(f"twinkle-tui: {exc}")

    def _quietly(self, text: str) -> None:
        try:
            self._say(text)
        except (OutputClosed, OSError):
            pass

    def _write(self, text: str) -> None:
        try:
            super()._write(text)
        except OSError as exc:  # EIO from a terminal that has gone, and the like: nobody reads us any more
            raise OutputClosed from exc

    def _output_closed(self) -> int:
        """Nobody reads our output: stop the service (it would otherwise hold its port with no one to stop it)."""
        code = super()._output_closed()
        deadline = time.monotonic() + self.controller.grace + 15
        while time.monotonic() < deadline:
            try:
                self.controller.stop(self.run_id)
            except RunControlError:
                pass
            if not self.controller.status(self.run_id).is_active:
                break
            time.sleep(0.2)
        return 130 if self.interrupts else code


def runtime_dir() -> Path | None:
    """A folder for secrets that lives in memory (tmpfs), only this user's, or None if there is none."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR"), f"/run/user/{os.getuid()}", "/dev/shm"]
    mounts = _tmpfs_mounts()
    for c in candidates:
        if not c or not os.path.isdir(c) or not any(c == m or c.startswith(m.rstrip("/") + "/") for m in mounts):
            continue
        folder = Path(c) / f"twinkle-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
                return folder
        except OSError:
            continue
    return None


def _tmpfs_mounts() -> list[str]:
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            return [line.split()[1] for line in f if len(line.split()) > 2 and line.split()[2] == "tmpfs"]
    except OSError:
        return []


def key_file_for(key: str, run_id: str) -> Path | None:
    """The key in a 0600 file in the runtime folder (memory, not disk), named for the service's run."""
    folder = runtime_dir()
    if folder is None:
        return None
    path = folder / f"{run_id}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinkle-tui serve",
                                description="The tinker-compatible training service, as a run followed here.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default; others need a key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", metavar="PATH", help="a file holding the key clients must send (tml-...)")
    p.add_argument("--api-key", default=None, help="the key itself (taken off the command line at once); "
                   f"also ${KEY_SOURCES[0]} or ${KEY_SOURCES[1]}")
    p.add_argument("--zstd", action="store_true", help="ask clients to zstd-compress forward_backward bodies")
    p.add_argument("--sampler", default="auto", choices=("auto", "hf", "vllm"),
                   help="auto: vLLM on an NVIDIA GPU with the gpu extra, else HF generate")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="GPU memory share of the vLLM engine")
    p.add_argument("--threads", default="auto", help="torch's threads: a number, or auto (the free cores)")
    p.add_argument("--model-root", action="append", default=[], metavar="DIR",
                   help="a folder base models may be loaded from (repeatable)")
    p.add_argument("--memory-budget", default="auto", metavar="SIZE",
                   help="the most memory the service may use, e.g. 6GB (auto: 40%% of this machine's, at most what "
                        "is free less 2 GB); micro-batches are sized to it")
    p.add_argument("--max-connections", type=int, default=512, help="open connections at most")
    p.add_argument("--idle-timeout", type=float, default=30.0,
                   help="seconds a connection may stay silent before it is closed")
    p.add_argument("--gap-timeout", type=float, default=30.0,
                   help="seconds a client's requests wait for an earlier one that never arrived")
    p.add_argument("--home", default=None, help=f"runs directory (default ${HOME_ENV} or ~/.cache/twinkle)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds the service gets to stop before it is killed")
    return p


def without_key(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--api-key":
            skip = True
        elif not arg.startswith("--api-key="):
            out.append(arg)
    return out


def serve_main(argv: list[str]) -> int:
    from twinkle_trainer.service.startup import (
        KeySourceError,
        check_key,
        missing_packages,
        option_problem,
        port_problem,
        read_key_file,
    )
    from twinkle_tui.runs.home import home_problem, setup_logging

    ns = parser().parse_args(argv)
    if ns.api_key is not None:  # off our command line now: ps shows it no longer than this
        os.environ[KEY_SOURCES[0]] = ns.api_key
        os.execv(sys.executable, [sys.executable, "-m", "twinkle_tui", "serve", *without_key(argv)])
    try:
        key = read_key_file(ns.api_key_file) if ns.api_key_file else next(
            (os.environ[k] for k in KEY_SOURCES if os.environ.get(k)), None)
    except KeySourceError as exc:
        print(f"twinkle-tui serve: {exc}", file=sys.stderr)
        return 2
    problem = missing_packages() or home_problem(ns.home) or check_key(ns.host, key) or option_problem(ns)
    if not problem and not 0 < ns.port < 65536:
        problem = f"port {ns.port} is not a TCP port (1-65535)"
    if problem:
        print(f"twinkle-tui serve: {problem}", file=sys.stderr)
        return 2
    busy = port_problem(ns.host, ns.port)
    if busy:
        print(f"twinkle-tui serve: {busy}", file=sys.stderr)
        return 1
    setup_logging(ns.home, False)
    os.environ.pop(KEY_SOURCES[0], None)  # the service reads the key from its file, never from a variable
    controller = ProcessController(ns.home, grace=ns.grace)
    run_id = new_run_id(f"service-{ns.port}")
    args = ["--host", ns.host, "--port", str(ns.port), "--sampler", ns.sampler, "--gpu-memory-utilization",
            str(ns.gpu_memory_utilization), "--threads", ns.threads, *(["--zstd"] if ns.zstd else []),
            "--memory-budget", ns.memory_budget, "--max-connections", str(ns.max_connections),
            "--idle-timeout", str(ns.idle_timeout), "--gap-timeout", str(ns.gap_timeout),
            *[x for root in ns.model_root for x in ("--model-root", root)]]
    if key:
        path = Path(ns.api_key_file).expanduser().resolve() if ns.api_key_file else key_file_for(key, run_id)
        if path is None:  # no memory file system: the key goes by variable, and a restart needs it set again
            os.environ[KEY_SOURCES[0]] = key
            args += ["--api-key-env", KEY_SOURCES[0]]
        else:
            args += ["--api-key-file", str(path)]

    def launch() -> Launched:
        return controller.launch_module("twinkle_trainer.service", args, run_id, model_id="tinker training service",
                                        kind=RunKind.SERVICE)

    return ServeFollower(controller).follow(launch)
