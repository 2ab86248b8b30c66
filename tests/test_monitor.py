"""The training monitor over real runs (subprocesses of small scripts): each rule with evidence, quiet on healthy
runs and on runs the user stopped, fast enough, and the fix pipeline with a scripted LLM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.commands import CommandError, Session, execute, prepare
from twinkle_tui.monitor import Report, ReviewFlow, TrainingMonitor, parse_review, rules, run_rules, take_snapshot
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.runs.store import RunStore

from conftest import EXAMPLES, TOY, screen_of, wait_for
from fake_llm import FakeLLM, text

HEADER = "import math, os, sys, time\nfrom trainer.runtime import TrainingRuntime\n" \
         "rt = TrainingRuntime().start(model_id='m', total_steps=STEPS)\n"


def script(tmp_path: Path, name: str, body: str, steps: int = 100) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(HEADER.replace("STEPS", str(steps)) + body)
    return path


def run(ctl: ProcessController, path: Path, run_id: str, wait: bool = True) -> None:
    launched = ctl.launch_script(path, run_id=run_id)
    if wait:
        launched.supervisor.wait(timeout=120)


def findings_of(home: Path, run_id: str) -> list[rules.Finding]:
    view = RunStore(home).view(run_id)
    view.refresh()
    return run_rules(take_snapshot(view))


def by_rule(found: list[rules.Finding]) -> dict[str, rules.Finding]:
    return {f.rule: f for f in found}


@pytest.fixture
def ctl(home: Path) -> ProcessController:
    return ProcessController(home, grace=10)


@pytest.mark.parametrize(("body", "kind", "fixable"), [
    ("rt.log_metrics(step=1, loss=1.0)\nprint(undefined_name)\n", "name/attribute error", True),
    ("rt.log_metrics(step=1, loss=1.0)\nraise MemoryError('cannot allocate 8 GiB')\n", "out of memory", True),
    ("import torch\nraise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n",
     "out of memory", True),
    ("import not_a_module_at_all\n", "import error", True),
    ("open('/nonexistent/data.jsonl')\n", "missing file or key", True),
    ("import torch\ntorch.zeros(2, 3) @ torch.zeros(4, 5)\n", "shape mismatch", False),
    ("raise ValueError('something else')\n", "other", False),
])
def test_a_crash_is_found_and_classified(ctl: ProcessController, tmp_path: Path, home: Path, body: str, kind: str,
                                         fixable: bool) -> None:
    run(ctl, script(tmp_path, "crash", body), "crash")
    crash = by_rule(findings_of(home, "crash"))["crash"]
    assert crash.severity == "critical" and crash.category == kind and crash.fixable == fixable
    assert crash.evidence and crash.evidence[0]


def test_a_nan_loss_is_critical_with_the_steps_before_it(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 41):\n    rt.log_metrics(step=s, loss=(1.0 / s) if s < 30 else float('nan'))\n"
    run(ctl, script(tmp_path, "nan", body, 40), "nan")
    nan = by_rule(findings_of(home, "nan"))["nan"]
    assert nan.severity == "critical" and nan.step == 30 and "step 29: 0.03448" in nan.evidence[-2]


def test_a_loss_spike(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = ("for s in range(1, 121):\n"
            "    rt.log_metrics(step=s, loss=1.0 + 0.01 * math.sin(s) + (3.0 if 110 <= s <= 115 else 0.0))\n")
    run(ctl, script(tmp_path, "spike", body, 120), "spike")
    spike = by_rule(findings_of(home, "spike"))["loss-spike"]
    assert spike.severity == "warning" and spike.step == 110 and len(spike.evidence) == 5


def test_a_huge_spike_is_critical(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 61):\n    rt.log_metrics(step=s, loss=500.0 if s == 60 else 1.0 + 0.01 * (s % 3))\n"
    run(ctl, script(tmp_path, "boom", body, 60), "boom")
    assert by_rule(findings_of(home, "boom"))["loss-spike"].severity == "critical"


def test_a_divergence_long_before_the_end_is_still_found(tmp_path: Path, home: Path) -> None:
    """A fast run can take hundreds of steps between two checks, and doctor looks once, after the end: a spike
    300 steps before the last step is found, with the steps that show it."""
    toy = Path(__file__).resolve().parent.parent / "examples" / "toy_regression.py"
    done = subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(toy), "--run-id", "diverged", "--",
                           "--steps", "600", "--diverge-at", "300"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = by_rule(findings_of(home, "diverged"))
    assert found["loss-spike"].severity == "critical" and 300 <= found["loss-spike"].step <= 305
    assert found["grad-explosion"].step is not None and 300 <= found["grad-explosion"].step <= 305
    assert len(found["grad-explosion"].evidence) == 3


def plateau_of(tmp_path: Path, home: Path, ctl: ProcessController, name: str, loss: str) -> rules.Finding | None:
    """The plateau rule looks at live runs: the run waits after its last step until the check is done."""
    body = f"for s in range(1, 401):\n    rt.log_metrics(step=s, loss={loss})\ntime.sleep(600)\n"
    ctl.launch_script(script(tmp_path, name, body, 400), run_id=name)
    paths = ctl.paths(name)
    wait_for(lambda: paths.metrics.exists() and len(paths.metrics.read_text().splitlines()) == 400, what="400 steps")
    found = by_rule(findings_of(home, name)).get("plateau")
    ctl.kill(name)
    return found


def test_a_flat_loss_is_a_plateau(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    found = plateau_of(tmp_path, home, ctl, "flat", "(3.0 / s if s < 100 else 0.5 + 0.001 * math.sin(s))")
    assert found is not None and found.severity == "info" and "near 0.5" in found.summary


def test_a_loss_flat_from_the_first_step_is_a_plateau(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    """A run that never learns: its range is only noise, so the scale is its level (found on held-out cases)."""
    found = plateau_of(tmp_path, home, ctl, "never", "2.3 + 0.01 * math.sin(s * 7.1)")
    assert found is not None and "near 2.3" in found.summary


def test_a_loss_falling_after_a_spike_is_no_plateau(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    """The divergence of examples/toy_regression.py --diverge-at: a spike inflates the range, and a loss still
    falling fast from it was once called flat."""
    loss = "(1.0 / s if s < 250 else (1000.0 if s == 250 else 40.0 * 0.98 ** (s - 250)))"
    assert plateau_of(tmp_path, home, ctl, "falling", loss) is None


def test_a_stall_while_alive_and_not_paused(ctl: ProcessController, tmp_path: Path, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "STALL_FLOOR", 1.0)
    body = "for s in range(1, 21):\n    rt.log_metrics(step=s, loss=1.0); time.sleep(0.02)\ntime.sleep(600)\n"
    ctl.launch_script(script(tmp_path, "stall", body, 1000), run_id="stall")
    paths = ctl.paths("stall")
    wait_for(lambda: paths.metrics.exists() and len(paths.metrics.read_text().splitlines()) == 20, what="20 steps")
    time.sleep(1.5)
    stall = by_rule(findings_of(home, "stall"))["stall"]
    assert stall.severity == "warning" and stall.step == 20
    ctl.pause("stall")
    assert "stall" not in by_rule(findings_of(home, "stall"))  # a pause is not a stall
    ctl.kill("stall")


def test_reward_spread_going_to_zero_says_too_hard_or_too_easy(ctl: ProcessController, tmp_path: Path,
                                                               home: Path) -> None:
    hard = ("for s in range(1, 61):\n"
            "    rt.log_metrics(step=s, reward=0.5 if s < 30 else 0.0, zero_advantage_groups=0.2 if s < 30 else 1.0,"
            " entropy=2.0)\n")
    run(ctl, script(tmp_path, "hard", hard, 60), "hard")
    spread = by_rule(findings_of(home, "hard"))["zero-spread"]
    assert spread.category == "too hard" and "100% of groups" in spread.summary
    easy = ("for s in range(1, 61):\n"
            "    rt.log_metrics(step=s, reward=0.5 if s < 30 else 1.0, frac_reward_zero_std=0.1 if s < 30 else 0.95)\n")
    run(ctl, script(tmp_path, "easy", easy, 60), "easy")
    assert by_rule(findings_of(home, "easy"))["zero-spread"].category == "too easy"


def test_rl_health_kl_entropy_truncation(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = ("for s in range(1, 131):\n"
            "    rt.log_metrics(step=s, **{'train/approx_kl': 0.01 + 0.001 * (s % 5) + (1.0 if s == 130 else 0),"
            " 'train/entropy': 0.5 if s > 70 else 2.0, 'completions/clipped_ratio': 0.9 if s > 100 else 0.1})\n")
    run(ctl, script(tmp_path, "rl", body, 130), "rl")
    found = by_rule(findings_of(home, "rl"))
    assert found["kl-explosion"].severity == "critical"
    assert found["entropy-collapse"].severity == "critical" and found["entropy-collapse"].step == 71
    assert found["truncation"].severity == "warning"


def test_the_learning_rate_at_zero_before_the_end(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 61):\n    rt.log_metrics(step=s, loss=1.0, lr=max(0.0, 1e-3 * (1 - s / 30)))\n"
    run(ctl, script(tmp_path, "lr", body, 100), "lr")
    lr = by_rule(findings_of(home, "lr"))["lr-zero"]
    assert lr.step == 30 and "of 100" in lr.summary


def test_a_run_the_user_stops_gets_no_finding_and_no_fix(ctl: ProcessController, tmp_path: Path,
                                                          home: Path) -> None:
    body = "for s in range(1, 10**6):\n    rt.log_metrics(step=s, loss=float('nan')); time.sleep(0.02); rt.step_boundary(s)\n"
    launched = ctl.launch_script(script(tmp_path, "user", body, 10**6), run_id="user")
    wait_for(lambda: ctl.paths("user").metrics.exists(), what="steps")
    ctl.stop("user")
    launched.supervisor.wait(timeout=60)
    monitor = TrainingMonitor(home, interval=0.1)
    assert monitor.check(["user"]) == []
    with pytest.raises(CommandError, match="stopped by the user"):
        prepare(Session.open(home), "apply_fix", {"run_id": "user", "content": "print('x')\n", "reason": "x"})


@pytest.mark.parametrize("recipe", ["toy", "sft", "grpo"])
def test_healthy_runs_raise_nothing_above_info(ctl: ProcessController, home: Path, recipe: str) -> None:
    if recipe == "toy":
        launched = ctl.launch_script(TOY, ["--steps", "300"], run_id=recipe)
    elif recipe == "sft":
        launched = ctl.launch_module("twinkle_trainer", ["--model_id", "builtin:tiny-llama", "--max_steps", "30",
                                                 "--batch_size", "4", "--micro_batch_size", "4"], run_id=recipe)
    else:
        launched = ctl.launch_config(EXAMPLES / "grpo_arith.yaml", ["--model_id", "builtin:tiny-llama",
                                                                    "--max_steps", "6"], run_id=recipe)
    assert launched.supervisor.wait(timeout=300) == 0
    above_info = [f.line() for f in findings_of(home, recipe) if f.level > 0]
    assert above_info == []


def test_a_failure_is_found_within_two_check_intervals(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    interval = 0.5
    monitor = TrainingMonitor(home, interval=interval)
    body = "for s in range(1, 200):\n    rt.log_metrics(step=s, loss=1.0); time.sleep(0.01)\nraise RuntimeError('late')\n"
    ctl.launch_script(script(tmp_path, "late", body, 200), run_id="late")
    failed_at = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reports = monitor.check()
        status = read_meta(ctl.paths("late")).status
        if status == "failed" and failed_at is None:
            failed_at = time.monotonic()
        if any(f.rule == "crash" for r in reports for f in r.findings):
            assert failed_at is not None and time.monotonic() - failed_at <= 2 * interval + 0.5
            break
        time.sleep(interval)
    else:
        pytest.fail("no crash finding")
    assert json.loads(ctl.paths("late").events.read_text().splitlines()[-1])["rule"] == "crash"


def test_findings_cool_down_and_survive_a_restart(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 41):\n    rt.log_metrics(step=s, loss=float('nan') if s > 30 else 1.0)\n"
    run(ctl, script(tmp_path, "again", body, 40), "again")
    assert [f.rule for r in TrainingMonitor(home).check(["again"]) for f in r.findings] == ["nan"]
    assert TrainingMonitor(home).check(["again"]) == []  # a new monitor reads what was already said


# ------------------------------------------------------------------ reviews and fixes
def test_review_replies_are_read_tolerantly() -> None:
    fenced = 'Thinking...\n```json\n{"decision": "FIX", "summary": "typo", "script": "print(1)\\n"}\n```\nDone.'
    assert parse_review(fenced).decision == "FIX" and parse_review(fenced).script == "print(1)\n"
    braces = '<think>maybe {"decision": "FIX"}</think> {"decision": "warning", "summary": "lr too high", ' \
             '"evidence": ["step 30: NaN"]}'
    assert parse_review(braces).decision == "WARNING" and parse_review(braces).evidence == ("step 30: NaN",)
    code_only = "Here is a fixed script:\n```python\nprint('fixed')\n```"
    assert parse_review(code_only) is None  # code in a reply is never a FIX
    assert parse_review('{"decision": "FIX", "summary": "no script"}').decision == "WARNING"
    assert parse_review("not json at all") is None


BROKEN = "import sys\nfrom trainer.runtime import TrainingRuntime\nrt = TrainingRuntime().start(total_steps=5)\n" \
         "for s in range(1, 6):\n    rt.log_metrics(step=s, loss=1.0 / s)\nprint(totl_steps)\n"
FIXED = BROKEN.replace("print(totl_steps)", "print(s)")


def fix_answer(script: str, decision: str = "FIX") -> dict:
    return text(json.dumps({"decision": decision, "summary": "the name totl_steps is misspelled",
                            "evidence": ["NameError: name 'totl_steps' is not defined"],
                            "diagnosis": "a typo in the last line", "script": script}))


def headless(fake: FakeLLM, script_path: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(script_path), "--run-id", run_id,
                           "--monitor", "--monitor-interval", "0.5", "--llm-base-url", fake.url, "--llm-model",
                           fake.model, *extra], capture_output=True, text=True, timeout=180)


def test_a_fix_repairs_a_broken_script_and_the_relaunched_run_completes(home: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    with FakeLLM([fix_answer(FIXED)]).running() as fake:
        proc = headless(fake, tmp_path / "broken.py", "fixme", "--auto-fix")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "monitor: [critical] crash" in proc.stdout and "fix applied" in proc.stdout
    paths = RunPaths.of("fixme")
    meta = read_meta(paths)
    assert meta.status == "completed" and meta.fix_attempts == 1 and meta.launches == 2
    assert paths.script.read_text() == FIXED and paths.script_version(1).read_text() == BROKEN
    assert "totl_steps" in fake.requests[0]["messages"][1]["content"]  # the review saw the script and traceback


def test_a_warning_with_code_in_it_leaves_the_script_alone(home: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    warning = text("You could write:\n```python\nprint(s)\n```\n" + json.dumps(
        {"decision": "WARNING", "summary": "a typo", "diagnosis": "fix the name"}))
    with FakeLLM([warning]).running() as fake:
        proc = headless(fake, tmp_path / "broken.py", "warned", "--auto-fix")
    assert proc.returncode == 1 and "review: WARNING: a typo" in proc.stdout
    assert RunPaths.of("warned").script.read_text() == BROKEN
    assert read_meta(RunPaths.of("warned")).fix_attempts == 0


def test_a_fix_that_does_not_compile_is_rejected(home: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    with FakeLLM([fix_answer("def broken(:\n")]).running() as fake:
        proc = headless(fake, tmp_path / "broken.py", "nocompile", "--auto-fix")
    assert proc.returncode == 1 and "rejected: train.py does not compile" in proc.stdout
    assert RunPaths.of("nocompile").script.read_text() == BROKEN


def test_the_fourth_attempt_is_refused_and_attempts_survive_restarts(ctl: ProcessController, tmp_path: Path,
                                                                     home: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    run(ctl, tmp_path / "broken.py", "stubborn")
    for attempt in range(1, 4):
        session = Session.open(home, grace=10)  # a fresh one each time: a restart
        args = {"run_id": "stubborn", "content": BROKEN + f"\n# attempt {attempt}\n", "reason": "try"}
        prepare(session, "apply_fix", args)
        assert execute(session, "apply_fix", args).data["relaunched"]
        assert session.services.launched[-1].supervisor.wait(timeout=120) == 1
        assert read_meta(ctl.paths("stubborn")).fix_attempts == attempt
    with pytest.raises(CommandError, match="had 3 fix attempts already"):
        prepare(Session.open(home), "apply_fix", {"run_id": "stubborn", "content": FIXED, "reason": "fourth"})


def test_undo_restores_the_previous_script(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    run(ctl, tmp_path / "broken.py", "undo")
    session = Session.open(home, grace=10)
    execute(session, "apply_fix", {"run_id": "undo", "content": FIXED, "reason": "typo"})
    assert session.services.launched[-1].supervisor.wait(timeout=120) == 0
    assert ctl.paths("undo").script.read_text() == FIXED
    assert "as version 3" in execute(session, "undo_fix", {"run_id": "undo"}).text
    assert ctl.paths("undo").script.read_text() == BROKEN
    kinds = [json.loads(line)["kind"] for line in ctl.paths("undo").events.read_text().splitlines()]
    assert "fix" in kinds and kinds[-1] == "undo"


def test_a_nan_is_never_fixed_automatically(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 41):\n    rt.log_metrics(step=s, loss=float('nan') if s > 30 else 1.0)\nsys.exit(1)\n"
    run(ctl, script(tmp_path, "diverged", body, 40), "diverged")
    view = RunStore(home).view("diverged")
    view.refresh()
    snapshot = take_snapshot(view)
    automatic, why = ReviewFlow.automatic(Report(snapshot, run_rules(snapshot)), snapshot.script + "\n# lower lr\n")
    assert not automatic and "divergence or a NaN" in why


def test_doctor_prints_findings_and_exits_non_zero(ctl: ProcessController, tmp_path: Path, home: Path) -> None:
    body = "for s in range(1, 41):\n    rt.log_metrics(step=s, loss=float('nan') if s > 30 else 1.0)\n"
    run(ctl, script(tmp_path, "sick", body, 40), "sick")
    run(ctl, script(tmp_path, "well", "for s in range(1, 41):\n    rt.log_metrics(step=s, loss=1.0 / s)\n", 40),
        "well")
    sick = subprocess.run([sys.executable, "-m", "twinkle_tui", "doctor", "sick", "--llm", "none"],
                          capture_output=True, text=True, timeout=60)
    assert sick.returncode == 1 and "[critical] nan at step 31" in sick.stdout
    well = subprocess.run([sys.executable, "-m", "twinkle_tui", "doctor", "well", "--llm", "none"],
                          capture_output=True, text=True, timeout=60)
    assert well.returncode == 0 and "no findings" in well.stdout


async def test_the_dashboard_shows_findings_and_asks_before_a_fix(home: Path, tmp_path: Path) -> None:
    from twinkle_tui.agent import LLMSettings
    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp
    from twinkle_tui.ui.screens.confirm import ConfirmScreen
    from twinkle_tui.ui.widgets.chat import ChatMessage

    (tmp_path / "broken.py").write_text(BROKEN)
    ctl = ProcessController(home, grace=10)
    with FakeLLM([fix_answer(FIXED)]).running() as fake:
        llm = LLMSettings(base_url=fake.url, model=fake.model, mode="auto")
        app = TwinkleApp(home=home, llm=llm, gpu_probe=lambda: GpuSnapshot(error="no GPU"), monitor_interval=0.5,
                         data_interval=0.0)
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + 30
            while app.agent_chat.loop is None and time.monotonic() < deadline:
                await pilot.pause(0.1)
            ctl.launch_script(tmp_path / "broken.py", run_id="dash").supervisor.wait(timeout=60)
            while not isinstance(app.screen, ConfirmScreen) and time.monotonic() < deadline + 30:
                await pilot.pause(0.1)
            confirm = screen_of(app, ConfirmScreen)
            assert "Apply the monitor's fix to dash?" in confirm.title_text
            assert "-print(totl_steps)" in confirm.detail and "+print(s)" in confirm.detail
            monitor_lines = [str(m._markdown) for m in app.query(ChatMessage) if m.has_class("error")]
            assert any("[critical] crash" in m and "name/attribute error" in m for m in monitor_lines)
            await pilot.press("y")
            while read_meta(RunPaths.of("dash")).launches < 2 and time.monotonic() < deadline + 60:
                await pilot.pause(0.1)
    paths = RunPaths.of("dash")
    wait_for(lambda: read_meta(paths).status == "completed", timeout=60, what="the fixed run to complete")
    assert paths.script.read_text() == FIXED
    kinds = [json.loads(line)["kind"] for line in paths.events.read_text().splitlines()]
    assert "error" in kinds and "fix" in kinds  # the finding and the fix are chart markers


def test_a_grpo_loss_near_zero_is_explained_once_where_it_first_appears(ctl: ProcessController, tmp_path: Path,
                                                                        home: Path) -> None:
    body = "for s in range(1, 31):\n    rt.log_metrics(step=s, loss=4.967e-08 * (-1) ** s, reward=0.1 + s / 100)\n"
    run(ctl, script(tmp_path, "grpo", body, 30), "grpo")
    found = by_rule(findings_of(home, "grpo"))
    explained = found["rl-loss-near-zero"]
    assert explained.severity == "info" and explained.step == 1 and "normal for GRPO" in explained.summary
    assert any("judge learning by the reward" in e for e in explained.evidence)
    body = "for s in range(1, 31):\n    rt.log_metrics(step=s, loss=2.0 / s)\n"  # an SFT loss: nothing to explain
    run(ctl, script(tmp_path, "sft", body, 30), "sft")
    assert "rl-loss-near-zero" not in by_rule(findings_of(home, "sft"))
