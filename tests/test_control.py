"""Control you can trust, each case from the adversarial pass run for real: supervisors that die, stops that race
resumes, helpers in their own session, pids that were reused, launches that cannot start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, process_start_time, read_meta
from twinkle_tui.gpu import UsageSampler
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.store import RunStore

from conftest import TOY, patch_meta, wait_for, write_sigterm_ignoring_script


def state(pid: int) -> str:
    """The kernel's one-letter state of a process (T = stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return "gone"


def steps(paths: RunPaths) -> int:
    return len(paths.metrics.read_text().splitlines()) if paths.metrics.exists() else 0


def events(paths: RunPaths, kind: str) -> list[dict]:
    return [e for e in map(json.loads, paths.events.read_text().splitlines()) if e["kind"] == kind]


@pytest.fixture
def ctl(home: Path) -> ProcessController:
    return ProcessController(home, grace=5)


def kill_supervisor(paths: RunPaths) -> None:
    supervisor = read_meta(paths).supervisor_pid
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: state(supervisor) in ("gone", "Z"), what="the supervisor to die")


def test_a_relaunch_that_cannot_start_rolls_back_and_says_why(ctl: ProcessController, tmp_path: Path) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    launched = ctl.launch_script(TOY, ["--steps", "3"], run_id="gonedir", cwd=workdir)
    assert launched.supervisor.wait(timeout=60) == 0
    paths = ctl.paths("gonedir")
    patch_meta(paths, status="stopped")
    before = read_meta(paths)
    workdir.rmdir()
    with pytest.raises(RunControlError, match="its working directory .* no longer exists"):
        ctl.resume("gonedir")
    after = read_meta(paths)
    assert after.status == "stopped" and after.launches == before.launches  # nothing left "starting"


def test_a_supervisor_that_cannot_start_rolls_meta_back(ctl: ProcessController, tmp_path: Path) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "2"], run_id="nopython")
    launched.supervisor.wait(timeout=60)
    paths = ctl.paths("nopython")
    patch_meta(paths, status="failed")
    launches = read_meta(paths).launches
    ctl.python = str(tmp_path / "no-such-python")
    with pytest.raises(RunControlError, match="cannot launch 'nopython'"):
        ctl.resume("nopython")
    meta = read_meta(paths)
    assert meta.status == "failed" and meta.launches == launches
    assert events(paths, "launch_failed")


def test_a_failure_without_traceback_records_the_error_line(ctl: ProcessController, tmp_path: Path) -> None:
    recipe = tmp_path / "broken.toml"
    recipe.write_text("[training]\nmax_steps = 2\n[dataset]\ndata_file = 'nowhere.jsonl'\n")
    launched = ctl.launch_config(recipe, ["--model_id", "builtin:tiny-llama"], run_id="cfg")
    assert launched.supervisor.wait(timeout=120) == 2
    meta = read_meta(ctl.paths("cfg"))
    assert meta.status == "failed" and meta.error.startswith("error: data file not found")


def test_stop_right_after_launch_is_never_lost(ctl: ProcessController, tmp_path: Path) -> None:
    """The supervisor installs its handlers before it publishes its pid: a stop in that window is delivered."""
    slow = tmp_path / "slow_start.py"
    slow.write_text("import time\ntime.sleep(1.5)\nfrom trainer.runtime import TrainingRuntime\n"
                    "rt = TrainingRuntime().start()\nfor i in range(1, 10**6):\n"
                    "    rt.log_metrics(step=i, v=1.0); time.sleep(0.01); rt.step_boundary(i)\n")
    launched = ctl.launch_script(slow, run_id="early")
    paths = ctl.paths("early")
    wait_for(lambda: read_meta(paths).supervisor_pid, timeout=10, what="the supervisor's pid")
    os.kill(read_meta(paths).supervisor_pid, signal.SIGTERM)  # as soon as it is visible
    assert launched.supervisor.wait(timeout=30) is not None
    meta = read_meta(paths)
    assert meta.status in ("stopped", "failed") and events(paths, "exit")  # recorded, not orphaned
    assert state(meta.pid) == "gone"


def test_stop_without_a_supervisor_still_ends_in_a_kill(ctl: ProcessController, tmp_path: Path) -> None:
    script = write_sigterm_ignoring_script(tmp_path / "deaf.py")
    ctl.grace = 1.0
    ctl.launch_script(script, run_id="deaf")
    paths = ctl.paths("deaf")
    wait_for(lambda: steps(paths) > 3, what="steps")
    pid = read_meta(paths).pid
    kill_supervisor(paths)
    ctl.stop("deaf")  # an adopting supervisor takes over and enforces the grace period
    wait_for(lambda: state(pid) == "gone", timeout=20, what="the run to be killed after the grace period")
    wait_for(lambda: read_meta(paths).status == "killed", timeout=10, what="the kill to be recorded")
    assert events(paths, "adopt")


def test_kill_action_ends_a_stopping_run(ctl: ProcessController, tmp_path: Path) -> None:
    script = write_sigterm_ignoring_script(tmp_path / "deaf.py")
    ctl.grace = 60
    launched = ctl.launch_script(script, run_id="stuck")
    paths = ctl.paths("stuck")
    wait_for(lambda: steps(paths) > 3, what="steps")
    ctl.stop("stuck")
    assert read_meta(paths).status == "stopping"
    with pytest.raises(RunControlError, match="it is stopping"):
        ctl.stop("stuck")
    ctl.kill("stuck")
    assert launched.supervisor.wait(timeout=30) is not None
    assert read_meta(paths).status == "killed"


def test_a_run_whose_supervisor_died_before_recording_it_is_recovered(ctl: ProcessController, home: Path) -> None:
    paths = ctl.paths("orphan")
    paths.root.mkdir()
    patch_meta(paths, status="starting", launches=1, start_time=time.time() - 60,
               supervisor_pid=999_999, supervisor_start_time=1)
    env = {**os.environ, "TWINKLE_RUN_ID": "orphan", "TWINKLE_HOME": str(home), "TWINKLE_LAUNCH": "1"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
    try:
        wait_for(lambda: process_start_time(child.pid), what="the child")
        assert ctl.recover("orphan") == "adopted"  # found by the environment it carries
        meta = read_meta(paths)
        assert meta.pid == child.pid and meta.supervisor_pid != 999_999
        ctl.pause("orphan")  # accepts actions again
        wait_for(lambda: state(child.pid) == "T", what="SIGSTOP")
        ctl.kill("orphan")
        wait_for(lambda: child.poll() is not None, what="the kill")
    finally:
        child.kill()
        child.wait()


def test_a_run_with_nothing_left_is_recorded_as_ended(ctl: ProcessController) -> None:
    paths = ctl.paths("ghost")
    paths.root.mkdir()
    patch_meta(paths, status="starting", launches=1, start_time=time.time() - 60,
               supervisor_pid=999_999, supervisor_start_time=1)
    assert ctl.recover("ghost") == "recorded as ended"
    meta = read_meta(paths)
    assert meta.status == "failed" and "supervisor and process are gone" in meta.error


HELPER = """
import subprocess, sys, time
from twinkle_trainer.runtime import TrainingRuntime
helper = subprocess.Popen([sys.executable, "-c",
    "import sys, time, pathlib\\np = pathlib.Path(sys.argv[1])\\nwhile True:\\n    p.write_text(str(time.time())); time.sleep(0.05)",
    sys.argv[1]], start_new_session=True)
rt = TrainingRuntime().start()
for i in range(1, 10**6):
    rt.log_metrics(step=i, v=1.0); time.sleep(0.02); rt.step_boundary(i)
"""


def test_a_helper_in_its_own_session_is_paused_and_stopped_with_the_run(ctl: ProcessController,
                                                                        tmp_path: Path) -> None:
    script = tmp_path / "with_helper.py"
    script.write_text(HELPER)
    beat = tmp_path / "heartbeat"
    launched = ctl.launch_script(script, [str(beat)], run_id="helper")
    paths = ctl.paths("helper")
    wait_for(lambda: beat.exists() and steps(paths) > 3, what="the helper's heartbeat")
    ctl.pause("helper")
    time.sleep(0.3)
    frozen = beat.read_text()
    time.sleep(0.6)
    assert beat.read_text() == frozen  # the helper is paused too
    ctl.resume("helper")
    wait_for(lambda: beat.read_text() != frozen, what="the helper to beat again")
    ctl.stop("helper")
    launched.supervisor.wait(timeout=30)
    last = beat.read_text()
    time.sleep(0.5)
    assert beat.read_text() == last  # nothing of the run is left running


def test_pause_and_resume_from_two_dashboards_never_disagree_with_the_process(ctl: ProcessController,
                                                                               home: Path) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "10000000", "--sleep", "0.01"], run_id="race")
    paths = ctl.paths("race")
    wait_for(lambda: steps(paths) > 3, what="steps")
    pid = read_meta(paths).pid
    other = ProcessController(home, grace=5)
    def act(c: ProcessController, action: str) -> None:
        try:
            getattr(c, action)("race")
        except RunControlError:
            pass  # refused: the other one got there first

    for _ in range(150):
        threads = [threading.Thread(target=act, args=(ctl, "pause")), threading.Thread(target=act, args=(other, "resume"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = read_meta(paths).status
        # a lost race disagrees for good; a signal on a busy machine can take a moment
        wait_for(lambda status=status: (state(pid) == "T") == (status == "paused"), timeout=10,  # type: ignore[misc]
                 what=f"process state to match meta ({status})")
        if status == "paused":
            ctl.resume("race")
    ctl.kill("race")
    launched.supervisor.wait(timeout=30)


def test_an_old_launch_exit_never_overwrites_a_newer_launch(ctl: ProcessController) -> None:
    launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.01", "--save-steps", "5"], run_id="quick")
    paths = ctl.paths("quick")
    wait_for(lambda: steps(paths) > 10, what="steps")
    ctl.stop("quick")
    relaunch = None
    deadline = time.monotonic() + 30
    while relaunch is None and time.monotonic() < deadline:  # resume as early as it is allowed
        try:
            relaunch = ctl.resume("quick")
        except RunControlError:
            time.sleep(0.02)
    assert relaunch is not None
    launched.supervisor.wait(timeout=30)
    wait_for(lambda: read_meta(paths).status == "running", timeout=20, what="launch 2 running")
    time.sleep(0.5)
    meta = read_meta(paths)
    assert meta.launches == 2 and meta.status == "running"
    assert [e["launch"] for e in events(paths, "exit")] == [1]
    ctl.kill("quick")
    relaunch.supervisor.wait(timeout=30)


def test_a_script_that_outlives_its_supervisor_records_its_own_exit(ctl: ProcessController, tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import time\nfor i in range(30):\n    print('tick', i, flush=True); time.sleep(0.05)\n")
    ctl.launch_script(script, run_id="selfrec")
    paths = ctl.paths("selfrec")
    wait_for(lambda: paths.log.exists() and "tick 3" in paths.log.read_text(), what="ticks")
    kill_supervisor(paths)
    wait_for(lambda: read_meta(paths).status == "completed", timeout=20, what="the run's own exit record")
    meta = read_meta(paths)
    assert meta.exit_code == 0 and meta.error is None


def test_headless_follows_a_run_whose_supervisor_dies(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import time\nfor i in range(40):\n    print('tick', i, flush=True); time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-m", "twinkle_tui", "--run", str(script), "--run-id", "hs"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paths = RunPaths.of("hs")
    wait_for(lambda: paths.log.exists() and "tick 2" in paths.log.read_text(), what="ticks")
    kill_supervisor(paths)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "tick 39" in out and "run hs completed" in out


def test_a_pid_without_start_time_is_never_signalled(ctl: ProcessController) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        paths = ctl.paths("unsure")
        paths.root.mkdir()
        patch_meta(paths, status="running", pid=sleeper.pid, pid_start_time=None, launches=1)
        with pytest.raises(RunControlError, match="cannot be confirmed"):
            ctl.pause("unsure")
        time.sleep(0.2)
        assert state(sleeper.pid) != "T"
        assert RunStore(ctl.home).view("unsure").status.value == "running"  # shown as claimed, not acted on
    finally:
        sleeper.kill()
        sleeper.wait()


BUSY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
time.sleep(600)
"""


def test_resources_count_the_cpu_of_child_processes() -> None:
    parent = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        import psutil

        wait_for(lambda: psutil.Process(parent.pid).children(), what="the busy child")
        child = psutil.Process(parent.pid).children()[0]

        def cpu_seconds() -> float:  # what the two processes themselves report having used
            return sum(sum(p.cpu_times()[:2]) for p in (psutil.Process(parent.pid), child))

        sampler = UsageSampler()
        sampler.sample(parent.pid)
        used, started = cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        usage = sampler.sample(parent.pid)
        expected = (cpu_seconds() - used) / (time.monotonic() - started) * 100
        assert usage is not None and usage.processes == 2
        # the child's busy loop as the processes report it, however busy the machine is (not 0% from a fresh
        # Process object, not the parent alone)
        assert expected > 5 and abs(usage.cpu_percent - expected) <= max(10.0, 0.25 * expected), (usage, expected)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_a_burst_of_stop_signals_never_deadlocks_the_run(ctl: ProcessController) -> None:
    """A second SIGTERM arriving inside the handler of the first must not hang the run (a lock taken in a signal
    handler would), and a stop signals every process once."""
    for attempt in range(3):
        run_id = f"burst{attempt}"
        launched = ctl.launch_script(TOY, ["--steps", "100000", "--sleep", "0.005", "--save-steps", "100000"],
                                     run_id=run_id)
        paths = ctl.paths(run_id)
        wait_for(lambda paths=paths: steps(paths) > 5, what="steps")  # type: ignore[misc]
        pid = read_meta(paths).pid
        for _ in range(200):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        assert launched.supervisor.wait(timeout=30) == 0
        assert read_meta(paths).status == "stopped"
