"""The command layer without any UI: the registry, slash parsing, and a Session over real run directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinkle_trainer.protocol import read_meta
from twinkle_tui.commands import REGISTRY, CommandError, Session, execute, parse_slash, prepare
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore

from conftest import TOY
from run_factory import T0, make_run


@pytest.fixture
def session(home: Path) -> Session:
    return Session(RunStore(home), ProcessController(home, grace=5), clock=lambda: T0 + 3600,
                   recipe_dirs=[TOY.parent])


def test_every_command_has_a_valid_tool_schema() -> None:
    import jsonschema

    for cmd in REGISTRY.values():
        jsonschema.Draft202012Validator.check_schema(cmd.schema)
        assert cmd.summary and cmd.tool()["function"]["name"] == cmd.name
    destructive = {c.name for c in REGISTRY.values() if c.destructive}
    assert {"stop_training", "kill_training", "start_training", "update_script", "delete_run"} <= destructive


@pytest.mark.parametrize(("text", "name", "args"), [
    ("/zoom 10 20", "zoom_metrics", {"start": 10.0, "end": 20.0}),
    ('/metrics "learning rate",loss', "select_metrics", {"names": ["learning rate", "loss"]}),
    ("/select abc", "select_run", {"run_id": "abc"}),
    ("/reset", "zoom_metrics", {"reset": True}),
    ("/smooth 0.9", "set_chart_options", {"smoothing_weight": 0.9}),
    ("/new examples/x.toml -- --lr 1", "start_training", {"path": "examples/x.toml", "args": ["--lr", "1"]}),
    ("/pause", "pause_training", {}),
])
def test_slash_commands_parse_to_registered_commands(text: str, name: str, args: dict) -> None:
    assert parse_slash(text) == (name, args)
    REGISTRY[name].validate(args)


@pytest.mark.parametrize(("text", "message"), [
    ("/zoom 5 1", "A < B"), ("/zom 1 2", "did you mean /zoom"), ("/smooth 2", "between 0 and 0.999"),
    ("/select", "usage: /select"), ("hello", "start with /"), ("/zoom nan 5", "finite"), ('/new "open', "cannot read"),
])
def test_bad_slash_commands_say_how_to_write_them(text: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_slash(text)


def test_bad_tool_arguments_are_errors_an_llm_can_correct() -> None:
    with pytest.raises(CommandError, match="zoom_metrics: bad argument start: 'ten' is not of type 'number'"):
        REGISTRY["zoom_metrics"].validate({"start": "ten"})
    with pytest.raises(CommandError, match="Additional properties are not allowed"):
        REGISTRY["pause_training"].validate({"run": "x"})
    with pytest.raises(CommandError, match="unknown tool 'fly'"):
        execute(None, "fly")


def test_runs_are_found_by_a_unique_prefix(session: Session, home: Path) -> None:
    make_run(home, "sft-smollm2-0431-a3cd", steps=10)
    make_run(home, "sft-smollm2-0502-ffff", steps=10, start=T0 + 10)
    make_run(home, "grpo-arith-0600-0000", steps=10, start=T0 + 20)
    assert execute(session, "select_run", {"run_id": "grpo"}).text == "selected `grpo-arith-0600-0000`"
    assert session.selected == "grpo-arith-0600-0000"
    with pytest.raises(CommandError, match="'sft' matches 2 runs: sft-smollm2-0431-a3cd, sft-smollm2-0502-ffff"):
        execute(session, "select_run", {"run_id": "sft"})
    assert session.complete_run("sft-smollm2-04") == ["sft-smollm2-0431-a3cd"]


def test_a_missing_run_is_one_clean_line(session: Session, home: Path) -> None:
    make_run(home, "r", steps=5)
    for name in ("select_run", "compare_runs", "get_training_status", "pause_training"):
        with pytest.raises(CommandError) as err:
            execute(session, name, {"run_id": "nosuch"})
        assert str(err.value) == f"no run 'nosuch' under {home}", name
    with pytest.raises(CommandError, match="invalid run id"):
        execute(session, "select_run", {"run_id": "../x"})


def test_zoom_is_clamped_to_the_runs_steps(session: Session, home: Path) -> None:
    make_run(home, "z", steps=300)
    session.select("z")
    execute(session, "zoom_metrics", {"start": -5, "end": 1e9})
    assert session.settings.zoom == (1.0, 300.0)
    execute(session, "zoom_metrics", {"start": 100, "end": 100.5})
    lo, hi = session.settings.zoom
    assert hi - lo >= 2 and 98 <= lo <= 101
    with pytest.raises(CommandError, match="outside this run's steps 1–300"):
        execute(session, "zoom_metrics", {"start": 1000, "end": 2000})
    execute(session, "zoom_metrics", {"reset": True})
    assert session.settings.zoom is None


def test_metrics_are_matched_loosely_and_settings_persist_per_run(session: Session, home: Path) -> None:
    make_run(home, "a", steps=20, metrics=("loss", "grad_norm", "learning rate", "train/accuracy_reward"))
    make_run(home, "b", steps=20, start=T0 + 5)
    session.select("a")
    reply = execute(session, "select_metrics", {"names": ["LOSS", "accuracy", "lerning rate"]})
    assert session.settings.metrics == ["loss", "train/accuracy_reward", "learning rate"], reply.text
    execute(session, "set_chart_options", {"log_y": True})
    session.select("b")
    assert session.settings.metrics == [] and not session.settings.log_y
    again = Session(RunStore(home), ProcessController(home))  # a new dashboard
    again.select("a")
    assert again.settings.metrics == ["loss", "train/accuracy_reward", "learning rate"] and again.settings.log_y
    with pytest.raises(CommandError, match="unknown metric 'nope'"):
        execute(session, "select_metrics", {"names": ["nope"]})


def test_status_and_metric_summaries_for_the_agent(session: Session, home: Path) -> None:
    make_run(home, "s", steps=200, status="completed")
    status = execute(session, "get_training_status", {"run_id": "s"}).text
    assert "**s** · completed · step 200/500 (40%)" in status and "latest: loss" in status
    summary = execute(session, "get_metrics", {"run_id": "s", "names": ["loss"], "start": 50, "end": 150})
    assert summary.data["loss"]["points"] == 101 and summary.data["loss"]["trend"] == "falling"


def test_start_checks_a_recipe_before_anything_runs(session: Session, home: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(CommandError, match="notes.md is not a training script"):
        prepare(session, "start_training", {"path": str(tmp_path / "notes.md")})
    with pytest.raises(CommandError, match="is not a training script"):
        prepare(session, "start_training", {"path": "/etc/passwd"})
    bad = tmp_path / "typo.toml"
    bad.write_text("[training]\nmax_step = 3\n")
    with pytest.raises(CommandError, match="unknown key 'training.max_step' in typo.toml; did you mean"):
        prepare(session, "start_training", {"path": str(bad)})
    missing = tmp_path / "data.toml"
    missing.write_text("[dataset]\ndata_file = 'nowhere.jsonl'\n")
    with pytest.raises(CommandError, match="data file not found"):
        prepare(session, "start_training", {"path": str(missing)})
    assert list(home.iterdir()) == []  # nothing was started


def test_start_and_stop_ask_first_and_a_refused_stop_never_asks(session: Session, home: Path) -> None:
    _, confirm = prepare(session, "start_training", {"path": "toy_regression.py", "args": ["--steps", "3"]})
    assert confirm is not None and "toy_regression.py --steps 3" in confirm.detail
    reply = execute(session, "start_training", {"path": "toy_regression.py", "args": ["--steps", "3"]})
    assert reply.select and reply.select.startswith("toy-regression-")
    launched = session.services.launched[-1]
    assert launched.supervisor.wait(timeout=60) == 0
    with pytest.raises(CommandError, match="cannot stop run .*: it is completed"):
        prepare(session, "stop_training", {"run_id": reply.select})


def test_delete_and_archive_refuse_live_runs(session: Session, home: Path) -> None:
    make_run(home, "old", steps=5)
    _, confirm = prepare(session, "delete_run", {"run_id": "old"})
    assert confirm is not None and confirm.action == "Delete"
    execute(session, "archive_run", {"run_id": "old"})
    assert not (home / "old").exists() and (home / ".archive" / "old" / "meta.json").exists()
    ctl = session.controller
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="live")
    try:
        from conftest import wait_for

        wait_for(lambda: read_meta(ctl.paths("live")).status == "running", what="running")
        for name in ("delete_run", "archive_run"):
            with pytest.raises(CommandError, match="it is running; stop it first"):
                prepare(session, name, {"run_id": "live"})
    finally:
        ctl.kill("live")
        launched.supervisor.wait(timeout=30)


def test_a_relaunch_always_asks_first_and_says_from_where(session: Session, home: Path) -> None:
    make_run(home, "nock", steps=5, status="killed", extra_meta={"command": ["python", "x.py"]})
    _, confirm = prepare(session, "resume_training", {"run_id": "nock"})
    assert confirm is not None and "from step 0" in confirm.title
    make_run(home, "withck", steps=5, status="stopped", checkpoints=(5,), extra_meta={"command": ["python", "x.py"]})
    _, confirm = prepare(session, "resume_training", {"run_id": "withck"})  # the user stopped it: ask first
    assert confirm is not None and confirm.title == "Relaunch withck from step 5?"
    assert "You stopped it at step 5" in confirm.detail


def test_compare_sets_values_at_the_same_step_side_by_side_and_shows_the_config_that_differs(
        session: Session, home: Path) -> None:
    recipe = ["python", "-P", "-u", "-m", "twinkle_tui.process.bootstrap", "--module", "twinkle_trainer", "--",
              "examples/sft_smollm2.toml"]
    make_run(home, "sft-smollm2-0431-a3cd", steps=30, extra_meta={
        "config": {"optimizer": {"learning_rate": 1e-3}, "training": {"max_steps": 30}},
        "command": [*recipe, "--lr", "1e-3"]})
    make_run(home, "sft-smollm2-0502-ffff", steps=20, start=T0 + 100, extra_meta={
        "config": {"optimizer": {"learning_rate": 5e-4}, "training": {"max_steps": 30}},
        "command": [*recipe, "--lr", "5e-4"]})
    execute(session, "select_run", {"run_id": "sft-smollm2-0431"})
    text = execute(session, "compare_runs", {"run_id": "0502"}).text
    assert "`0431-a3cd` lr=1e-3" in text and "`0502-ffff` lr=5e-4" in text  # short names that tell them apart
    assert "| loss @ step 20 |" in text and "| loss, final |" in text and "@ 30 |" in text  # same step, then finals
    assert "| optimizer.learning_rate | 0.001 | 0.0005 |" in text and "max_steps" not in text
    from twinkle_tui.commands.compare import overrides
    from twinkle_tui.ui.layout import compare_legend

    assert overrides(session.view("sft-smollm2-0502-ffff").meta) == ["lr=5e-4"]
    legend = compare_legend(session.view("sft-smollm2-0431-a3cd"), session.view("sft-smollm2-0502-ffff"))
    assert "0431-a3cd lr=1e-3" in legend and "optimizer.learning_rate 0.001 [dim]vs[/] 0.0005" in legend
