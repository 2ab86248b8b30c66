"""Bad input and heavy output lose nothing and freeze nothing: each case of the adversarial pass, with its input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinkle_trainer.config import CLI, ConfigError
from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.metrics import MetricsTable
from twinkle_tui.runs.store import RunStore
from twinkle_tui.runs.tail import clean_log_line

from conftest import patch_meta, wait_for
from run_factory import make_run


def lines(n: int, start: int = 1, **extra: object) -> str:
    return "".join(json.dumps({"step": s, "ts": 1.0 + s, "loss": 1.0 / s, **extra}) + "\n" for s in range(start, start + n))


# ------------------------------------------------------------------ metrics
def test_one_bad_value_is_one_skipped_value_not_a_lost_batch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    text = lines(500) + '{"step": 501, "loss": [1, 2]}\n' + '{"step": 502, "loss": 1' + "0" * 400 + "}\n" + lines(498, 503)
    path.write_text(text)
    table = MetricsTable(path)
    assert table.read_new()
    loss = table.series["loss"]
    assert len(loss) == 998 and loss.steps[-1] == 1000  # every good line, none of the batch lost
    assert loss.non_numeric == [(501, [1, 2])]  # kept aside, not charted
    assert table.malformed == 1  # the integer beyond any float


def test_steps_out_of_range_are_malformed_and_going_back_keeps_history(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(1000) + '{"step": 1e20, "loss": 5}\n{"step": -1, "loss": 5}\n{"step": 0, "loss": 7}\n'
                    + '{"step": 10, "loss": 9}\n')
    table = MetricsTable(path)
    table.read_new()
    loss = table.series["loss"]
    assert table.malformed == 2 and len(loss) == 1001  # 1e20 and -1 skipped; step 0 added
    assert loss.steps[0] == 0 and loss.steps[-1] == 1000
    assert dict(zip(loss.steps.tolist(), loss.values.tolist(), strict=True))[10] == 9  # the newest value wins


def test_a_file_without_newlines_is_skipped_in_bounded_memory_and_read_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # 64 MB of NUL bytes, no newline: what a crash can leave behind
    table = MetricsTable(path)
    table.tail.block_size = 1024 * 1024
    table.read_new()
    assert table.tail.offset == 64 * 1024 * 1024 and table.tail.skipping and table.tail.overlong == 1
    assert not table.tail.has_new_data()  # not read again on the next refresh
    with open(path, "ab") as f:
        f.write(b"\n" + lines(3).encode())
    table.read_new()
    assert table.series["loss"].steps.tolist() == [1, 2, 3] and table.skipped == 1


def test_reads_are_bounded_and_resume_where_they_stopped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(20000))
    table = MetricsTable(path)
    table.tail.block_size = 64 * 1024
    table.read_new(max_bytes=100_000)
    first = len(table.series["loss"])
    assert 0 < first < 20000 and table.pending
    while table.pending:
        table.read_new(max_bytes=100_000)
    assert table.series["loss"].steps.tolist() == list(range(1, 20001))


def test_a_rewrite_in_place_that_grows_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(100))
    table = MetricsTable(path)
    table.read_new()
    with open(path, "r+") as f:  # same inode, rewritten with other values, longer than before
        f.write("".join(json.dumps({"step": s, "loss": 100.0 + s}) + "\n" for s in range(1, 301)))
    table.read_new()
    loss = table.series["loss"]
    assert loss.steps.tolist() == list(range(1, 301)) and loss.values[0] == 101.0  # no mix of old and new


def test_many_sparse_metric_names_reserve_memory_as_they_grow(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for s in range(1, 20001):
            f.write(json.dumps({"step": s, "loss": 1.0, f"m{s % 4000}": 1.0}) + "\n")
    table = MetricsTable(path)
    table.read_new()
    reserved = sum(len(s._steps) for s in table.series.values())
    points = sum(len(s) for s in table.series.values())
    assert len(table.series) == 4001 and reserved < 10 * points  # not 4,000 buffers sized for every line


def test_special_files_are_never_read(tmp_path: Path, home: Path) -> None:
    root = home / "weird"
    root.mkdir()
    os.mkfifo(root / "meta.json")
    (root / "metrics.jsonl").mkdir()
    (root / "output.log").symlink_to("/dev/zero")
    (root / "events.jsonl").mkdir()
    store = RunStore(home)
    start = time.monotonic()
    runs = store.list_runs()
    view = store.view("weird")
    view.refresh()
    assert time.monotonic() - start < 5  # no blocking open of the FIFO, no endless read of /dev/zero
    assert runs[0].run_id == "weird" and "not a regular file" in (view.problem or "")
    assert view.metrics.names() == [] and list(view.log.lines) == []


def test_terminal_control_sequences_never_reach_the_log_panel() -> None:
    raw = b"\x1bcreset \x1b(0box\x1b(B \x1b]0;title\x07ok \x1b[31mred\x1b[0m \xc2\x9b2J \x07bell\x00"
    assert clean_log_line(raw) == "reset box ok red 2J bell"


# ------------------------------------------------------------------ meta.json
@pytest.mark.parametrize("bad", [
    {"pid": "123"}, {"start_time": [1]}, {"progress": {"last_step": "7"}}, {"end_time": "x"},
    {"progress": {"total_steps": 1e400}}, {"last_checkpoint": "step-5"}, {"launches": 1e300},
])
def test_a_meta_json_with_bad_types_marks_only_its_run(home: Path, bad: dict) -> None:
    make_run(home, "good", steps=5)
    make_run(home, "bad", steps=5, extra_meta=bad)
    store = RunStore(home)
    runs = {r.run_id: r for r in store.list_runs()}
    assert set(runs) == {"good", "bad"} and runs["good"].problem is None
    assert "ignored bad values" in (runs["bad"].problem or "")


def test_deeply_nested_meta_is_unreadable_not_a_crash(home: Path) -> None:
    make_run(home, "deep", steps=5)
    (home / "deep" / "meta.json").write_text("[" * 100000 + "]" * 100000)
    runs = RunStore(home).list_runs()
    assert runs[0].problem and "unreadable" in runs[0].problem


def test_a_corrupt_meta_under_a_live_run_does_not_stop_training(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import time\nfrom trainer.runtime import TrainingRuntime\n"
                      "rt = TrainingRuntime('corrupt', progress_interval=0).start(total_steps=60)\n"
                      "for s in range(1, 61):\n    rt.log_metrics(step=s, loss=1.0); time.sleep(0.03)\n"
                      "rt.finish('completed')\n")
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    paths = RunPaths.of("corrupt")
    wait_for(lambda: paths.metrics.exists() and len(paths.metrics.read_text().splitlines()) > 5, what="steps")
    paths.meta.write_text("{not json")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    meta = read_meta(paths)
    assert meta.status == "completed" and meta.progress.last_step == 60
    assert len(paths.metrics.read_text().splitlines()) == 60


def test_a_symlinked_run_directory_is_refused(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "evil").symlink_to(outside)
    script = tmp_path / "t.py"
    script.write_text("print('hi')\n")
    with pytest.raises(ValueError, match="symbolic link"):
        ProcessController(home).launch_script(script, run_id="evil")
    assert list(outside.iterdir()) == []
    proc = subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(script), "--run-id", "evil"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and list(outside.iterdir()) == []


# ------------------------------------------------------------------ runs without a supervisor
@pytest.mark.parametrize(("ending", "status", "error"), [
    ("import sys; sys.exit(3)", "failed", "exited with code 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGINT); time.sleep(5)", "stopped", None),
])
def test_a_plain_python_run_ends_with_the_right_status(home: Path, tmp_path: Path, ending: str, status: str,
                                                       error: str | None) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import time\nfrom trainer.runtime import TrainingRuntime\n"
                      "rt = TrainingRuntime('plain').start(total_steps=40)\n"
                      "rt.register_graceful_shutdown(save_fn=lambda p: (p / 'w').write_text('ok'))\n"
                      f"for s in range(1, 16):\n    rt.log_metrics(step=s, loss=1.0)\n{ending}\n")
    # As from a terminal: SIGINT at its default (a shell's background job, as CI may be, ignores it, and python
    # then never raises KeyboardInterrupt).
    subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    meta = read_meta(RunPaths.of("plain"))
    assert meta.status == status and meta.error == error
    if status == "stopped":  # interrupted: a checkpoint of the last finished step
        assert meta.last_checkpoint.step == 15


# ------------------------------------------------------------------ headless
def test_headless_prints_every_line_the_run_writes(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "loud.py"
    script.write_text("import sys\nw = sys.stdout.write\nfor i in range(200000):\n    w(f'line {i}\\n')\n")
    proc = subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(script)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    got = [line for line in proc.stdout.splitlines() if line.startswith("line ")]
    assert got == [f"line {i}" for i in range(200000)]  # all of them, in order


def test_headless_into_a_closed_pipe_exits_quietly_and_the_run_goes_on(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text("import time\nfor i in range(100):\n    print('line', i, flush=True); time.sleep(0.05)\n")
    cmd = f"{sys.executable} -m twinkle_tui --run {script} --run-id piped | head -2"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.stdout.count("\n") == 2 and "Traceback" not in proc.stderr
    assert "output closed; run piped keeps training" in proc.stderr
    paths = RunPaths.of("piped")
    wait_for(lambda: read_meta(paths).status == "completed", timeout=30, what="the run to finish on its own")


def test_headless_refuses_special_files_and_bad_configs(home: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.toml")
    for spec in ("/dev/zero", str(tmp_path / "fifo.toml")):
        proc = subprocess.run([sys.executable, "-m", "twinkle_trainer", "--config", spec], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr, spec


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "inf"], "learning_rate must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--seed", "-1"], r"seed must be between 0 and 2\^32-1"),
    (["--seed", "1e26"], r"seed must be between 0 and 2\^32-1"),
    (["--max_steps", "1e29"], "max_steps is out of range"),
])
def test_non_finite_and_out_of_range_values_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CLI.from_args(argv, env={})


def test_yaml_infinity_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: .inf\n")
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        CLI.from_args([str(tmp_path / "c.yaml")], env={})


def test_an_unparsable_env_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TWINKLE_MAX_STEPS=5\nTWINKLE_LR=\"1e-3\n")
    with pytest.raises(ConfigError, match=r"^\.env:2: cannot parse"):
        CLI.from_args([], env={}, cwd=tmp_path)


def test_warmup_longer_than_the_run_is_clamped_with_a_note() -> None:
    args = CLI.from_args(["--num_warmup_steps", "3", "--max_steps", "1"], env={})
    assert args.scheduler.num_warmup_steps == 0 and "num_warmup_steps 3 -> 0" in args.notes[0]


# ------------------------------------------------------------------ checkpoints
TINY = ["--model_id", "builtin:tiny-llama", "--batch_size", "2", "--micro_batch_size", "2", "--lr", "1e-3"]


@pytest.mark.parametrize("damage", ["delete_adapter", "truncate_state"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(home: Path, damage: str) -> None:
    ctl = ProcessController(home, grace=60)
    launched = ctl.launch_module("twinkle_trainer", [*TINY, "--max_steps", "4", "--save_steps", "2"], run_id="ck")
    assert launched.supervisor.wait(timeout=240) == 0
    paths = ctl.paths("ck")
    latest = paths.checkpoint(4)
    if damage == "delete_adapter":
        (latest / "adapter_model.safetensors").unlink()
    else:
        state = latest / "trainer_state.pt"
        state.write_bytes(state.read_bytes()[:100])

    patch_meta(paths, status="stopped")
    relaunch = ctl.resume("ck")
    assert relaunch is not None and relaunch.supervisor.wait(timeout=240) == 0
    log = paths.log.read_text()
    assert "checkpoint step-4 is incomplete" in log and "resumed from step 2" in log
    steps = [json.loads(line)["step"] for line in paths.metrics.read_text().splitlines()]
    assert steps[-2:] == [3, 4]  # steps 3 and 4 trained again from the complete checkpoint


def test_config_errors_name_the_problem_for_the_dashboard(home: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "x.toml"
    recipe.write_text("[training]\nmax_steps = 1e29\n")
    launched = ProcessController(home).launch_config(recipe, run_id="cfg")
    assert launched.supervisor.wait(timeout=120) == 2
    assert "max_steps is out of range" in read_meta(RunPaths.of("cfg")).error


def test_a_latin1_script_is_read_with_its_coding_line(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "latin.py"
    script.write_bytes(b"# -*- coding: latin-1 -*-\nprint('caf\xe9')\n")
    launched = ProcessController(home).launch_script(script, run_id="latin")
    assert launched.supervisor.wait(timeout=60) == 0
    assert "café" in RunPaths.of("latin").log.read_text()
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"print('caf\xe9')\n")  # not UTF-8 and no coding line
    with pytest.raises(RunControlError, match="bad.py is not readable as Python source"):
        ProcessController(home).launch_script(bad, run_id="bad")


def test_second_ctrl_c_run_is_killed_not_stopped(home: Path, tmp_path: Path) -> None:
    from conftest import write_sigterm_ignoring_script

    script = write_sigterm_ignoring_script(tmp_path / "deaf.py")
    proc = subprocess.Popen([sys.executable, "-m", "twinkle_tui", "--run", str(script), "--run-id", "twice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paths = RunPaths.of("twice")
    wait_for(lambda: paths.metrics.exists() and paths.metrics.stat().st_size > 100, what="steps")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert read_meta(paths).status == "killed"
