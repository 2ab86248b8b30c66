"""The monitor on failures as they appear in the wild: every fixture of tests/corpus replayed as a real supervised
run (the script prints the log, then exits with the code or kills itself with the signal), judged the way doctor
and the dashboard judge it; `twinkle-tui --run` and `doctor` on an OOM-killed run; what an LLM review is sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.monitor import rules, run_rules, take_snapshot
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore

from conftest import kill_live_runs
from corpus.replay import Fixture, fixtures
from fake_llm import FakeLLM, text

FAILURES = fixtures("failures")
HEALTHY = fixtures("healthy")
BATCH = 8  # replays at once: each is a supervisor and a script


def findings_of(home: Path, run_id: str) -> list[rules.Finding]:
    view = RunStore(home).view(run_id)
    view.refresh()
    return run_rules(take_snapshot(view))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every fixture replayed once, as a supervised run in one home."""
    root = tmp_path_factory.mktemp("wild")
    home, scripts = root / "home", root / "scripts"
    home.mkdir()
    scripts.mkdir()
    ctl = ProcessController(home, grace=10)
    everything = FAILURES + HEALTHY
    try:
        for start in range(0, len(everything), BATCH):
            launched = []
            for f in everything[start : start + BATCH]:
                path = scripts / f"{f.name}.py"
                path.write_text(f.script())
                launched.append(ctl.launch_script(path, run_id=f.name))
            for one in launched:
                one.supervisor.wait(timeout=120)
        yield home
    finally:
        kill_live_runs(home)


@pytest.mark.parametrize("fixture", FAILURES, ids=lambda f: f.name)
def test_a_replayed_failure_gets_a_finding_of_its_kind(replayed: Path, fixture: Fixture) -> None:
    found = findings_of(replayed, fixture.name)
    hits = [f for f in found if f.rule == fixture.rule and (fixture.kind is None or f.category == fixture.kind)]
    assert hits, [f.line() for f in found]
    meta = read_meta(RunPaths(replayed / fixture.name))
    if fixture.rule == "crash":
        crash = hits[0]
        assert crash.severity == ("info" if fixture.kind == "interrupted" else "critical")
        assert crash.advice and any(line.startswith(("what usually fixes it", "what to do")) for line in crash.evidence)
        # the error a failed run shows (status bar, run list, meta.json) is the root cause, never a box or a hint
        error = meta.error or ""
        assert error and not error.startswith(("╭", "│", "CUDA kernel errors", "To enable traceback"))
        assert "ChildFailedError" not in error and "CalledProcessError" not in error


@pytest.mark.parametrize("fixture", HEALTHY, ids=lambda f: f.name)
def test_a_replayed_healthy_log_raises_nothing_above_info(replayed: Path, fixture: Fixture) -> None:
    assert read_meta(RunPaths(replayed / fixture.name)).status == "completed"
    assert [f.line() for f in findings_of(replayed, fixture.name) if f.level > 0] == []


def doctor(run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinkle_tui", "doctor", run_id, *extra], capture_output=True,
                          text=True, timeout=120)


def test_an_oom_killed_run_is_named_by_headless_and_doctor_and_doctor_exits_non_zero(home: Path,
                                                                                        tmp_path: Path) -> None:
    f = next(f for f in FAILURES if f.name == "oom-kill-plain-killed")
    (tmp_path / "train.py").write_text(f.script())
    run = subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(tmp_path / "train.py"), "--run-id",
                          "oomk"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 137 and "failed (killed by SIGKILL)" in run.stdout
    out = doctor("oomk", "--llm", "none")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no findings" not in out.stdout
    assert "[critical] crash" in out.stdout and "killed by SIGKILL" in out.stdout and "OOM killer" in out.stdout
    assert "dmesg" in out.stdout  # how to check, and what to lower


def test_doctor_never_exits_zero_with_no_findings_on_a_failed_run(replayed: Path, home: Path,
                                                                   tmp_path: Path) -> None:
    silent = tmp_path / "silent.py"
    silent.write_text("import sys\nsys.exit(3)\n")  # no output at all, no traceback
    ProcessController(home, grace=10).launch_script(silent, run_id="silent").supervisor.wait(timeout=60)
    out = doctor("silent", "--llm", "none")
    assert out.returncode == 1 and "no findings" not in out.stdout and "exited with code 3" in out.stdout
    for name in ("nccl-timeout-reduce-scatter", "segfault-plain", "shm-malloc-corruption", "config-ds-batch-rank0"):
        out = doctor(name, "--llm", "none", "--home", str(replayed))
        assert out.returncode == 1 and "[critical] crash" in out.stdout, out.stdout
    interrupted = doctor("interrupt-keyboard-trainer", "--llm", "none", "--home", str(replayed))
    assert interrupted.returncode == 0 and "[info] crash" in interrupted.stdout and "interrupted" in interrupted.stdout


def test_the_review_gets_the_root_cause_excerpt_not_the_log_tail(replayed: Path) -> None:
    """Two ranks raise the same OOM under [rankN]: prefixes and torchrun's ChildFailedError comes last: the
    review is sent one copy of the worker's traceback, without prefixes, naming the ranks, with the launcher's
    line as context; not the last 1,500 characters of the log."""
    verdict = text(json.dumps({"decision": "WARNING", "summary": "lower the micro batch size"}))
    with FakeLLM([verdict]).running() as fake:
        out = doctor("oom-two-ranks-torchrun", "--home", str(replayed), "--llm-base-url", fake.url,
                     "--llm-model", fake.model)
    assert out.returncode == 1 and "review: WARNING: lower the micro batch size" in out.stdout
    sent = fake.requests[-1]["messages"][1]["content"]
    assert "log tail:" not in sent
    why = sent[sent.index("why it failed") : sent.index("Deterministic checks:")]  # (the script follows them)
    assert "root cause (rank 0 (and 1 more)):" in why
    assert why.count("CUDA out of memory. Tried to allocate") == 1  # deduplicated across ranks
    assert "[rank0]:" not in why and "[rank1]:" not in why  # prefixes stripped
    assert "GPU 0 has a total capacity" in why  # the lowest rank's copy
    assert "launcher: failed (exitcode: 1) local_rank: 0" in why and "ChildFailedError" not in why
    checks = sent[sent.index("Deterministic checks:") : sent.index("Current script")]
    assert "[critical] crash" in checks and "what usually fixes it" in checks  # the rules' finding goes along
