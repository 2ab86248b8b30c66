"""PROGRAM.md's front matter, the validation every proposal passes, and the results as data: the pieces the loop
and the view rely on, each checked on its own (no subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinkle_tui.research.lanes import lane_env
from twinkle_tui.research.program import ProgramError, knob_args, load_program
from twinkle_tui.research.proposal import Proposal, validate
from twinkle_tui.research.records import Experiment, ResearchDir
from twinkle_tui.research.summary import best_so_far, summarize

from research_factory import EVALUATION, TRAIN, with_x, write_program


def program_with(tmp_path: Path, front: str) -> Path:
    write_program(tmp_path)
    path = tmp_path / "PROGRAM.md"
    path.write_text(f"---\n{front}---\ntext for the agent\n")
    return path


BASE = "target: train.py\neditable: [train.py]\nharness: [evaluation.py]\nmetric: score\ngoal: minimize\n"


def test_a_program_reads_its_fields_and_knobs(tmp_path: Path) -> None:
    path = program_with(tmp_path, BASE + "budget: 45\nrepeats: 3\nargs: [--steps, 8]\nknobs:\n"
                        "  lr: loguniform(1e-5, 1e-3)\n  width: int(8, 64)\n  act: choice(relu, tanh)\n")
    program = load_program(path)
    assert program.name == tmp_path.name and program.budget == 45.0 and program.repeats == 3
    assert program.args == ("--steps", "8") and program.text == "text for the agent"
    assert [k.spec for k in program.knobs] == ["loguniform(1e-05, 0.001)", "int(8, 64)", "choice(relu, tanh)"]
    assert program.default_proposer() == "llm"
    assert knob_args({"lr": 0.000123456789, "width": 16, "act": "relu"}) == \
        ["--lr", "0.000123457", "--width", "16", "--act", "relu"]
    assert program.better(0.5, 0.6) and not program.better(0.6, 0.6) and not program.better(0.55, 0.6, margin=0.1)


@pytest.mark.parametrize(("front", "said"), [
    ("", "field 'target': missing"),
    (BASE.replace("goal: minimize", "goal: down"), "field 'goal': must be minimize or maximize, not 'down'"),
    (BASE + "budgett: 4\n", "unknown field 'budgett' (did you mean 'budget'?)"),
    (BASE.replace("train.py\neditable", "train.sh\neditable"), "field 'target': train.sh is not a script"),
    (BASE.replace("harness: [evaluation.py]", "harness: [eval.py]"), "field 'harness': no file eval.py"),
    (BASE.replace("editable: [train.py]", "editable: [../train.py]"), "field 'editable': '../train.py' must be"),
    (BASE.replace("harness: [evaluation.py]", "harness: [train.py]"), "field 'harness': train.py is also editable"),
    (BASE + "budget: -1\n", "field 'budget': must be a number above 0"),
    (BASE + "knobs:\n  lr: gaussian(0, 1)\n", "field 'knobs.lr': 'gaussian(0, 1)' is not uniform(a, b)"),
    (BASE + "knobs:\n  lr: loguniform(0, 1)\n", "field 'knobs.lr': a log scale needs low above 0"),
    (BASE + "knobs:\n  n: int(1.5, 4)\n", "field 'knobs.n': int() takes integers"),
    (BASE + "name: ../x\n", "field 'name': '../x' must be 1-60 letters"),
    ("target: [\n", "the front matter is not YAML"),
])
def test_bad_front_matter_is_one_line_naming_the_field(tmp_path: Path, front: str, said: str) -> None:
    with pytest.raises(ProgramError) as err:
        load_program(program_with(tmp_path, front))
    assert said in str(err.value) and "\n" not in str(err.value)


def test_a_file_without_front_matter_says_so(tmp_path: Path) -> None:
    (tmp_path / "PROGRAM.md").write_text("# just notes\n")
    with pytest.raises(ProgramError, match="no front matter"):
        load_program(tmp_path / "PROGRAM.md")
    with pytest.raises(ProgramError, match="no such program"):
        load_program(tmp_path / "missing.md")


@pytest.mark.parametrize(("files", "said"), [
    ({"train.py": with_x("2.0")}, None),
    ({"train.py": "def f(:\n"}, "train.py does not compile: invalid syntax (line 1)"),
    ({"evaluation.py": EVALUATION + "\n"}, "evaluation.py is part of the harness"),
    ({"other.py": "x = 1\n"}, "other.py is not editable; only train.py may change"),
    ({"./train.py": TRAIN}, "the proposal changes nothing"),
    ({"train.py": TRAIN + "rt.log_metrics(step=99, score=0.0)\n"}, "train.py line 22 mentions the metric 'score'"),
    ({}, "the proposal changes nothing"),
])
def test_validation_refuses_with_a_reason(tmp_path: Path, files: dict[str, str], said: str | None) -> None:
    program = load_program(write_program(tmp_path))
    reason = validate(program, Proposal("try it", files), {"train.py": TRAIN})
    assert reason == said if said is None else said in (reason or "")


def test_a_line_already_naming_the_metric_may_stay(tmp_path: Path) -> None:
    program = load_program(write_program(tmp_path))
    before = TRAIN + "# score is computed by evaluation.py\n"
    assert validate(program, Proposal("x", {"train.py": before.replace("X = 0.0", "X = 1.0")}),
                    {"train.py": before}) is None


def test_results_as_data_best_keep_rate_near_misses_and_leaderboard(tmp_path: Path) -> None:
    research = ResearchDir(tmp_path / "r")
    rows = [Experiment("e001", 1, "keep", "baseline", "baseline", metric=9.0, baseline=True),
            Experiment("e002", 2, "keep", "a", "llm", metric=4.0, best_before=9.0),
            Experiment("e003", 3, "discard", "b", "llm", metric=4.1, best_before=4.0),
            Experiment("e004", 4, "crash", "c", "llm", reason="boom"),
            Experiment("e004-r1", 4, "refused", "d", "llm", reason="no"),
            Experiment("e005", 5, "discard", "e", "llm", metric=8.0, best_before=4.0),
            Experiment("e006", 6, "timeout", "f", "llm")]
    for row in rows:
        research.record(row)
    s = summarize(research.read_experiments(), maximize=False, state={"baseline": {"metric": 9.0, "noise": 0.05}})
    assert s.best is not None and s.best.id == "e002" and s.best_metric == 4.0 and s.improvement() == 5.0
    assert s.kept == 1 and s.tried == 5 and s.keep_rate == pytest.approx(0.2) and s.refused == 1
    assert [e.id for e in s.near_misses()] == ["e003", "e005"]
    assert [e.id for e in s.leaderboard()] == ["e002", "e003", "e005", "e001", "e006", "e004"]
    data = s.for_llm()
    assert data["best"]["id"] == "e002" and data["noise"] == 0.05 and data["refused_proposals"] == 1
    tsv = (tmp_path / "r" / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tmetric\tmemory_gb\tstatus\tdescription" and len(tsv) == 7
    assert tsv[4] == "0000000\t0.000000\t0.0\tcrash\tc"  # autoresearch writes a crash's metric as 0


def test_the_best_so_far_line_follows_experiment_order() -> None:
    # lanes finish out of order: e3 was kept first (4.0), then e2 (3.0) was kept against it
    line = best_so_far([(1, 9.0), (3, 4.0), (2, 3.0)], maximize=False, end=5)
    assert line == [(1, 9.0), (2, 9.0), (2, 3.0), (3, 3.0), (3, 3.0), (5, 3.0)]


def test_lanes_share_the_cpu_or_take_one_gpu_each() -> None:
    assert lane_env(0, 2, gpus=0, cpus=8, environ={}) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert lane_env(0, 2, gpus=0, cpus=8, environ={"OMP_NUM_THREADS": "1"}) == {"MKL_NUM_THREADS": "4"}
    assert lane_env(1, 3, gpus=2, environ={})["CUDA_VISIBLE_DEVICES"] == "1"
    assert lane_env(2, 3, gpus=2, environ={})["CUDA_VISIBLE_DEVICES"] == "0"
    assert lane_env(1, 2, gpus=2, environ={"CUDA_VISIBLE_DEVICES": "2,3"})["CUDA_VISIBLE_DEVICES"] == "3"


def test_a_ray_client_whose_server_failed_to_start_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's client server now and then starts a client's own server process that exits at once ("Initialization
    failure from server"), as it did once in CI. The runner asks again; a cluster that keeps failing is one
    line naming the tries."""
    import sys
    import types

    from twinkle_tui.research import ray_runner

    calls: list[str] = []

    def init(address: str, **_: object) -> None:
        calls.append(address)
        if len(calls) < failures + 1:
            raise ConnectionAbortedError("Initialization failure from server:\n")

    fake = types.ModuleType("ray")
    fake.init = init  # type: ignore[attr-defined]
    fake.remote = lambda **_: (lambda f: f)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr("twinkle_tui.research.ray_runner.time.sleep", lambda _: None)
    failures = 2
    assert ray_runner.RayRunner("ray://10.0.0.1:10001").ray is fake
    assert calls == ["ray://10.0.0.1:10001"] * 3
    calls.clear()
    failures = 3
    with pytest.raises(ray_runner.ClusterError, match=r"at ray://10.0.0.1:10001 \(3 tries\): Initialization failure"):
        ray_runner.RayRunner("ray://10.0.0.1:10001")
    assert len(calls) == 3
