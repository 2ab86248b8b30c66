"""Fast routes and the constrained intent step, over real runs (and a real live toy run for control), against a real
local HTTP server speaking the chat-completions API with scripted answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta, record_event
from twinkle_tui.agent import AgentLoop, History, LLMSettings
from twinkle_tui.agent.intents import allowed_intents, mentions, ungrounded
from twinkle_tui.agent.routes import route
from twinkle_tui.commands import Confirmation, Session
from twinkle_tui.commands.runner import CommandRunner
from twinkle_tui.process.controller import ProcessController

from conftest import TOY, wait_for
from fake_llm import FakeLLM, text
from run_factory import make_run
from test_agent import Recorder, state

SFT, DIV, GRPO = "sft-smollm2-1526-a1b2", "toy-diverge-0900-ffff", "grpo-arith-1000-c3d4"


@pytest.fixture
def runs(home: Path) -> Path:
    make_run(home, SFT, steps=100)
    root = make_run(home, DIV, steps=60, start=1_790_001_000, metrics=("loss", "grad_norm"), status="failed",
                    nan_at=tuple(range(41, 61)))
    record_event(RunPaths(root), "error", clock=lambda: 1_790_001_020.0, rule="nan_loss", severity="critical",
                 message="the loss is NaN from step 41 on", evidence=["loss NaN at step 41"], step=41, source="monitor")
    make_run(home, GRPO, steps=80, start=1_790_002_000, metrics=("loss", "reward"))
    return home


def plan_of(session: Session, words: str) -> list[tuple[str, dict[str, Any]]] | None:
    plan = route(words, session)
    return None if plan is None else [(s.command, s.args) for s in plan.steps]


@pytest.mark.parametrize(("words", "expected"), [
    ("pause toy-diverge", [("pause_training", {"run_id": DIV})]),
    ("please pause the toy diverge run", [("pause_training", {"run_id": DIV})]),
    ("Stop sft-smollm2.", [("stop_training", {"run_id": SFT})]),
    ("kill grpo", [("kill_training", {"run_id": GRPO})]),
    ("select the sft run", [("select_run", {"run_id": SFT})]),
    ("compare the sft run with grpo-arith", [("select_run", {"run_id": SFT}), ("compare_runs", {"run_id": GRPO})]),
    ("which run has the lowest loss?", [("rank_runs", {"metric": "loss", "order": "lowest"})]),
    ("which run has the highest reward?", [("rank_runs", {"metric": "reward", "order": "highest"})]),
    ("is anything failing?", [("check_runs", {})]),
    ("list my runs", [("list_training_runs", {})]),
    ("zoom to steps 20-60", [("zoom_metrics", {"start": 20.0, "end": 60.0})]),
    ("reset zoom", [("zoom_metrics", {"reset": True})]),
    ("how many steps has grpo-arith done?", [("get_training_status", {"run_id": GRPO})]),
    ("when did toy-diverge diverge?", [("get_findings", {"run_id": DIV}), ("get_training_status", {"run_id": DIV})]),
])
def test_clear_requests_are_routed_without_an_llm(runs: Path, words: str, expected: list[Any]) -> None:
    assert plan_of(Session.open(runs), words) == expected


@pytest.mark.parametrize("words", [
    "do not pause toy-diverge, just tell me its loss",  # a negation: a keyword router paused it
    "don't stop sft-smollm2",
    "pause sft and stop grpo",  # two clauses
    "pause smollm2 or grpo, whichever is slower",
    "stop the run",  # three ended runs, none selected: which one is not certain
    "compare the two runs",  # there are three
    "show me the perplexity",  # no run logs it
    "make it faster",
    "pause",
])
def test_anything_not_certain_goes_to_the_llm(runs: Path, words: str) -> None:
    assert plan_of(Session.open(runs), words) is None


def test_a_loose_name_that_fits_two_runs_is_not_routed(home: Path) -> None:
    make_run(home, "sft-smollm2-0900-aaaa", steps=10)
    make_run(home, "sft-smollm2-1000-bbbb", steps=10, start=1_790_000_500)
    session = Session.open(home)
    assert plan_of(session, "delete the sft run") is None
    assert plan_of(session, "delete sft-smollm2-0900") == [("delete_run", {"run_id": "sft-smollm2-0900-aaaa"})]


def agent(home: Path, fake: FakeLLM, answer_yes: bool = False, **kw: Any) -> tuple[AgentLoop, list[Confirmation]]:
    asked: list[Confirmation] = []

    async def ask(c: Confirmation) -> bool:
        asked.append(c)
        return answer_yes

    session = Session.open(home)
    settings = LLMSettings(base_url=fake.url, model=fake.model, **kw)
    return AgentLoop(settings, CommandRunner(session, ask), History()), asked


async def test_a_routed_pause_acts_on_the_real_run_and_asks_no_llm(home: Path) -> None:
    ctl = ProcessController(home, grace=5)
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="toy-live")
    try:
        wait_for(lambda: read_meta(ctl.paths("toy-live")).status == "running", what="running")
        with FakeLLM([]).running() as fake:
            loop, asked = agent(home, fake)
            events = Recorder()
            answer = await loop.ask("pause the toy live run", events)
            stop = await loop.ask("stop toy-live", events)
        assert fake.requests == [] and loop.path == "route"
        assert events.calls[0] == ("pause_training", json.dumps({"run_id": "toy-live"}))
        assert answer == "paused `toy-live`"
        wait_for(lambda: state(read_meta(ctl.paths("toy-live")).pid or 0) == "T", what="the process to be stopped")
        assert [c.title for c in asked] == ["Stop run toy-live?"]  # a route confirms like the LLM's calls
        assert stop.startswith("Not done: you declined") and read_meta(ctl.paths("toy-live")).status == "paused"
    finally:
        ctl.kill("toy-live")
        launched.supervisor.wait(timeout=30)


async def test_the_intent_step_offers_no_action_the_request_negates(runs: Path) -> None:
    answers = [text('{"intent": "metric"}'), text("The loss of toy-diverge became NaN; its last finite value is "
                                                   "shown above.")]
    with FakeLLM(answers).running() as fake:
        loop, asked = agent(runs, fake, agent="intent")
        events = Recorder()
        await loop.ask("do not pause toy-diverge, just tell me its loss", events)
    first = fake.requests[0]
    allowed = first["response_format"]["schema"]["properties"]["intent"]["enum"]
    assert "pause" not in allowed and "metric" in allowed and "stop" not in allowed
    assert first["max_tokens"] <= 32 and first["stream"] is True
    assert [name for name, _ in events.calls] == ["get_metrics"]
    assert json.loads(events.calls[0][1]) == {"run_id": DIV, "names": ["loss"]}  # slots from the user's words
    assert not asked and read_meta(RunPaths(runs / DIV)).status == "failed"
    assert events.counts and events.counts[-1] > 0  # tokens so far, for the chat's working line


async def test_an_answer_is_phrased_from_the_evidence_and_never_invents_a_number(runs: Path) -> None:
    answers = [text('{"intent": "findings"}'), text("It diverged at step 41: the loss became NaN there."),
               text('{"intent": "findings"}'), text("It diverged at step 7200 after a spike.")]
    with FakeLLM(answers).running() as fake:
        loop, _ = agent(runs, fake, agent="intent")
        good = await loop.ask("at which point did toy-diverge go bad?", Recorder())
        bad = await loop.ask("at which point did toy-diverge go bad?", Recorder())
    assert good == "It diverged at step 41: the loss became NaN there."
    facts = json.loads(fake.requests[1]["messages"][1]["content"].split("Facts (JSON): ", 1)[1])
    assert [f["tool"] for f in facts] == ["get_findings", "get_training_status"] and "step 41" in facts[0]["result"]
    assert "tools" not in fake.requests[1]  # evidence first, no tools for the wording
    assert "7200" not in bad.split("*(")[0] and "nan_loss at step 41" in bad
    assert "it gave 7200, which is not in the data" in bad


async def test_an_intent_that_does_not_fit_is_retried_once_then_explained(runs: Path) -> None:
    answers = [text('{"intent": "zoom"'), text("not json either")]  # cut off, then nonsense
    with FakeLLM(answers).running() as fake:
        loop, _ = agent(runs, fake, agent="intent")
        answer = await loop.ask("make the chart nicer", Recorder())
    assert len(fake.requests) == 2 and "That did not fit" in fake.requests[1]["messages"][-1]["content"]
    assert answer.startswith("I could not work out what to do with that (not valid JSON")
    assert "\n" not in answer


async def test_a_destructive_intent_needs_the_run_named(runs: Path) -> None:
    with FakeLLM([text('{"intent": "delete"}')]).running() as fake:
        loop, asked = agent(runs, fake, agent="intent")
        answer = await loop.ask("delete whatever you think is useless", Recorder())
    assert not asked and answer.startswith("Which run do you mean")
    assert all((runs / r / "meta.json").exists() for r in (SFT, DIV, GRPO))


def test_scope_and_actions_come_from_the_users_words(runs: Path) -> None:
    session = Session.open(runs)
    assert "pause" in allowed_intents("please pause it") and "pause" not in allowed_intents("never pause it")
    assert "delete" not in allowed_intents("which run is the worst?")
    seen = mentions(session, "compare the grpo run with the toy diverge one on grad norm", ["loss", "grad_norm"])
    assert seen.runs == (GRPO, DIV) and seen.metrics == ("grad_norm",)


def test_ungrounded_wording_is_caught() -> None:
    evidence = "`r`: 1 finding(s); first [critical] nan_loss at step 41: loss 2.31 · lr 1e-3"
    assert ungrounded("It went NaN at step 41 (loss 2.31).", evidence) == ""
    assert ungrounded("It went NaN at step 40.", evidence) == "it gave 40, which is not in the data"
    assert ungrounded("Facts (JSON): [...]", evidence) == "it repeated the prompt"
    assert ungrounded("  ", evidence) == "it was empty"
    assert ungrounded("The story of this run is a classic in AI.", evidence) == "it quoted none of the data's numbers"
    assert ungrounded("It is fine.", "no findings") == ""


async def test_an_intent_that_ignores_the_named_run_is_retried_without_it(runs: Path) -> None:
    answers = [text('{"intent": "list_runs"}'), text('{"intent": "metric"}'),
               text("The loss of grpo-arith fell from 2.92 to 0.8271, so it is still going down.")]
    with FakeLLM(answers).running() as fake:
        loop, _ = agent(runs, fake, agent="intent")
        events = Recorder()
        await loop.ask("is the loss of grpo-arith still going down?", events)
    retry = fake.requests[1]
    assert "list_runs" not in retry["response_format"]["schema"]["properties"]["intent"]["enum"]
    assert f"the request names the run {GRPO}" in retry["messages"][-1]["content"]
    assert [(name, json.loads(args)) for name, args in events.calls] == [("get_metrics", {"run_id": GRPO,
                                                                                          "names": ["loss"]})]


async def test_when_no_intent_fits_the_named_runs_facts_follow_the_one_line(runs: Path) -> None:
    answers = [text('{"intent": "list_runs"}'), text('{"intent": "machine"}')]  # twice about no single run
    with FakeLLM(answers).running() as fake:
        loop, asked = agent(runs, fake, agent="intent")
        events = Recorder()
        answer = await loop.ask("tell me something about toy-diverge", events)
    first, facts = answer.split("\n\n", 1)
    assert first.startswith("I could not work out what to do with that (the request names the run toy-diverge")
    assert [(name, json.loads(args)) for name, args in events.calls] == [
        ("get_training_status", {"run_id": DIV}), ("get_findings", {"run_id": DIV})]
    assert "nan_loss at step 41" in facts and not asked
