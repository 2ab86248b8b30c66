"""Reading metrics.jsonl as it grows: torn lines, malformed lines, NaN/Inf, relaunches, concurrent writers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from twinkle_tui.runs.metrics import MetricsTable


def write(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_torn_last_line_waits_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, '{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    table = MetricsTable(path)
    assert table.read_new()
    assert table.series["loss"].steps.tolist() == [1]
    assert table.malformed == 0
    write(path, 'ss": 1.5}\n')
    assert table.read_new()
    assert table.series["loss"].values.tolist() == [2.0, 1.5]
    assert not table.read_new()


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, '{"step": 1, "loss": 1}\nnot json\n[1, 2]\n{"loss": 3}\n\n{"step": 2, "loss": 0.5}\n')
    table = MetricsTable(path)
    table.read_new()
    assert table.series["loss"].steps.tolist() == [1, 2]
    assert table.malformed == 3
    assert "loss" in table.malformed_example


def test_nan_and_infinity_are_read_as_such(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, '{"step": 1, "loss": NaN}\n{"step": 2, "loss": Infinity}\n{"step": 3, "loss": -Infinity}\n')
    table = MetricsTable(path)
    table.read_new()
    values = table.series["loss"].values
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_free_text_names_and_non_numeric_values(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "learning rate": 1e-4, "train/accuracy_reward": 0.25, "phase": "warmup"},
        {"step": 2, "learning rate": 2e-4, "train/accuracy_reward": 0.5, "phase": "main"},
    ]
    write(path, "".join(json.dumps(r) + "\n" for r in rows))
    table = MetricsTable(path)
    table.read_new()
    assert table.names() == ["learning rate", "train/accuracy_reward"]
    assert table.series["phase"].non_numeric == [(1, "warmup"), (2, "main")]
    assert table.series["learning rate"].values.tolist() == [1e-4, 2e-4]


def test_after_a_relaunch_the_newest_launch_wins(tmp_path: Path) -> None:
    """Steps 1-7, then a relaunch from the checkpoint at 5 logs 6-8: the chart shows 1-5 old, 6-8 new."""
    path = tmp_path / "metrics.jsonl"
    write(path, "".join(json.dumps({"step": s, "ts": s, "loss": 1.0}) + "\n" for s in range(1, 8)))
    table = MetricsTable(path)
    table.read_new()
    write(path, "".join(json.dumps({"step": s, "ts": 100 + s, "loss": 2.0}) + "\n" for s in range(6, 9)))
    table.read_new()
    s = table.series["loss"]
    assert s.steps.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert s.values.tolist() == [1.0] * 5 + [2.0] * 3
    # the same inside a single read
    other = MetricsTable(path)
    other.read_new()
    assert other.series["loss"].values.tolist() == s.values.tolist()
    assert other.last_step() == 8


def test_mixed_key_sets_keep_each_series_in_order(tmp_path: Path) -> None:
    lines = []
    for step in range(1, 11):
        lines.append({"step": step, "loss": step * 1.0})
        if step % 3 == 0:
            lines.append({"step": step, "eval_loss": step * 2.0})
    path = tmp_path / "metrics.jsonl"
    write(path, "".join(json.dumps(r) + "\n" for r in lines))
    table = MetricsTable(path)
    table.read_new()
    assert table.series["loss"].steps.tolist() == list(range(1, 11))
    assert table.series["eval_loss"].steps.tolist() == [3, 6, 9]


def test_a_replaced_file_is_read_from_scratch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, '{"step": 1, "loss": 1}\n{"step": 2, "loss": 1}\n')
    table = MetricsTable(path)
    table.read_new()
    path.unlink()
    write(path, '{"step": 1, "reward": 3}\n')
    table.read_new()
    assert table.names() == ["reward"]


def test_concurrent_appender_in_random_byte_chunks(tmp_path: Path) -> None:
    """Another process appends 20,000 lines in random-sized byte chunks while we read: each line exactly once."""
    path = tmp_path / "metrics.jsonl"
    path.touch()
    n = 20_000
    writer = subprocess.Popen([sys.executable, "-c", (
        "import json, os, random, sys, time\n"
        "random.seed(1)\n"
        f"data = ''.join(json.dumps({{'step': i, 'loss': i * 0.5, 'odd': float('nan') if i % 97 == 0 else i}}) + '\\n' for i in range({n})).encode()\n"
        f"fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND)\n"
        "pos = 0\n"
        "while pos < len(data):\n"
        "    k = random.randint(1, 5000)\n"
        "    os.write(fd, data[pos:pos + k]); pos += k\n"
        "    if random.random() < 0.05: time.sleep(0.001)\n"
    )])
    table = MetricsTable(path)
    reads = 0
    while writer.poll() is None:
        table.read_new()
        reads += 1
    assert writer.returncode == 0
    table.read_new()
    steps = table.series["loss"].steps
    assert reads > 1
    assert steps.tolist() == list(range(n))
    assert np.array_equal(table.series["loss"].values, np.arange(n) * 0.5)
    odd = table.series["odd"].values
    assert np.isnan(odd[::97]).all() and np.isfinite(np.delete(odd, np.s_[::97])).all()
    assert table.malformed == 0 and table.lines_read == n
