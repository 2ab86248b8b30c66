"""The run-directory protocol: run ids, $TWINKLE_HOME, atomic meta.json, tolerant reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twinkle_trainer.protocol import (
    InvalidRunId,
    MetaError,
    RunPaths,
    RunStatus,
    process_is,
    process_start_time,
    read_meta,
    twinkle_home,
    update_meta,
    validate_run_id,
    write_json_atomic,
)

BAD_IDS = ["", "../x", "a/b", "..", ".hidden", "-flag", "a b", "x" * 129, "é"]


@pytest.mark.parametrize("run_id", ["a", "run-1", "My_Run.v2", "0" * 128])
def test_good_run_ids_are_accepted(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_bad_run_ids_are_refused_with_a_one_line_reason(run_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRunId) as err:
        RunPaths.of(run_id, tmp_path)
    assert "\n" not in str(err.value) and "run id" in str(err.value)


def test_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINKLE_HOME", str(tmp_path / "env"))
    assert twinkle_home() == tmp_path / "env"
    assert twinkle_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("TWINKLE_HOME")
    assert twinkle_home() == Path.home() / ".cache" / "twinkle"


def test_meta_read_tolerates_missing_unknown_fields_and_old_error_status(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "old")
    paths.root.mkdir()
    paths.meta.write_text(json.dumps({"status": "error", "future_field": [1, 2], "progress": {"last_step": 7}}))
    meta = read_meta(paths)
    assert meta.status == "failed"
    assert meta.extra["future_field"] == [1, 2] and meta.to_json()["future_field"] == [1, 2]
    assert (meta.progress.last_step, meta.progress.total_steps) == (7, None)
    assert meta.run_id == "old" and meta.launches == 0


def test_missing_and_corrupt_meta_give_one_line_errors(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "r")
    paths.root.mkdir()
    with pytest.raises(MetaError, match="has no meta.json"):
        read_meta(paths)
    paths.meta.write_text('{"status": "runn')
    with pytest.raises(MetaError, match="unreadable") as err:
        read_meta(paths)
    assert "\n" not in str(err.value)


def test_atomic_writes_are_never_seen_partially(tmp_path: Path) -> None:
    """A reader process polling meta.json while we rewrite it 300 times only ever sees whole documents."""
    target = tmp_path / "meta.json"
    write_json_atomic(target, {"n": 0, "pad": "x" * 50_000})
    reader = subprocess.Popen(
        [sys.executable, "-c", (
            "import json, sys, time\n"
            f"p = {str(target)!r}; bad = 0; seen = 0; t = time.time()\n"
            "while time.time() - t < 4:\n"
            "    try: d = json.load(open(p)); seen += 1\n"
            "    except ValueError: bad += 1\n"
            "    if seen and d['n'] == 299: break\n"
            "print(bad, seen)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    for n in range(300):
        write_json_atomic(target, {"n": n, "pad": "x" * 50_000})
    out, _ = reader.communicate(timeout=20)
    bad, seen = map(int, out.split())
    assert bad == 0 and seen > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_update_meta_serializes_concurrent_writers(tmp_path: Path) -> None:
    """Four processes each increment a counter 50 times under the lock: no update is lost."""
    paths = RunPaths(tmp_path / "r")
    code = (
        "import sys; from pathlib import Path; from trainer.protocol import RunPaths, update_meta\n"
        "def bump(m): m.fix_attempts += 1\n"
        "p = RunPaths(Path(sys.argv[1]))\n"
        "for _ in range(50): update_meta(p, bump)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(paths.root)]) for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert read_meta(paths).fix_attempts == 200


def test_update_meta_starts_from_defaults_and_keeps_other_fields(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "r")
    update_meta(paths, lambda m: setattr(m, "model_id", "tiny"))
    update_meta(paths, lambda m: setattr(m.progress, "last_step", 3))
    meta = read_meta(paths)
    assert (meta.model_id, meta.progress.last_step, meta.status) == ("tiny", 3, "starting")


def test_status_parsing() -> None:
    assert RunStatus.parse("RUNNING") is RunStatus.RUNNING
    assert RunStatus.parse("error") is RunStatus.FAILED
    assert RunStatus.PAUSED.is_active and not RunStatus.COMPLETED.is_active


def test_process_identity_survives_pid_reuse() -> None:
    """A pid whose start time differs from the recorded one is a different process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(proc.pid)
        assert start is not None
        assert process_is(proc.pid, start)
        assert not process_is(proc.pid, start + 1)
    finally:
        proc.kill()
        proc.wait()
    assert not process_is(proc.pid, start)
