"""Real scripts and real tools: --run behaves like python, the original Auto's runtime API, a Hugging Face Trainer
through TwinkleCallback (stop, checkpoint, resume), two nodes on the loopback address, and the app started from the
repository root with every key pressed once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.process.controller import ProcessController

from conftest import EXAMPLES, REPO, wait_for


def twinkle(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinkle_tui", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def metrics(run_id: str) -> list[dict]:
    path = RunPaths.of(run_id).metrics
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_examples_own_command_works(home: Path) -> None:
    """The example's docstring says `twinkle-tui --run examples/sft_smollm2.py`: its __file__ finds its recipe."""
    proc = twinkle("--run", "examples/sft_smollm2.py", "--run-id", "ex", "--", "--model_id", "builtin:tiny-llama",
                   "--max_steps", "2", cwd=REPO)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    assert "run ex completed · step 2/2" in proc.stdout


SCRIPT = """
import os, sys
from helpers import greeting
print("file", __file__)
print("path0", sys.path[0])
print("argv", sys.argv)
print("cwd", os.getcwd())
print("data", open(os.path.join(os.path.dirname(__file__), "data.txt")).read().strip())
print("greeting", greeting())
print("name", __name__)
"""


def test_a_script_runs_as_python_would_run_it(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(SCRIPT)
    (project / "helpers.py").write_text("def greeting():\n    return 'hi from a sibling module'\n")
    (project / "data.txt").write_text("next to the script\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = twinkle("--run", str(project / "train.py"), "--run-id", "py", "--", "--lr", "1e-4", "x y", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in
               ("file", "path0", "argv", "cwd", "data", "greeting", "name"))
    assert out["file"] == str(project / "train.py") and out["path0"] == str(project)
    assert out["argv"] == repr([str(project / "train.py"), "--lr", "1e-4", "x y"])
    assert out["cwd"] == str(elsewhere) and out["data"] == "next to the script"
    assert out["greeting"] == "hi from a sibling module" and out["name"] == "__main__"
    assert RunPaths.of("py").script.read_text() == SCRIPT  # the versioned copy that fixes edit


USES_OWN_TRAINER = """
from trainer import Trainer
from twinkle_trainer.runtime import TrainingRuntime
print("trainer from", Trainer.where)
rt = TrainingRuntime().start(model_id="m", total_steps=1)
rt.log_metrics(step=1, loss=1.0)
rt.finish()
"""


def test_a_users_own_trainer_py_is_theirs_and_never_breaks_a_run(home: Path, tmp_path: Path) -> None:
    """`trainer.py` is a common file name: in the working directory it must not break --run, and beside a script it
    is what the script's `import trainer` finds, as under plain python; our runtime imports as twinkle_trainer."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "trainer.py").write_text("class Trainer:\n    where = 'the user'\n")
    (project / "train.py").write_text(USES_OWN_TRAINER)
    plain = subprocess.run([sys.executable, "train.py"], capture_output=True, text=True, cwd=project, timeout=120)
    assert plain.returncode == 0 and "trainer from the user" in plain.stdout, plain.stderr
    proc = twinkle("--run", "train.py", "--run-id", "own", cwd=project)  # from the folder that holds trainer.py
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "trainer from the user" in proc.stdout and "run own completed" in proc.stdout
    recipe = twinkle("--run", str(EXAMPLES / "sft_smollm2.toml"), "--run-id", "recipe", "--", "--model_id",
                     "builtin:tiny-llama", "--max_steps", "1", cwd=project)  # our trainer, beside their trainer.py
    assert recipe.returncode == 0, recipe.stderr + recipe.stdout[-2000:]


ORIGINAL_AUTO = """
import torch
from trainer.runtime import TrainingRuntime   # the only line that changed (the old name still works)

model = torch.nn.Linear(4, 1)
dataloader = None
rt = TrainingRuntime(run_id='my-run')
rt.start(model_id='toy-linear', config={'lr': 0.1})
rt.register_graceful_shutdown(model, dataloader)
resume = rt.get_resume_info()
global_step = resume['last_step']
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(global_step + 1, 21):
    x = torch.randn(8, 4)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    rt.log_metrics(step=step, loss=loss.item(), reward=-loss.item(), grad_norm=1.0, lr=0.1)
    if step % 10 == 0:
        rt.save_checkpoint(step)
rt.log('done training')
rt.finish()
"""


def test_a_script_for_the_original_auto_runs_with_only_its_import_changed(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "auto_script.py"
    script.write_text(ORIGINAL_AUTO)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert read_meta(RunPaths.of("my-run")).status == "completed"  # on its own it uses its own run id
    proc = twinkle("--run", str(script), "--run-id", "managed")
    assert proc.returncode == 0, proc.stderr
    assert "running as managed run 'managed' (the script asked for 'my-run')" in proc.stdout
    assert [r["step"] for r in metrics("managed")] == list(range(1, 21))
    assert {"loss", "reward", "grad_norm", "lr"} <= set(metrics("managed")[0])
    assert len(metrics("my-run")) == 20  # the managed launch wrote nothing into the script's own run
    assert read_meta(RunPaths.of("managed")).last_checkpoint.step == 20


def test_a_hugging_face_trainer_run_stops_and_resumes_at_the_right_step(home: Path) -> None:
    ctl = ProcessController(home, grace=60)
    launched = ctl.launch_script(EXAMPLES / "hf_trainer.py", ["--max-steps", "400", "--save-steps", "1000"],
                                 run_id="hf")
    paths = ctl.paths("hf")
    wait_for(lambda: len(metrics("hf")) >= 8, timeout=120, what="eight steps")
    meta = read_meta(paths)
    assert meta.progress.total_steps == 400 and {"loss", "learning_rate", "grad_norm"} <= set(metrics("hf")[0])
    ctl.stop("hf")
    assert launched.supervisor.wait(timeout=120) == 0
    meta = read_meta(paths)
    stopped = meta.last_checkpoint.step
    assert meta.status == "stopped" and stopped >= 8
    assert Path(meta.last_checkpoint.path).name == f"checkpoint-{stopped}"
    assert metrics("hf")[-1]["step"] == stopped
    relaunch = ctl.resume("hf")
    assert relaunch is not None
    wait_for(lambda: metrics("hf")[-1]["step"] >= stopped + 5, timeout=120, what="steps after the resume")
    steps = [r["step"] for r in metrics("hf")]
    assert steps[:stopped] == list(range(1, stopped + 1)) and steps[stopped] == stopped + 1  # no step repeated
    ctl.kill("hf")
    relaunch.supervisor.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_nodes_on_the_loopback_address_train_one_metrics_stream(home: Path) -> None:
    port = str(free_port())
    common = ["--model_id", "builtin:tiny-llama", "--max_steps", "6", "--batch_size", "4", "--micro_batch_size", "2",
              "--save_steps", "3", "--nnodes", "2", "--master_addr", "127.0.0.1", "--master_port", port]
    ctl = ProcessController(home, grace=60)
    node0 = ctl.launch_module("twinkle_trainer", [*common, "--node_rank", "0"], run_id="nodes")
    env = {k: v for k, v in os.environ.items() if k != "TWINKLE_RUN_ID"}
    node1 = subprocess.Popen([sys.executable, "-m", "twinkle_trainer", *common, "--node_rank", "1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out1, _ = node1.communicate(timeout=400)
    assert node0.supervisor.wait(timeout=60) == 0, RunPaths.of("nodes").log.read_text()[-3000:]
    assert node1.returncode == 0, out1[-3000:]
    assert [r["step"] for r in metrics("nodes")] == list(range(1, 7))  # global rank 0 alone wrote them
    assert "2 process(es)" in RunPaths.of("nodes").log.read_text()
    assert read_meta(RunPaths.of("nodes")).status == "completed"
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == ["nodes"]  # node 1 made no run


KEYS = ["p", "r", "s", "n", "slash", "m", "z", "x", "left_square_bracket", "right_square_bracket", "0", "e", "l",
        "k", "d", "a", "b", "c", "question_mark"]


async def test_every_key_from_the_repository_root(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from twinkle_tui.gpu import GpuSnapshot
    from twinkle_tui.ui.app import TwinkleApp

    from run_factory import make_run

    monkeypatch.chdir(REPO)  # as the README starts it: examples/ is found twice (cwd and package), listed once
    make_run(home, "r", steps=100)
    app = TwinkleApp(home=home, gpu_probe=lambda: GpuSnapshot(error="no GPU detected"), watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 20
        while app.selected is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        for key in KEYS:
            await pilot.press(key)
            await pilot.pause(0.2)
            assert app.is_running, key
            if app.screen is not app.screen_stack[0]:  # a modal opened: it works, close it
                await pilot.press("escape")
                await pilot.pause(0.2)
            if key == "slash":
                await pilot.press("escape")
        from twinkle_tui.ui.screens.new_run import NewRunScreen, find_recipes

        recipes = find_recipes(REPO / "examples", REPO / "examples")
        assert len(recipes) == len({p.resolve() for p in recipes})
        await pilot.press("n")
        await pilot.pause(0.3)
        assert isinstance(app.screen, NewRunScreen)
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert app.is_running
    # `l` then `b`: the charts were resized with log-y on (plotext took the log of the log and gave up)
    assert not [r.getMessage() for r in caplog.records if "cannot be drawn" in r.getMessage()]


SPAWNS = """
import multiprocessing as mp
VERSION = "v1"


def work(_):
    return VERSION


if __name__ == "__main__":
    with mp.get_context("spawn").Pool(1) as pool:
        print("worker", pool.map(work, [0])[0], "main", VERSION, flush=True)
    raise SystemExit(1 if VERSION == "v1" else 0)
"""


def test_after_a_fix_spawned_workers_run_the_fixed_code_and_tracebacks_name_the_users_file(
        home: Path, tmp_path: Path) -> None:
    script = tmp_path / "spawns.py"
    script.write_text(SPAWNS)
    ctl = ProcessController(home, grace=10)
    assert ctl.launch_script(script, run_id="spawns").supervisor.wait(timeout=120) == 1
    log = RunPaths.of("spawns").log.read_text()
    assert "worker v1 main v1" in log
    ctl.update_script("spawns", SPAWNS.replace('VERSION = "v1"', 'VERSION = "v2"'), "fix")
    relaunch = ctl.resume("spawns")
    assert relaunch is not None and relaunch.supervisor.wait(timeout=120) == 0
    assert "worker v2 main v2" in RunPaths.of("spawns").log.read_text()  # not "worker v1": the worker ran v2 too
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\nraise ValueError('from the users file')\n")
    proc = twinkle("--run", str(broken), "--run-id", "tb")
    assert proc.returncode == 1
    frames = [line for line in proc.stdout.splitlines() if line.strip().startswith('File "')]
    assert frames == [f'  File "{broken}", line 2, in <module>']  # the user's file, not the run's archived copy
