"""The research loop end to end: `python -m twinkle_tui.research` (what `twinkle-tui research` runs) in a real
subprocess, experiments as real supervised runs, the LLM a real HTTP server with scripted answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta

from conftest import wait_for
from fake_llm import FakeLLM, call, text
from research_factory import (
    EVALUATION,
    REPO,
    git,
    records,
    run_research,
    start_research,
    state,
    with_x,
    write_program,
)


def propose(description: str, files: dict[str, str]) -> dict:
    return call("propose_experiment", {"description": description, "files": files})


def llm_args(fake: FakeLLM) -> list[str]:
    return ["--llm-base-url", fake.url, "--llm-model", fake.model, "--proposer", "llm"]


@pytest.mark.slow
def test_scripted_llm_keeps_discards_refuses_times_out_and_pauses_after_three_crashes(home: Path,
                                                                                     tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog")
    answers = [
        propose("x to 2.5", {"train.py": with_x("2.5")}),  # a real improvement: kept
        propose("x to -2", {"train.py": with_x("-2.0")}),  # a regression: discarded
        propose("broken", {"train.py": "def oops(:\n"}),  # does not compile: refused, never run
        propose("easier test", {"evaluation.py": EVALUATION.replace("** 2", "* 0")}),  # the harness: refused
        propose("hang", {"train.py": with_x("2.5", "\nimport time\ntime.sleep(600)")}),  # over its budget
        *[propose(f"crash {i}", {"train.py": with_x("2.9", f"\nraise RuntimeError('boom {i}')")}) for i in range(3)],
    ]
    with FakeLLM(answers).running() as fake:
        proc = run_research(program, *llm_args(fake), "--budget", "4", "--grace", "1", "--experiments", "12")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "3 crashes in a row" in proc.stdout
    recs = records(home)
    assert [(r["id"], r["status"]) for r in recs] == [
        ("e001", "keep"), ("e002", "keep"), ("e003", "discard"), ("e004-r1", "refused"), ("e004-r2", "refused"),
        ("e004", "timeout"), ("e005", "crash"), ("e006", "crash"), ("e007", "crash")]
    by_id = {r["id"]: r for r in recs}
    assert by_id["e001"]["baseline"] and by_id["e001"]["metric"] == pytest.approx(9.25)
    assert by_id["e002"]["metric"] == pytest.approx(0.5)
    assert by_id["e003"]["metric"] > by_id["e002"]["metric"]
    assert "does not compile" in by_id["e004-r1"]["reason"] and "harness" in by_id["e004-r2"]["reason"]
    assert "boom 2" in by_id["e007"]["reason"]
    # refused proposals never ran; every run is an ordinary run marked as the research's experiment
    run_dirs = sorted(p.name for p in home.iterdir() if p.name.startswith("toy-"))
    assert run_dirs == [f"toy-e00{i}" for i in range(1, 8)]
    meta = read_meta(RunPaths(home / "toy-e002"))
    assert meta.research == {"name": "toy", "experiment": "e002"} and meta.status == "completed"
    assert meta.kind == "experiment"  # an ordinary run, of the experiment kind
    assert read_meta(RunPaths(home / "toy-e004")).status in ("stopped", "killed")
    # the LLM heard why its proposals were refused, and saw the results so far as data
    sent = json.dumps(fake.requests)
    assert "REFUSED: train.py does not compile" in sent and "part of the harness" in sent
    assert '\\"best\\"' in json.dumps(fake.requests[1]["messages"][1]["content"])
    # results.tsv in autoresearch's columns; the best is the branch; a discarded diff is still reachable
    rows = (home / "research" / "toy" / "results.tsv").read_text().splitlines()
    assert rows[0] == "commit\tmetric\tmemory_gb\tstatus\tdescription" and len(rows) == 8
    assert rows[3].split("\t")[1:4:2] == ["25.250000", "discard"]
    assert git(home, "rev-parse", "research").strip() == by_id["e002"]["commit"]
    assert "+X = -2.0" in git(home, "diff", "refs/experiments/e003~", "refs/experiments/e003")
    st = state(home)
    assert st["status"] == "paused" and "crashes in a row" in st["reason"] and not st["inflight"]


@pytest.mark.slow
def test_a_killed_loop_resumes_without_losing_or_repeating_an_experiment(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n",
                            args='["--steps", "6", "--sleep", "0.4"]')
    loop = start_research(program, "--proposer", "optuna", "--experiments", "4")
    try:
        meta_path = home / "toy-e002" / "meta.json"
        wait_for(lambda: meta_path.exists() and json.loads(meta_path.read_text()).get("status") == "running",
                 timeout=120, what="e002 running")
        os.kill(loop.pid, signal.SIGKILL)  # mid-experiment: its run goes on without the loop
        loop.wait(timeout=10)
    finally:
        if loop.poll() is None:
            loop.kill()
    assert "e002" in state(home)["inflight"] and not any(r["id"] == "e002" for r in records(home))
    proc = run_research(program, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "e002: resumed" in proc.stdout
    ids = [r["id"] for r in records(home)]
    assert ids.count("e002") == 1 and sorted(ids) == ["e001", "e002", "e003", "e004"]
    assert read_meta(RunPaths(home / "toy-e002")).launches == 1  # followed, not launched again
    rows = (home / "research" / "toy" / "results.tsv").read_text().splitlines()
    assert len(rows) == 5
    assert state(home)["status"] == "done"


@pytest.mark.slow
def test_optuna_improves_on_the_example_and_the_report_draws_it(home: Path) -> None:
    program = REPO / "examples" / "research" / "PROGRAM.md"
    proc = run_research(program, "--proposer", "optuna", "--experiments", "4", timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = records(home, "toy-regression")
    baseline = recs[0]["metric"]
    kept = [r for r in recs if r["status"] == "keep" and not r["baseline"]]
    assert kept and min(r["metric"] for r in kept) < baseline / 5  # the learning rate was 10-100x too low
    report = subprocess.run([os.environ.get("PYTHON", "python"), "-m", "twinkle_tui", "research", "report",
                             "toy-regression"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "best" in report.stdout and "e001" in report.stdout
    png = home / "research" / "toy-regression" / "progress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_optuna_prunes_an_experiment_that_falls_behind(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n",
                            args='["--steps", "8", "--sleep", "0.5"]')
    proc = run_research(program, "--proposer", "optuna", "--experiments", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pruned = [r for r in records(home) if (r.get("reason") or "").startswith("pruned")]
    assert pruned, proc.stdout
    run = read_meta(RunPaths(home / pruned[0]["run_id"]))
    assert run.status == "stopped" and run.progress.last_step < 8  # stopped early, gracefully


def test_review_mode_waits_for_a_yes(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog")
    answers = [propose("x to 3", {"train.py": with_x("3.0")}), propose("x to 1", {"train.py": with_x("1.0")})]
    with FakeLLM(answers).running() as fake:
        proc = run_research(program, *llm_args(fake), "--review", "--experiments", "2", stdin="n\ny\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = records(home)
    assert [(r["id"], r["status"]) for r in recs] == [("e001", "keep"), ("e002-r1", "refused"), ("e002", "keep")]
    assert recs[1]["reason"] == "rejected by the user in review" and recs[2]["description"] == "x to 1"
    assert "+X = 3.0" in proc.stdout  # the diff was shown before the question


def test_bad_programs_and_unusable_llms_are_one_line(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog")
    text_ = program.read_text()
    program.write_text(text_.replace("goal: minimize", "goal: lower"))
    proc = run_research(program)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "field 'goal': must be minimize or maximize" in proc.stderr
    program.write_text(text_.replace("metric: score", "metrc: score"))
    proc = run_research(program)
    assert proc.returncode == 2 and "unknown field 'metrc' (did you mean 'metric'?)" in proc.stderr
    program.write_text(text_)
    proc = run_research(program, "--llm", "embedded", "--proposer", "llm")
    assert proc.returncode == 2 and "SmolLM2-135M cannot write code edits: use --proposer optuna" in proc.stderr
    proc = run_research(program, "--llm", "auto", "--llm-base-url", "http://127.0.0.1:9/v1", "--proposer", "llm")
    assert proc.returncode == 2 and "cannot reach the LLM" in proc.stderr and "--proposer optuna" in proc.stderr
    proc = run_research(program, "--resume")
    assert proc.returncode == 2 and "no research 'toy' to resume" in proc.stderr
    with FakeLLM([text("I would rather not.")] * 3).running() as fake:
        proc = run_research(program, *llm_args(fake), "--experiments", "3")
    assert proc.returncode == 3 and "3 proposals in a row were refused" in proc.stdout
    proc = run_research(program, "--experiments", "3")
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--resume" in proc.stderr


@pytest.mark.slow
def test_a_baseline_without_metric_pauses_and_a_fixed_program_resumes(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n")
    train = program.parent / "train.py"
    good = train.read_text()
    train.write_text(good.replace("evaluate(rt, step, args.x + X)", "pass"))  # the harness is never called
    proc = run_research(program, "--proposer", "optuna", "--experiments", "3")
    assert proc.returncode == 3 and "the baseline gave no score: the run ended without logging score" in proc.stdout
    train.write_text(good)
    proc = run_research(program, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = records(home)
    assert [(r["id"], r["status"]) for r in recs][:2] == [("e001", "crash"), ("e002", "keep")]
    assert recs[1]["baseline"] and recs[1]["metric"] == pytest.approx(9.25)
    assert "baseline: the program as changed before --resume" in git(home, "log", "--format=%s")


@pytest.mark.slow
def test_ctrl_c_stops_the_running_experiment_gracefully_and_resume_goes_on(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n",
                            args='["--steps", "40", "--sleep", "0.2"]')
    loop = start_research(program, "--proposer", "optuna", "--experiments", "2")
    try:
        metrics = home / "toy-e001" / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, timeout=120, what="e001 training")
        loop.send_signal(signal.SIGINT)
        out, _ = loop.communicate(timeout=120)
    finally:
        if loop.poll() is None:
            loop.kill()
    assert loop.returncode == 130, out
    assert [(r["id"], r["status"]) for r in records(home)] == [("e001", "stopped")]
    assert read_meta(RunPaths(home / "toy-e001")).status == "stopped"  # a graceful stop, not a kill
    assert state(home)["status"] == "stopped" and not state(home)["inflight"]
    proc = run_research(program, "--resume", "--experiments", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["id"] for r in records(home)] == ["e001", "e002", "e003"]  # e001 is not run again
    assert records(home)[1]["baseline"]


def test_a_stop_from_the_dashboard_does_not_wait_for_a_slow_llm(home: Path, tmp_path: Path) -> None:
    from twinkle_tui.research.records import ResearchDir

    program = write_program(tmp_path / "prog")
    with FakeLLM([text("thinking for a long time", delay=300)]).running() as fake:
        loop = start_research(program, *llm_args(fake), "--experiments", "3")
        try:
            wait_for(lambda: fake.requests, timeout=120, what="the proposal request")
            ResearchDir.of("toy", home).update_control(stop=True)
            out, _ = loop.communicate(timeout=60)  # well before the LLM would answer
        finally:
            if loop.poll() is None:
                loop.kill()
    assert loop.returncode == 0, out
    assert "stopped from the dashboard" in out and state(home)["status"] == "stopped"
    assert [r["id"] for r in records(home)] == ["e001"]


@pytest.mark.slow
def test_after_a_reboot_resume_relaunches_the_experiment_that_was_cut_off(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog", extra="knobs:\n  x: uniform(0, 6)\n",
                            args='["--steps", "6", "--sleep", "0.4"]')
    loop = start_research(program, "--proposer", "optuna", "--experiments", "3")
    try:
        paths = RunPaths(home / "toy-e002")
        wait_for(lambda: paths.meta.exists() and read_meta(paths).status == "running" and read_meta(paths).pid,
                 timeout=120, what="e002 running")
    finally:
        loop.kill()  # the machine goes down: the loop, the run's supervisor and the run, all at once
        loop.wait(timeout=10)
    meta = read_meta(paths)
    os.kill(meta.supervisor_pid, signal.SIGKILL)
    os.killpg(meta.pgid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{meta.pid}") or
             open(f"/proc/{meta.pid}/stat").read().split(") ")[1][0] == "Z", what="the run gone")
    proc = run_research(program, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = {r["id"]: r for r in records(home)}
    assert sorted(recs) == ["e001", "e002", "e003"] and recs["e002"]["status"] in ("keep", "discard")
    after = read_meta(paths)
    assert after["launches"] == 2 and after["status"] == "completed"  # relaunched once, then finished


def test_an_improvement_within_the_baselines_noise_is_not_kept(home: Path, tmp_path: Path) -> None:
    program = write_program(tmp_path / "prog")
    # The three baseline runs score 9.25, 9.55 and 9.85 (the harness adds 0.3 per run): noise 0.3 around 9.55.
    (program.parent / "evaluation.py").write_text(EVALUATION.replace(
        "    rt.log_metrics(", "    import os\n    n = int(os.environ['TWINKLE_RUN_ID'][-3:])\n"
        "    x_noise = 0.3 * (n - 1) if n <= 3 else 0.0\n    rt.log_metrics(").replace("/ step)", "/ step + x_noise)"))
    answers = [propose("x a hair up", {"train.py": with_x("-0.0249")}),  # 9.40: 0.15 better, under the noise
               propose("x to 2.5", {"train.py": with_x("2.5")})]  # 0.5: far better
    with FakeLLM(answers).running() as fake:
        proc = run_research(program, *llm_args(fake), "--repeats", "3", "--experiments", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baseline score 9.55 ± 0.3 over 3 runs" in proc.stdout
    recs = records(home)
    assert [(r["id"], r["status"]) for r in recs] == [("e001", "keep"), ("e002", "discard"), ("e003", "discard"),
                                                      ("e004", "discard"), ("e005", "keep")]
    assert recs[3]["metric"] == pytest.approx(9.40, abs=1e-3) and "less than the noise (0.3)" in recs[3]["reason"]
    assert state(home)["baseline"]["noise"] == pytest.approx(0.3)
    assert '\\"noise\\": 0.3' in json.dumps(fake.requests[0]["messages"])  # the LLM is told the noise
