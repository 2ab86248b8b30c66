"""The chat panel in the real app under Pilot, against a scripted OpenAI-compatible server: streamed answers, the
confirmation a destructive tool asks for, Esc to cancel, history across restarts, slash commands beside the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinkle_trainer.protocol import read_meta
from twinkle_tui.agent import LLMSettings
from twinkle_tui.gpu import GpuSnapshot
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.ui.app import TwinkleApp
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatMessage, ToolLine, Working

from conftest import TOY, screen_of, settle, wait_for
from fake_llm import FakeLLM, call, text
from run_factory import make_run

NO_GPU = GpuSnapshot(error="no GPU detected")


def app_with(home: Path, fake: FakeLLM, **kw) -> TwinkleApp:
    llm = LLMSettings(base_url=fake.url, model=fake.model, api_key="k", mode="auto")
    return TwinkleApp(home=home, grace=10, gpu_probe=lambda: NO_GPU, llm=llm, watch=False, data_interval=0.0, **kw)


def messages(app: TwinkleApp, role: str) -> list[str]:
    return [str(m._markdown) for m in app.query(ChatMessage) if m.has_class(role)]


async def send(pilot, words: str) -> None:
    await pilot.press("slash")
    await pilot.press(*words, "enter")


async def test_a_question_is_answered_as_a_stream_with_its_tool_calls(home: Path) -> None:
    make_run(home, "sft-a", steps=200)
    script = [call("get_metrics", {"names": ["loss"]}),
              text("The **loss** fell from 2.8 to 0.3 over 200 steps: it is learning.", chunk_delay=0.02)]
    with FakeLLM(script, stream_chunk=4).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            assert any("LLM: fake-model" in m for m in messages(app, "notice"))
            await send(pilot, "is it learning well, in your view?")  # not a fixed question: the LLM answers
            await settle(pilot, lambda: app.query(AgentAnswer) and "it is learning" in
                         str(app.query(AgentAnswer).last().markdown._markdown), what="the streamed answer")
            tool = app.query(ToolLine).last()
            assert tool.call.startswith("get_metrics(") and tool.has_class("ok")
            assert fake.requests[-1]["stream"] is True


async def test_a_destructive_tool_asks_in_a_modal_and_a_no_is_reported(home: Path) -> None:
    ctl = ProcessController(home, grace=10)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="live")
    try:
        wait_for(lambda: read_meta(ctl.paths("live")).status == "running", what="running")
        script = [call("stop_training", {"run_id": "live"}), text("Understood, I left it running.")]
        with FakeLLM(script).running() as fake:
            app = app_with(home, fake)
            async with app.run_test(size=(160, 48)) as pilot:
                await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
                await send(pilot, "please stop it, it is wasting time")  # not a clear imperative: the LLM
                await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
                assert "Stop run live?" in screen_of(app, ConfirmScreen).title_text
                await pilot.press("n")
                await settle(pilot, lambda: app.query(ToolLine) and app.query(ToolLine).last().has_class("refused"),
                             what="the refusal")
                await settle(pilot, lambda: "left it running" in str(app.query(AgentAnswer).last().markdown._markdown),
                             what="the answer")
        assert read_meta(ctl.paths("live")).status == "running"
    finally:
        ctl.kill("live")
        launched.supervisor.wait(timeout=30)


async def test_escape_cancels_an_answer_being_written(home: Path) -> None:
    make_run(home, "r", steps=10)
    slow = text("word " * 400, chunk_delay=0.05)
    with FakeLLM([slow, text("second answer")], stream_chunk=5).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await send(pilot, "write a lot")
            await settle(pilot, lambda: app.query(AgentAnswer) and
                         len(str(app.query(AgentAnswer).last().markdown._markdown)) > 20, what="streaming")
            await pilot.press("escape")
            await settle(pilot, lambda: "*cancelled*" in str(app.query(AgentAnswer).last().markdown._markdown),
                         what="the cancel")
            assert len(str(app.query(AgentAnswer).last().markdown._markdown)) < 1500
            await pilot.press(*"again", "enter")  # the chat still works
            await settle(pilot, lambda: "second answer" in str(app.query(AgentAnswer).last().markdown._markdown),
                         what="the next answer")


async def test_the_conversation_is_back_after_a_restart(home: Path) -> None:
    make_run(home, "r", steps=10)
    with FakeLLM([text("First answer.")]).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await send(pilot, "remember this")
            await settle(pilot, lambda: app.query(AgentAnswer) and "First answer" in
                         str(app.query(AgentAnswer).last().markdown._markdown), what="the answer")
    with FakeLLM([text("I remember.")]).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: "First answer." in messages(app, "agent"), what="the restored chat")
            assert "remember this" in messages(app, "user")
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await send(pilot, "do you?")
            await settle(pilot, lambda: fake.requests, what="the request")
            sent = [m["content"] for m in fake.requests[0]["messages"] if m["role"] != "system"]
            assert sent[:2] == ["remember this", "First answer."]  # the model sees the earlier turn


async def test_an_unreachable_llm_is_said_once_and_slash_commands_still_work(home: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    make_run(home, "r", steps=10)
    monkeypatch.setattr(sys.modules["twinkle_tui.agent.connect"], "unavailable", lambda gguf: "no embedded LLM here")
    llm = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m", mode="auto")
    app = TwinkleApp(home=home, gpu_probe=lambda: NO_GPU, llm=llm, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.agent_chat.connection is not None, what="the connection attempt")
        errors = messages(app, "error")
        assert len(errors) == 1 and errors[0].startswith("cannot reach the LLM at http://127.0.0.1:9/v1")
        await send(pilot, "/status")
        await settle(pilot, lambda: any("**r** · completed" in m for m in messages(app, "reply")), what="/status")
        await pilot.press(*"hello", "enter")
        await settle(pilot, lambda: any("No LLM agent is connected" in m for m in messages(app, "reply")),
                     what="the pointer to /help")


async def test_tab_completes_run_ids_and_prefixes_select(home: Path) -> None:
    make_run(home, "sft-smollm2-0431-a3cd", steps=10)
    make_run(home, "grpo-arith-0600-0000", steps=10, start=2_000_000_000)
    app = TwinkleApp(home=home, gpu_probe=lambda: NO_GPU, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "grpo-arith-0600-0000", what="newest selected")
        await send(pilot, "")
        await pilot.press(*"/select sft", "tab")
        from textual.widgets import Input

        assert app.query_one("#chat-input", Input).value == "/select sft-smollm2-0431-a3cd "
        await pilot.press("enter")
        await settle(pilot, lambda: app.selected == "sft-smollm2-0431-a3cd", what="the selection")
        await pilot.press(*"/select grp", "enter")  # a unique prefix is enough
        await settle(pilot, lambda: app.selected == "grpo-arith-0600-0000", what="the prefix selection")


async def test_the_chat_shows_the_llm_working_with_seconds_and_tokens(home: Path) -> None:
    make_run(home, "r", steps=10)
    slow = text("word " * 60, chunk_delay=0.05)
    with FakeLLM([slow], stream_chunk=5).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await send(pilot, "tell me a story about my runs")
            await settle(pilot, lambda: app.query(Working) and "token" in str(app.query(Working).last().render()),
                         what="the working line with a token count")
            line = str(app.query(Working).last().render())
            assert "working ·" in line and "s ·" in line and "esc cancels" in line
            await settle(pilot, lambda: app.query(AgentAnswer).last().done, what="the answer")
            assert not app.query(Working)  # gone with the answer


async def test_a_clear_request_is_routed_in_the_app_without_the_llm(home: Path) -> None:
    make_run(home, "sft-smollm2-0431-a3cd", steps=10)
    make_run(home, "grpo-arith-0600-0000", steps=10, start=2_000_000_000)
    with FakeLLM([]).running() as fake:
        app = app_with(home, fake)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, lambda: app.agent_chat.loop is not None, what="the agent")
            await send(pilot, "select the sft run")
            await settle(pilot, lambda: app.selected == "sft-smollm2-0431-a3cd", what="the selection")
            await settle(pilot, lambda: app.query(AgentAnswer).last().done, what="the answer")
            tool = app.query(ToolLine).last()
            assert tool.call == 'select_run(run_id="sft-smollm2-0431-a3cd")' and tool.has_class("ok")
            assert fake.requests == []


async def test_log_lines_wrap_in_the_chat(home: Path) -> None:
    from textual.widgets._markdown import MarkdownFence

    root = make_run(home, "r", steps=10)
    long_line = "step 7 " + " ".join(f"metric_{i}=0.{i:04d}" for i in range(40))
    with open(root / "output.log", "a") as f:
        f.write(long_line + "\n")
    app = TwinkleApp(home=home, gpu_probe=lambda: NO_GPU, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.selected == "r", what="the run")
        await send(pilot, "/log metric_39")
        await settle(pilot, lambda: app.query(MarkdownFence), what="the log block")
        await pilot.pause(0.2)
        fence = app.query(MarkdownFence).last()
        chat = app.query_one("#chat")
        assert fence.region.right <= chat.region.right
        assert fence.region.height >= len(long_line) // chat.region.width + 1  # wrapped onto several rows
