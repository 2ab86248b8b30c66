"""Runs as real processes: crash, kill, stop -> checkpoint -> resume, pause/resume, relaunch, re-attach."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from twinkle_trainer.protocol import InvalidRunId, RunPaths, process_is, read_meta
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.store import RunStore

from conftest import TOY, process_alive, wait_for, write_sigterm_ignoring_script


def steps_logged(paths: RunPaths) -> list[int]:
    if not paths.metrics.exists():
        return []
    return [json.loads(line)["step"] for line in paths.metrics.read_text().splitlines() if line.strip()]


def status(paths: RunPaths) -> str:
    return read_meta(paths).status if paths.meta.exists() else ""


def finished(paths: RunPaths) -> bool:
    return any(json.loads(line)["kind"] == "exit" for line in paths.events.read_text().splitlines()) if paths.events.exists() else False


def exits(paths: RunPaths) -> list[dict]:
    return [e for e in map(json.loads, paths.events.read_text().splitlines()) if e["kind"] == "exit"]


@pytest.fixture
def ctl(home: Path) -> ProcessController:
    return ProcessController(home, grace=10)


def test_a_crash_is_recorded_failed_with_exit_code_and_traceback(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "50", "--fail-at", "7"], run_id="crash")
    assert launched.supervisor.wait(timeout=60) == 1
    paths = ctl.paths("crash")
    meta = read_meta(paths)
    assert meta.status == "failed" and meta.exit_code == 1
    assert meta.error == "RuntimeError: injected failure at step 7"
    log = paths.log.read_text()
    assert "Traceback (most recent call last)" in log and "injected failure at step 7" in log
    traceback = log[log.index("Traceback (most recent call last)"):]
    assert "bootstrap.py" not in traceback and f'File "{TOY}"' in traceback  # as python would show it: the user's file
    assert exits(paths)[-1]["code"] == 1


def test_sigkill_is_recorded_as_killed(ctl: ProcessController) -> None:
    ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.02"], run_id="victim")
    paths = ctl.paths("victim")
    wait_for(lambda: len(steps_logged(paths)) > 3, what="training to start")
    os.kill(read_meta(paths).pid, signal.SIGKILL)
    wait_for(lambda: finished(paths), what="the exit to be recorded")
    meta = read_meta(paths)
    assert meta.status == "failed" and meta.exit_signal == "SIGKILL"
    assert meta.error == "killed by SIGKILL" and meta.exit_code == -9


def test_stop_checkpoints_and_resume_continues_at_the_next_step(ctl: ProcessController, home: Path) -> None:
    total = 400
    launched = ctl.launch_script(TOY, ["--steps", str(total), "--sleep", "0.01", "--save-steps", "1000"], run_id="sr")
    paths = ctl.paths("sr")
    wait_for(lambda: len(steps_logged(paths)) >= 20, what="20 steps")
    ctl.stop("sr")
    launched.supervisor.wait(timeout=60)
    meta = read_meta(paths)
    assert meta.status == "stopped" and meta.exit_code == 0
    stopped_at = meta.last_checkpoint.step
    assert steps_logged(paths)[-1] == stopped_at  # the checkpoint is of the last finished step
    assert (paths.checkpoint(stopped_at) / "state.pt").exists()
    from twinkle_tui.commands.runs import status_text

    view = RunStore(home).view("sr")
    view.refresh()  # what the agent answers to "why did my run stop?"
    assert re.search(rf"ended: stopped on request at step \d+; it finished step {stopped_at} and saved a checkpoint "
                     r"there \(resume continues it\)", status_text(view, time.time())), status_text(view, time.time())

    relaunch = ctl.resume("sr")
    assert relaunch is not None
    assert relaunch.supervisor.wait(timeout=120) == 0
    meta = read_meta(paths)
    assert meta.status == "completed" and meta.launches == 2
    assert steps_logged(paths) == list(range(1, total + 1))  # no repeated, no missing step
    series = RunStore(home).view("sr")
    series.refresh()
    assert series.metrics.series["loss"].steps.tolist() == list(range(1, total + 1))
    log = paths.log.read_text()
    assert log.count("===== twinkle launch") == 2 and f"resumed from step {stopped_at}" in log


def test_pause_freezes_progress_and_resume_continues(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.01"], run_id="pz")
    paths = ctl.paths("pz")
    wait_for(lambda: len(steps_logged(paths)) > 5, what="training to start")
    ctl.pause("pz")
    assert status(paths) == "paused"
    pid = read_meta(paths).pid
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T", what="the process to stop")
    frozen = len(steps_logged(paths))
    import time

    time.sleep(0.6)
    assert len(steps_logged(paths)) == frozen
    ctl.resume("pz")
    assert status(paths) == "running"
    wait_for(lambda: len(steps_logged(paths)) > frozen + 5, what="steps after resume")
    kinds = [json.loads(line)["kind"] for line in paths.events.read_text().splitlines()]
    assert kinds.index("pause") < kinds.index("resume")
    ctl.kill("pz")
    launched.supervisor.wait(timeout=30)


def test_stopping_a_paused_run_still_checkpoints(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.01", "--save-steps", "100000"], run_id="ps")
    paths = ctl.paths("ps")
    wait_for(lambda: len(steps_logged(paths)) > 5, what="training to start")
    ctl.pause("ps")
    ctl.stop("ps")
    launched.supervisor.wait(timeout=60)
    meta = read_meta(paths)
    assert meta.status == "stopped" and meta.last_checkpoint is not None


def test_grace_period_ends_in_sigkill(home: Path, tmp_path: Path) -> None:
    """A script that ignores SIGTERM is killed after the grace period and recorded as killed (no checkpoint was
    saved on the way out, so a resume must not pretend it was a clean stop)."""
    script = write_sigterm_ignoring_script(tmp_path / "stubborn.py")
    ctl = ProcessController(home, grace=0.5)
    launched = ctl.launch_script(script, run_id="stubborn")
    paths = ctl.paths("stubborn")
    wait_for(lambda: len(steps_logged(paths)) > 3, what="steps")
    ctl.stop("stubborn")
    launched.supervisor.wait(timeout=30)
    meta = read_meta(paths)
    assert meta.status == "killed" and meta.exit_signal == "SIGKILL"
    assert any(json.loads(line)["kind"] == "warning" for line in paths.events.read_text().splitlines())
    from twinkle_tui.commands.runs import how_it_ended

    view = RunStore(home).view("stubborn")
    view.refresh()
    assert re.fullmatch(r"ended: a stop was asked at step \d+, but the run did not end within its grace period and "
                        r"was killed at step \d+; (resume continues from its checkpoint at step \d+|it has no "
                        r"checkpoint, so resume starts it again)", how_it_ended(view) or ""), how_it_ended(view)


def test_a_new_controller_reattaches_to_a_live_run(home: Path) -> None:
    """The dashboard restarts: a fresh controller finds the run by pid + start time and can stop it."""
    first = ProcessController(home, grace=10)
    launched = first.launch_script(TOY, ["--steps", "100000", "--sleep", "0.01"], run_id="live")
    paths = first.paths("live")
    wait_for(lambda: len(steps_logged(paths)) > 3, what="steps")
    del first
    second = ProcessController(home, grace=10)
    assert process_alive(second, "live") and second.status("live").value == "running"
    second.stop("live")
    launched.supervisor.wait(timeout=60)
    assert status(paths) == "stopped"


def test_a_reused_pid_is_not_mistaken_for_the_run(ctl: ProcessController, home: Path) -> None:
    paths = ctl.paths("ghost")
    paths.root.mkdir()
    meta = {"status": "running", "pid": os.getpid(), "pid_start_time": 1, "command": ["true"]}
    paths.meta.write_text(json.dumps(meta))
    assert not process_is(os.getpid(), 1)
    with pytest.raises(RunControlError, match="failed"):
        ctl.pause("ghost")
    assert RunStore(home).view("ghost").status.value == "failed"


def test_update_script_archives_versions_and_refuses_code_that_does_not_compile(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "3"], run_id="fixme")
    launched.supervisor.wait(timeout=60)
    paths = ctl.paths("fixme")
    original = paths.script.read_text()
    with pytest.raises(RunControlError, match=r"does not compile: .* \(line 1\)"):
        ctl.update_script("fixme", "def broken(:\n")
    assert paths.script.read_text() == original and not paths.script_version(1).exists()
    assert ctl.update_script("fixme", original + "\n# fix 1\n") == 2
    assert ctl.update_script("fixme", original + "\n# fix 2\n") == 3
    assert paths.script_version(1).read_text() == original
    assert paths.script_version(2).read_text().endswith("# fix 1\n")
    assert read_meta(paths).script_version == 3


def test_bad_run_ids_are_refused_everywhere(ctl: ProcessController, home: Path) -> None:
    store = RunStore(home)
    for bad in ["../x", "a/b", ""]:
        with pytest.raises(InvalidRunId):
            ctl.launch_script(TOY, run_id=bad) if bad else ctl.paths(bad)
        with pytest.raises(InvalidRunId):
            ctl.stop(bad)
        with pytest.raises(InvalidRunId):
            store.view(bad)
    assert list(home.iterdir()) == []


def test_actions_on_runs_in_the_wrong_state_explain_why(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "2"], run_id="done")
    launched.supervisor.wait(timeout=60)
    with pytest.raises(RunControlError, match="cannot pause run 'done': it is completed"):
        ctl.pause("done")
    with pytest.raises(RunControlError, match="cannot resume run 'done': it is completed"):
        ctl.resume("done")
    with pytest.raises(RunControlError, match="already exists"):
        ctl.launch_script(TOY, run_id="done")


def test_a_script_that_does_not_compile_is_refused_before_launch(ctl: ProcessController, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("for x in\n")
    with pytest.raises(RunControlError, match="bad.py does not compile"):
        ctl.launch_script(bad, run_id="bad")
    assert not ctl.paths("bad").root.exists()


SLOW_STEPS = """
import sys, time
from twinkle_trainer.runtime import TrainingRuntime

step_seconds = float(sys.argv[1])
rt = TrainingRuntime().start(model_id="slow", total_steps=1000)
start = rt.get_resume_info().step if rt.get_resume_info() else 0
rt.register_graceful_shutdown(save_fn=lambda path: (path / "state.txt").write_text("saved"))
for step in range(start + 1, 1001):
    time.sleep(step_seconds)  # a slow step (GRPO on a CPU takes minutes)
    rt.log_metrics(step=step, loss=1.0 / step)
    rt.flush_progress()
    rt.step_boundary(step)
"""


def test_a_stop_gives_a_slow_run_time_to_finish_its_step_and_keep_its_checkpoint(home: Path, tmp_path: Path) -> None:
    """Steps of 2 s with --grace 1: the grace grows to fit three steps and a save, so the stop still ends in a
    checkpoint (it used to end in a kill with none)."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STEPS)
    ctl = ProcessController(home, grace=1.0)
    launched = ctl.launch_script(script, ["2.0"], run_id="slow")
    paths = ctl.paths("slow")
    wait_for(lambda: (read_meta(paths).progress.step_seconds or 0) > 1.5, timeout=60, what="two timed steps")
    time.sleep(0.3)  # now inside a step
    ctl.stop("slow")
    wait_for(lambda: read_meta(paths).stop_deadline is not None, what="the stop deadline")
    meta = read_meta(paths)
    assert meta.stop_deadline - time.time() > 5  # 3 steps of 2 s and the exit, not the 1 s of --grace
    assert launched.supervisor.wait(timeout=60) == 0
    meta = read_meta(paths)
    assert meta.status == "stopped" and meta.last_checkpoint is not None
    assert meta.last_checkpoint.step == meta.progress.last_step  # the step it was on was finished and saved


def test_a_run_that_cannot_finish_its_step_is_told_before_it_is_killed(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text("import signal, time\nfrom twinkle_trainer.runtime import TrainingRuntime\n"
                      "rt = TrainingRuntime().start(model_id='x')\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "for s in range(1, 4):\n    rt.log_metrics(step=s, v=1.0); time.sleep(0.05)\nrt.flush_progress()\n"
                      "time.sleep(600)  # step 4 never ends\n")
    ctl = ProcessController(home, grace=1.0)
    launched = ctl.launch_script(script, run_id="stuck")
    paths = ctl.paths("stuck")
    wait_for(lambda: read_meta(paths).progress.last_step == 3, what="three steps")
    ctl.stop("stuck")
    launched.supervisor.wait(timeout=60)
    log = paths.log.read_text()
    assert "[twinkle] stop: still finishing step 4" in log and "without a checkpoint (give it longer with --grace)" in log
    assert read_meta(paths).status == "killed"


def test_paused_time_is_not_running_time_nor_step_time(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.05"], run_id="pausy")
    paths = ctl.paths("pausy")
    wait_for(lambda: len(steps_logged(paths)) > 10, what="steps")
    ctl.pause("pausy")
    time.sleep(3.0)
    ctl.resume("pausy")
    wait_for(lambda: (read_meta(paths).progress.step_seconds or 0) > 0 and len(steps_logged(paths)) > 60,
             timeout=60, what="steps after the pause")
    meta = read_meta(paths)
    assert 2.5 < meta.paused_seconds < 6 and meta.paused_at is None
    wall = time.time() - meta.launch_time
    assert meta.running_seconds(time.time()) < wall - 2.5  # the pause is not running time
    assert meta.progress.step_seconds < 1.0  # nor step time: a step that spans a pause is not a 3 s step
    ctl.kill("pausy")
    launched.supervisor.wait(timeout=30)
