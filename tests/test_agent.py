"""The agent against a real local HTTP server that speaks the chat-completions API with scripted answers, over real
runs: tool rounds, the round cap, pruning, malformed and unknown tools, refusals, errors, reasoning, skills, history."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from twinkle_trainer.protocol import read_meta
from twinkle_tui.agent import AgentLoop, EndpointError, History, LLMSettings, SkillLibrary, connect
from twinkle_tui.agent.endpoint import LLAMA_CPP_QUIRKS, probe
from twinkle_tui.agent.history import MAX_TOOL_CHARS, prune
from twinkle_tui.agent.loop import ThinkFilter
from twinkle_tui.agent.prompt import system_prompt
from twinkle_tui.commands import Confirmation, Session
from twinkle_tui.commands.runner import CommandRunner, Outcome
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore

from conftest import TOY, wait_for
from fake_llm import FakeLLM, call, text
from run_factory import make_run


class Recorder:
    """The events a front end would render."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.reasonings: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.results: list[tuple[str, Outcome]] = []
        self.counts: list[int] = []

    def tokens(self, count: int) -> None:
        self.counts.append(count)

    def text(self, delta: str) -> None:
        self.texts.append(delta)

    def reasoning(self, delta: str) -> None:
        self.reasonings.append(delta)

    def tool_call(self, name: str, arguments: str) -> None:
        self.calls.append((name, arguments))

    def tool_result(self, name: str, outcome: Outcome) -> None:
        self.results.append((name, outcome))


def agent(home: Path, fake: FakeLLM, answer_yes: bool = True, routes: bool = False,
          **kw: Any) -> tuple[AgentLoop, list[Confirmation]]:
    """An agent over home talking to the fake; the tool loop itself unless `routes` (fast routes first)."""
    asked: list[Confirmation] = []

    async def ask(c: Confirmation) -> bool:
        asked.append(c)
        return answer_yes

    session = Session(RunStore(home), ProcessController(home, grace=5))
    settings = LLMSettings(base_url=fake.url, model=fake.model, api_key="k", **kw)
    return AgentLoop(settings, CommandRunner(session, ask), History(), SkillLibrary(home).load(), routes=routes), asked


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


async def test_a_multi_round_tool_conversation_pauses_a_real_run(home: Path) -> None:
    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="live-run")
    try:
        wait_for(lambda: read_meta(ctl.paths("live-run")).status == "running", what="running")
        answers = [call("list_training_runs"), call("pause_training", {"run_id": "live"}), text("Paused `live-run`.")]
        with FakeLLM(answers).running() as fake:
            loop, asked = agent(home, fake)
            events = Recorder()
            answer = await loop.ask("pause the run", events)
        assert answer == "Paused `live-run`." and "".join(events.texts) == answer
        assert [name for name, _ in events.calls] == ["list_training_runs", "pause_training"]
        assert all(o.ok for _, o in events.results) and not asked  # pause is not destructive
        pid = read_meta(ctl.paths("live-run")).pid
        wait_for(lambda: state(pid) == "T", what="the process to be stopped")
        third = fake.requests[2]["messages"]
        assert third[-1]["role"] == "tool" and third[-1]["content"] == "paused `live-run`"
        assert any("live-run" in str(m.get("content")) for m in fake.requests[1]["messages"] if m["role"] == "tool")
        assert {t["function"]["name"] for t in fake.requests[0]["tools"]} >= {"pause_training", "get_metrics"}
    finally:
        ctl.kill("live-run")
        launched.supervisor.wait(timeout=30)


async def test_tool_rounds_are_capped_and_end_in_a_plain_explanation(home: Path) -> None:
    make_run(home, "r", steps=10)
    answers = [call("get_training_status") for _ in range(12)] + [text("I checked the status ten times.")]
    answers[10] = text("I checked the status ten times.")  # the 11th request has no tools
    with FakeLLM(answers).running() as fake:
        loop, _ = agent(home, fake)
        events = Recorder()
        answer = await loop.ask("check it over and over", events)
    assert len(events.calls) == 10 and answer == "I checked the status ten times."
    last = fake.requests[10]
    assert "tools" not in last and "limit of 10 tool rounds" in last["messages"][-1]["content"]


async def test_a_malformed_tool_call_gets_an_error_the_llm_can_correct(home: Path) -> None:
    make_run(home, "r", steps=10)
    answers = [call("zoom_metrics", "{start: 1"), call("zoom_metrics", {"start": "ten"}),
               call("fly_to_the_moon"), call("zoom_metrics", {"start": 2, "end": 5}), text("Zoomed.")]
    with FakeLLM(answers).running() as fake:
        loop, _ = agent(home, fake)
        loop.runner.session.select("r")
        events = Recorder()
        assert await loop.ask("zoom in", events) == "Zoomed."
    outcomes = [o for _, o in events.results]
    assert [o.ok for o in outcomes] == [False, False, False, True]
    assert "not valid JSON" in outcomes[0].text and "call it again with a JSON object" in outcomes[0].text
    assert "bad argument start: 'ten' is not of type 'number'" in outcomes[1].text
    assert outcomes[2].text.startswith("unknown tool 'fly_to_the_moon'; the tools are:")
    assert fake.requests[1]["messages"][-1]["content"].startswith("ERROR: the arguments of zoom_metrics")
    assert loop.runner.session.settings.zoom == (2.0, 5.0)


async def test_a_refused_destructive_action_is_reported_and_not_done(home: Path) -> None:
    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="keep")
    try:
        wait_for(lambda: read_meta(ctl.paths("keep")).status == "running", what="running")
        with FakeLLM([call("stop_training", {"run_id": "keep"}), text("You declined; it keeps running.")]).running() as fake:
            loop, asked = agent(home, fake, answer_yes=False)
            events = Recorder()
            await loop.ask("stop it", events)
        assert [c.title for c in asked] == ["Stop run keep?"]
        outcome = events.results[0][1]
        assert outcome.refused and not outcome.ok
        assert fake.requests[1]["messages"][-1]["content"].startswith("REFUSED by the user")
        assert read_meta(ctl.paths("keep")).status == "running"
    finally:
        ctl.kill("keep")
        launched.supervisor.wait(timeout=30)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_refused_and_unknown_endpoints_are_one_line(home: Path) -> None:
    dead = LLMSettings(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m")
    with pytest.raises(EndpointError, match=r"^cannot reach the LLM at http://127\.0\.0\.1:\d+/v1 \(is the server"):
        await probe(dead)
    with FakeLLM([], api_key="right").running() as fake:
        with pytest.raises(EndpointError, match="refused the API key"):
            await probe(LLMSettings(base_url=fake.url, model=fake.model, api_key="wrong"))
        with pytest.raises(EndpointError, match="has no model 'gpt-9'; it serves: fake-model"):
            await probe(LLMSettings(base_url=fake.url, model="gpt-9", api_key="right"))
    with FakeLLM([text("hi")]).running() as fake:
        loop, _ = agent(home, fake)
        loop.settings = LLMSettings(base_url=fake.url, model="gpt-9", api_key="k")
        with pytest.raises(EndpointError, match="has no model 'gpt-9'") as err:
            await loop.ask("hello", Recorder())
        assert "\n" not in str(err.value)


async def test_auto_mode_says_once_why_and_falls_back(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = LLMSettings(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", mode="auto")
    import sys

    monkeypatch.setattr(sys.modules["twinkle_tui.agent.connect"], "unavailable",
                        lambda gguf: "the embedded LLM needs llama-cpp-python")
    conn = await connect(dead, home)
    assert conn.settings is None and conn.error
    assert conn.notice.startswith("cannot reach the LLM") and "slash commands work" in conn.notice
    off = await connect(LLMSettings(mode="none"), home)
    assert off.settings is None and "slash commands" in off.notice and not off.error


@pytest.mark.parametrize("stream", [True, False])
async def test_thinking_stays_out_of_the_answer(home: Path, stream: bool) -> None:
    answer = text("<think>The user wants a greeting.\nKeep it short.</think>Hello there.")
    with FakeLLM([answer], stream_chunk=3).running() as fake:
        loop, _ = agent(home, fake)
        if not stream:  # the embedded server's quirks: no streaming when tools are offered
            loop.settings = LLMSettings(base_url=fake.url, model=fake.model, quirks=LLAMA_CPP_QUIRKS)
        events = Recorder()
        assert await loop.ask("hi", events) == "Hello there."
    assert "".join(events.reasonings) == "The user wants a greeting.\nKeep it short."
    assert "think" not in "".join(events.texts)
    assert fake.requests[0].get("stream", False) is stream


def test_the_think_filter_splits_tags_across_chunks() -> None:
    f = ThinkFilter()
    parts = [f.feed(c) for c in ["Hi <th", "ink>secret", " plan</th", "ink> there"]]
    answer = "".join(p[0] for p in parts) + f.flush()[0]
    assert answer == "Hi  there" and "".join(p[1] for p in parts) == "secret plan"


async def test_llama_cpp_quirks_send_tool_results_as_text(home: Path) -> None:
    make_run(home, "r", steps=10)
    with FakeLLM([call("get_training_status", {"run_id": "r"}), text("It completed.")]).running() as fake:
        loop, _ = agent(home, fake, quirks=LLAMA_CPP_QUIRKS)
        await loop.ask("how is r?", Recorder())
    second = fake.requests[1]
    assert not second.get("stream") and {m["role"] for m in second["messages"]} <= {"system", "user", "assistant"}
    assert all(m["content"] is not None for m in second["messages"])  # never null content
    result = second["messages"][-1]["content"]
    assert result.startswith("[result of get_training_status, as JSON data]\n")
    assert json.loads(result.split("\n", 1)[1]).startswith("**r** · completed")  # quoted data, not free text


def test_history_is_pruned_at_whole_turn_boundaries() -> None:
    messages: list[dict[str, Any]] = []
    for i in range(40):
        messages += [{"role": "user", "content": f"q{i}"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": f"c{i}", "type": "function",
                                                                          "function": {"name": "x", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": "r"},
                     {"role": "assistant", "content": f"a{i}"}]
    kept = prune(messages)
    assert len(kept) <= 50 and kept[0]["role"] == "user" and kept[-1]["content"] == "a39"
    assert len(kept) % 4 == 0  # whole turns only
    small = prune(messages, budget=100)
    assert small[0]["role"] == "user" and len(small) < len(kept)


def test_large_tool_results_are_truncated_with_a_note(tmp_path: Path) -> None:
    history = History(tmp_path / "h.jsonl")
    history.add({"role": "user", "content": "read the whole log"})
    history.add({"role": "tool", "tool_call_id": "c", "content": "x" * 50_000})
    content = history.messages[-1]["content"]
    assert len(content) < MAX_TOOL_CHARS + 200 and "[truncated: 46000 more characters" in content


def test_history_survives_a_restart_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / ".chat" / "history.jsonl"
    first = History(path)
    first.add({"role": "user", "content": "how is it going?"})
    first.add({"role": "assistant", "content": "fine"})
    again = History(path)
    assert [m["content"] for m in again.messages] == ["how is it going?", "fine"]
    path.write_text(path.read_text() + '{"role": "assistant", "content": "torn')  # a crash mid-write
    assert len(History(path).messages) == 2


def test_skills_are_chosen_by_relevance_within_a_budget(home: Path) -> None:
    local = home / "auto" / "skills" / "local"
    local.mkdir(parents=True)
    (local / "my-cluster.md").write_text("---\nname: my-cluster\ndescription: our slurm cluster\n"
                                         "keywords: [slurm, cluster]\n---\nUse partition gpu-a100.\n")
    library = SkillLibrary(home).load()
    assert {"training-runtime", "sft-recipes", "grpo-recipes", "diagnosing-failures", "my-cluster"} <= set(library.skills)
    picked = [s.name for s in library.relevant("my loss went NaN, how do I fix the crash?")]
    assert picked[0] == "diagnosing-failures"
    assert [s.name for s in library.relevant("which slurm partition?")] == ["my-cluster"]
    tight = library.relevant("grpo reward kl entropy sft lora", budget=1500)
    assert sum(len(s.text) for s in tight) <= 1500
    session = Session(RunStore(home), ProcessController(home))
    prompt = system_prompt(session, library, "the reward stays flat in my grpo run")
    assert "- grpo-recipes:" in prompt and "## Skill: grpo-recipes" in prompt and "## Skill: sft-recipes" not in prompt


def test_community_skills_come_from_a_git_repository(home: Path, tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "community"
    repo.mkdir()
    (repo / "tips.md").write_text("---\nname: community-tips\n---\nShared tips.\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "tips"]):
        subprocess.run(cmd, cwd=repo, check=True)
    library = SkillLibrary(home, git_url=f"file://{repo}")
    assert library.sync_community() is None
    assert "community-tips" in library.load().skills
    broken = SkillLibrary(home / "other", git_url=f"file://{tmp_path}/missing")
    assert (broken.sync_community() or "").startswith("community skills not updated")


async def test_agent_only_tools_answer_plainly_offline(home: Path) -> None:
    session = Session(RunStore(home), ProcessController(home))

    async def never(c: Confirmation) -> bool:
        raise AssertionError("no confirmation expected")

    runner = CommandRunner(session, never)
    models = await runner.run("list_supported_models")
    assert models.ok and "`builtin:smollm2-135m-instruct`" in models.text
    skill = await runner.run("load_skill", {"name": "sft-recipes"})
    assert skill.ok and "## Skill: sft-recipes" in skill.text
    search = await runner.run("search_models", {"query": "smollm"})
    assert not search.ok and search.text.startswith("offline")
    server = await runner.run("start_server", {"model": "x"})
    assert not server.ok and "needs an NVIDIA GPU" in server.text


def test_the_api_key_is_never_shown_or_stored(tmp_path: Path) -> None:
    settings = LLMSettings(api_key="sk-secret")
    assert "sk-secret" not in repr(settings)
    history = History(tmp_path / "h.jsonl")
    history.add({"role": "user", "content": "hi"})
    assert "sk-secret" not in (tmp_path / "h.jsonl").read_text()
    assert json.loads((tmp_path / "h.jsonl").read_text())["content"] == "hi"


def test_every_bundled_skill_has_valid_front_matter(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path).load()
    assert not [r for r in caplog.records if "bad front matter" in r.message]
    for skill in library.skills.values():
        assert skill.source == "bundled" and skill.keywords and len(skill.description) > 20, skill.name
