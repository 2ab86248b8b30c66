"""tinker-cookbook's recipes, unchanged, against the training service on the tiny built-in model (issue 23).

The cookbook is installed beside tinker as a user would (`pip install --no-deps tinker-cookbook==0.5.8` with the
`cookbook` extra: its transformers cap is the only thing it disagrees with); these tests are skipped without it.
Each recipe runs in its own process through tests/cookbook_standins.py: local stand-ins for hub datasets, the
role_colon renderer for built-in models, and the tokenizer of the service's own converted model.

A client process is reaped only after the service has recorded how it ended: the service sees an unmanaged
client's exit status while the process waits for its parent, which makes every run's final status exact here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")
pytest.importorskip("tinker_cookbook", reason="tinker-cookbook is not installed (pip install --no-deps "
                    "tinker-cookbook==0.5.8 beside the cookbook extra)")

from twinkle_trainer.protocol import RunPaths, read_meta  # noqa: E402

from conftest import REPO, kill_live_runs  # noqa: E402
from test_service import BASE, Server, client_env  # noqa: E402

pytestmark = [pytest.mark.cookbook, pytest.mark.slow]
STANDINS = REPO / "tests" / "cookbook_standins.py"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cookbook-home")
    server = Server(home, "--threads", "1").wait_ready()
    yield server
    server.stop()
    kill_live_runs(home)


def state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2]


def runs_of(home: Path, pid: int) -> list[dict[str, Any]]:
    out = []
    for meta in home.glob("*/meta.json"):
        m = json.loads(meta.read_text())
        if m.get("pid") == pid and (m.get("config") or {}).get("source") == "tinker service":
            out.append(m)
    return out


def recipe(service: Server, module: str, *args: str, timeout: float = 280) -> tuple[str, list[dict[str, Any]]]:
    """Run a recipe to its end; (its output, the runs of its training clients once their end is recorded)."""
    log = service.home / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(STANDINS), module, *args], env=client_env(service),
                                cwd=service.home, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while state(proc.pid) not in ("Z", "gone"):  # not reaped yet: its exit status stays readable
            assert time.monotonic() < deadline, f"{module} still running after {timeout} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        while any(m["status"] in ("running", "starting", "stopping") for m in runs_of(service.home, proc.pid)):
            assert time.monotonic() < deadline, "the service did not record the client's end"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text, runs_of(service.home, proc.pid)


def metrics(home: Path, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / run_id / "metrics.jsonl").read_text().splitlines()]


def recipe_metrics(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


def test_sl_loop_its_nll_is_the_service_loss_and_its_metrics_reach_the_run(service: Server) -> None:
    log_path = service.home / "sl-loop"
    _, runs = recipe(service, "tinker_cookbook.recipes.sl_loop", f"model_name={BASE}", f"log_path={log_path}",
                     "batch_size=8", "max_length=256", "lora_rank=8", "save_every=4", "learning_rate=1e-3")
    (run,) = runs
    assert run["status"] == "completed" and "exited (code 0)" in (service.home / run["run_id"] / "events.jsonl"
                                                                  ).read_text()
    by_step: dict[int, dict[str, Any]] = {}
    for row in metrics(service.home, run["run_id"]):
        by_step.setdefault(row["step"], {}).update(row)
    for row in recipe_metrics(log_path):  # the recipe's step s is the service's optimizer step s + 1
        assert by_step[row["step"] + 1]["loss"] == pytest.approx(row["train_mean_nll"], abs=1e-4)
        assert by_step[row["step"] + 1]["train_mean_nll"] == pytest.approx(row["train_mean_nll"], abs=1e-6)


def test_sl_loop_resumes_from_a_checkpoint_of_an_earlier_service(service: Server, tmp_path: Path) -> None:
    """A first service trains the recipe to batch 3, saving its state at batch 2, and stops. The recipe's last
    line of checkpoints is dropped, as an interruption after that save would leave it; a second service on the
    same home resumes the recipe from the batch-2 state, and the new run names the run it continues."""
    log_path = tmp_path / "resumed"
    args = ["tinker_cookbook.recipes.sl_loop", f"model_name={BASE}", f"log_path={log_path}", "batch_size=8",
            "max_length=256", "lora_rank=8", "save_every=2", "learning_rate=1e-3"]
    first = Server(service.home, "--threads", "1").wait_ready()
    try:
        recipe(first, *args, "max_steps=3")
    finally:
        first.stop()
    lines = (log_path / "checkpoints.jsonl").read_text().splitlines()
    (log_path / "checkpoints.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # interrupted after batch 2
    state = json.loads(lines[-2])["state_path"]
    _, (resumed,) = recipe(service, *args, "max_steps=5")
    parent = state.split("/")[2]
    assert resumed["config"]["parent_run"] == parent and resumed["config"]["resumed_from"] == state
    assert sorted(m["step"] for m in metrics(service.home, resumed["run_id"]) if "loss" in m) == [3, 4, 5]
    assert f'"run": "{resumed["run_id"]}"' in (service.home / parent / "events.jsonl").read_text()


def test_sl_basic_with_its_evaluator(service: Server) -> None:
    log_path = service.home / "sl-basic"
    recipe(service, "tinker_cookbook.recipes.sl_basic", f"model_name={BASE}", f"log_path={log_path}", "lora_rank=8")
    rows = recipe_metrics(log_path)
    assert any(isinstance(r.get("test/nll"), float) and r["test/nll"] == r["test/nll"] for r in rows)


def test_rl_loop_and_math_rl_arithmetic(service: Server) -> None:
    _, (run,) = recipe(service, "tinker_cookbook.recipes.rl_loop", f"model_name={BASE}",
                       f"log_path={service.home / 'rl-loop'}", "batch_size=2", "group_size=4", "max_tokens=8",
                       "lora_rank=8", "save_every=0", "max_steps=2", "learning_rate=1e-3")
    assert run["status"] == "completed"
    _, (run,) = recipe(service, "tinker_cookbook.recipes.math_rl.train", f"model_name={BASE}",
                       "renderer_name=role_colon", "env=arithmetic", f"log_path={service.home / 'arith'}",
                       "groups_per_batch=2", "group_size=4", "max_tokens=8", "max_steps=2", "eval_every=0",
                       "save_every=0", "behavior_if_log_dir_exists=delete")
    names = set().union(*metrics(service.home, run["run_id"]))
    assert "loss" in names and any(n.startswith("env/all/reward") for n in names)  # the recipe's own rewards


def test_dpo_logs_the_surrogate_by_its_name_and_the_recipe_its_loss(service: Server) -> None:
    _, (run,) = recipe(service, "tinker_cookbook.recipes.preference.dpo.train", f"model_name={BASE}",
                       "renderer_name=role_colon", "dataset=hhh", f"log_path={service.home / 'dpo'}", "batch_size=8",
                       "max_steps=2", "learning_rate=1e-4", "behavior_if_log_dir_exists=delete")
    rows = metrics(service.home, run["run_id"])
    names = set().union(*rows)
    assert "custom loss surrogate" in names and "dpo_loss" in names
    assert "eval loss" not in names and "loss" not in names  # neither the surrogate nor its inner forward


def test_on_policy_distillation_at_the_default_rank(service: Server) -> None:
    _, (run,) = recipe(service, "tinker_cookbook.recipes.distillation.on_policy_distillation", f"model_name={BASE}",
                       f"teacher_model={BASE}", "renderer_name=role_colon", "dataset=deepmath",
                       f"log_path={service.home / 'distill'}", "groups_per_batch=2", "group_size=2", "max_tokens=8",
                       "max_steps=2", "learning_rate=1e-4", "behavior_if_log_dir_exists=delete")
    assert run["config"]["lora"]["rank"] == 128 and run["status"] == "completed"
    assert "teacher_kl" in set().union(*metrics(service.home, run["run_id"]))


def test_guess_number_a_multi_turn_rl_recipe(service: Server) -> None:
    _, (run,) = recipe(service, "tinker_cookbook.recipes.multiplayer_rl.guess_number.train", f"model_name={BASE}",
                       "renderer_name=role_colon", f"log_path={service.home / 'guess'}", "batch_size=2",
                       "group_size=2", "max_tokens=8", "max_steps=2", "eval_every=0", "save_every=0",
                       "behavior_if_log_dir_exists=delete")
    assert run["status"] == "completed" and max(m["step"] for m in metrics(service.home, run["run_id"])) >= 2


def test_two_clients_at_once_and_a_training_checkpoint_downloaded(service: Server, tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(STANDINS), "tinker_cookbook.recipes.sl_loop", f"model_name={BASE}",
                               f"log_path={tmp_path / f'two-{i}'}", "batch_size=8", "max_length=256", "lora_rank=4",
                               "save_every=0", "max_steps=3"], env=client_env(service), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=280)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]
    final = [json.loads(line)["state_path"] for i in range(2)
             for line in (tmp_path / f"two-{i}" / "checkpoints.jsonl").read_text().splitlines()]
    assert len(set(final)) == 2
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cookbook_standins; cookbook_standins.install(); "
            "from tinker_cookbook.weights import download; print(download(tinker_path=sys.argv[2], "
            "output_dir=sys.argv[3]))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "tests"), final[0], str(tmp_path / "downloaded")],
                          env=client_env(service), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "downloaded")).r == 4
    assert (tmp_path / "downloaded" / "adapter_model.safetensors").stat().st_size > 1000


@pytest.mark.timeout(300)
def test_rl_basic_with_a_kl_penalty_against_another_runs_sampler_checkpoint(service: Server) -> None:
    """rl_basic unchanged, one step with a KL penalty to the sampler weights another run saved. Its GSM8K batch is
    made smaller from the command line, as a user would (chz takes the builder with its fields: 16 problems x 4
    samples instead of 128 x 16, which took 200 s of the suite; bench/bench_service.py measures the service at
    size)."""
    _, runs = recipe(service, "tinker_cookbook.recipes.rl_loop", f"model_name={BASE}",
                     f"log_path={service.home / 'kl-reference'}", "batch_size=2", "group_size=2", "max_tokens=4",
                     "lora_rank=8", "save_every=0", "max_steps=1")
    reference = f"tinker://{runs[0]['run_id']}/sampler_weights/final"
    _, (run,) = recipe(service, "tinker_cookbook.recipes.rl_basic", f"model_name={BASE}",
                       f"log_path={service.home / 'rl-basic'}", "max_tokens=8", "max_steps=1", "lora_rank=8",
                       "dataset_builder=tinker_cookbook.recipes.math_rl.math_env:Gsm8kDatasetBuilder",
                       "dataset_builder.batch_size=16", "dataset_builder.group_size=4",
                       f"dataset_builder.model_name_for_tokenizer={BASE}", "dataset_builder.renderer_name=role_colon",
                       "kl_penalty_coef=0.1", f"kl_reference_config.base_model={BASE}",
                       f"kl_reference_config.load_checkpoint_path={reference}", timeout=240)
    assert run["status"] == "completed"
    assert any("kl" in name for name in set().union(*metrics(service.home, run["run_id"])))
    assert read_meta(RunPaths(service.home / run["run_id"])).progress.last_step == 1
