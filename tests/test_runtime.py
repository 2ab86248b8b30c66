"""TrainingRuntime inside real training processes: progress kept, failures recorded, last step never lost."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_trainer.runtime import TrainingRuntime


def run_py(code: str, *args: str, env_run_id: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_run_id:
        env["TWINKLE_RUN_ID"] = env_run_id
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)


def test_start_keeps_progress_and_resume_returns_the_last_checkpoint(home: Path) -> None:
    rt = TrainingRuntime("keep").start(model_id="m", total_steps=100)
    for step in range(1, 31):
        rt.log_metrics(step=step, loss=1.0 / step)
    rt.save_checkpoint(30, save_fn=lambda p: None if (p / "weights.bin").write_bytes(b"w") else None)
    rt.finish("stopped")

    again = TrainingRuntime("keep").start(model_id="m")
    meta = read_meta(again.paths)
    assert (meta.progress.last_step, meta.progress.total_steps) == (30, 100)
    assert meta.status == "running" and meta.launches == 2
    info = again.get_resume_info()
    assert info is not None and info.step == 30 and info.next_step == 31
    assert (info.path / "weights.bin").read_bytes() == b"w"
    assert again.log_metrics(loss=0.5) == 31  # auto-increment continues after the resumed step


def test_resume_falls_back_past_a_damaged_checkpoint(home: Path) -> None:
    rt = TrainingRuntime("dmg").start()
    rt.save_checkpoint(10)
    rt.save_checkpoint(20)
    (rt.paths.checkpoint(20) / "twinkle_state.json").write_text("{torn")
    info = rt.get_resume_info()
    assert info is not None and info.step == 10


def test_a_fresh_run_has_nothing_to_resume(home: Path) -> None:
    info = TrainingRuntime("fresh").start().get_resume_info()
    assert not info and info.step == 0 and info.path is None
    assert info["last_step"] == 0 and info.get("checkpoint_path") is None  # the original Auto's dict usage


def test_metrics_lines_keep_nan_inf_and_free_text_names(home: Path) -> None:
    rt = TrainingRuntime("nan").start()
    named: dict[str, Any] = {"learning rate": 1e-4, "grad norm": float("inf")}
    rt.log_metrics(loss=float("nan"), **named)
    line = rt.paths.metrics.read_text()
    assert '"loss": NaN' in line and '"grad norm": Infinity' in line
    rec = json.loads(line)
    assert rec["step"] == 1 and math.isnan(rec["loss"]) and rec["learning rate"] == 1e-4 and rec["ts"] > 0


def test_run_id_comes_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINKLE_RUN_ID", "from-env")
    assert TrainingRuntime().run_id == "from-env"
    monkeypatch.setenv("TWINKLE_RUN_ID", "../escape")
    with pytest.raises(ValueError, match="invalid run id"):
        TrainingRuntime()


def test_an_uncaught_exception_marks_the_run_failed_with_its_summary(home: Path) -> None:
    code = (
        "from trainer.runtime import TrainingRuntime\n"
        "rt = TrainingRuntime('boom').start(model_id='m')\n"
        "rt.log_metrics(step=1, loss=1.0)\n"
        "raise ValueError('bad batch shape (3, 4)')\n"
    )
    proc = run_py(code)
    assert proc.returncode == 1 and "ValueError: bad batch shape" in proc.stderr  # the traceback still prints
    meta = read_meta(RunPaths.of("boom"))
    assert meta.status == "failed" and meta.error == "ValueError: bad batch shape (3, 4)"
    assert meta.progress.last_step == 1


def test_the_last_step_is_flushed_at_exit(home: Path) -> None:
    """Progress is throttled to one meta write per interval; exiting must not lose the steps since then."""
    code = (
        "from trainer.runtime import TrainingRuntime\n"
        "rt = TrainingRuntime('flush', progress_interval=3600).start()\n"
        "for s in range(1, 58): rt.log_metrics(step=s, loss=1.0)\n"
    )
    assert run_py(code).returncode == 0
    meta = read_meta(RunPaths.of("flush"))
    assert meta.progress.last_step == 57 and meta.status == "completed"


def test_sigterm_sets_should_stop_and_step_boundary_checkpoints(home: Path) -> None:
    code = (
        "import os, signal\n"
        "from trainer.runtime import TrainingRuntime\n"
        "rt = TrainingRuntime('term').start()\n"
        "rt.register_graceful_shutdown(save_fn=lambda p: (p / 'w').write_text('ok'))\n"
        "for s in range(1, 100):\n"
        "    rt.log_metrics(step=s, loss=1.0)\n"
        "    if s == 12: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    rt.step_boundary(s)\n"
        "raise SystemExit('not stopped')\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(RunPaths.of("term"))
    assert meta.status == "stopped" and meta.last_checkpoint.step == 12
    assert (RunPaths.of("term").checkpoint(12) / "w").read_text() == "ok"


def test_finish_rejects_non_final_status(home: Path) -> None:
    rt = TrainingRuntime("x").start()
    with pytest.raises(ValueError, match="completed, stopped or failed"):
        rt.finish("running")


def test_start_does_not_clobber_fields_written_by_others(home: Path) -> None:
    paths = RunPaths.of("others")
    paths.root.mkdir(parents=True)
    paths.meta.write_text(json.dumps({"fix_attempts": 2, "custom": "kept"}))
    TrainingRuntime("others").start()
    meta = read_meta(paths)
    assert meta.fix_attempts == 2 and meta.extra["custom"] == "kept"


REENTRANT = """
import signal, sys
from twinkle_trainer.runtime import TrainingRuntime
rt = TrainingRuntime('reentrant').start()
nested = []
def hook(frame, event, arg):
    # A second SIGTERM arriving while the first handler holds any lock: run the handler again right there.
    owner = getattr(arg, "__self__", None)
    if event == "c_return" and not nested and type(owner).__name__ in ("lock", "RLock"):
        nested.append(1)
        rt._on_sigterm(signal.SIGTERM, None)
sys.setprofile(hook)
rt._on_sigterm(signal.SIGTERM, None)
sys.setprofile(None)
print("stopped" if rt.should_stop else "not stopped")
"""


def test_the_stop_handler_is_safe_against_a_second_signal_inside_it(home: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", REENTRANT], capture_output=True, text=True, timeout=20)
    assert proc.stdout.strip().endswith("stopped") and "not stopped" not in proc.stdout, proc.stderr


def test_the_runtime_page_documents_every_public_member() -> None:
    """docs/runtime.md is the runtime's reference: a public method without an entry there is a defect."""
    import inspect

    from twinkle_trainer.integrations.hf import TwinkleCallback
    from twinkle_trainer.runtime import ResumeInfo

    page = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text()
    members = [n for n, _ in inspect.getmembers(TrainingRuntime) if not n.startswith("_")]
    assert len(members) >= 14
    missing = [n for n in members if f"`{n}" not in page]
    assert missing == []
    assert all(f"`{n}" in page for n in ("step", "path", "next_step", "resume_from_checkpoint"))
    assert ResumeInfo.__doc__ and TwinkleCallback.__doc__
