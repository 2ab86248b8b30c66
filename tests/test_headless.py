"""`twinkle-tui --run script.py`: log and progress in the terminal, the script's exit code, Ctrl-C semantics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from twinkle_trainer.protocol import RunPaths, read_meta

from conftest import TOY, wait_for, write_sigterm_ignoring_script


def twinkle(*args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "twinkle_tui", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def test_headless_run_prints_log_and_progress_and_exits_zero(home: Path) -> None:
    proc = twinkle("--run", str(TOY), "--run-id", "hl", "--", "--steps", "60")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "step 50: loss" in out  # the script's own output
    final = out.strip().splitlines()[-1]
    assert final.startswith("twinkle-tui: run hl completed · step 60/60 (100%) · loss 0.0"), final
    assert read_meta(RunPaths.of("hl")).status == "completed"


def test_headless_run_exits_with_the_scripts_exit_code(home: Path) -> None:
    proc = twinkle("--run", str(TOY), "--", "--steps", "30", "--fail-at", "4")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "RuntimeError: injected failure at step 4" in out
    assert "failed (RuntimeError: injected failure at step 4)" in out


def test_ctrl_c_stops_gracefully_with_a_checkpoint(home: Path) -> None:
    proc = twinkle("--run", str(TOY), "--run-id", "cc", "--", "--steps", "100000", "--sleep", "0.01", "--save-steps", "100000")
    paths = RunPaths.of("cc")
    wait_for(lambda: paths.metrics.exists() and len(paths.metrics.read_text().splitlines()) > 10, what="steps")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopping gracefully" in out
    meta = read_meta(paths)
    assert meta.status == "stopped" and meta.last_checkpoint.step >= 10


def test_second_ctrl_c_kills(home: Path, tmp_path: Path) -> None:
    script = write_sigterm_ignoring_script(tmp_path / "deaf.py")
    proc = twinkle("--run", str(script), "--run-id", "deaf")
    paths = RunPaths.of("deaf")
    wait_for(lambda: paths.metrics.exists() and paths.metrics.stat().st_size > 100, what="steps")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    assert read_meta(paths).exit_signal == "SIGKILL"


def test_headless_refuses_bad_input_in_one_line(home: Path, tmp_path: Path) -> None:
    proc = twinkle("--run", str(tmp_path / "missing.py"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.strip() == f"twinkle-tui: no such script or recipe: {tmp_path / 'missing.py'}"
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    proc = twinkle("--run", str(bad))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "bad.py does not compile" in err and len(err.strip().splitlines()) == 1
    proc = twinkle("--run", str(TOY), "--run-id", "../up")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "invalid run id '../up'" in err


def test_headless_runs_a_recipe_through_the_trainer(home: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[model]\nmodel_id = "builtin:tiny-llama"\n[training]\nmax_steps = 2\nbatch_size = 2\n'
                      'micro_batch_size = 2\n')
    proc = twinkle("--run", str(recipe), "--run-id", "recipe")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err + out[-2000:]
    assert "run recipe completed · step 2/2 (100%)" in out


def test_version_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "twinkle_tui", "-V"], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("twinkle-tui ") and out.returncode == 0


def test_headless_prints_a_huge_line_cut_with_a_note_and_a_last_line_without_newline(home: Path,
                                                                                      tmp_path: Path) -> None:
    """Plain python prints both; headless used to drop them silently."""
    script = tmp_path / "loud.py"
    script.write_text("import sys\nprint('before')\nprint('x' * 3_000_000)\nprint('after')\n"
                      "sys.stdout.write('the end, no newline')\n")
    proc = twinkle("--run", str(script), "--run-id", "loud")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    cut = [line for line in lines if line.startswith("xxxx")]
    assert len(cut) == 1 and "the rest of this line was cut" in cut[0] and len(cut[0]) < 1_100_000
    assert lines.index("before") < lines.index(cut[0]) < lines.index("after")
    assert any(line.startswith("the end, no newline") for line in lines), out[-500:]
