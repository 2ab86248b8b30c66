"""Deterministic run directories for UI tests: fixed timestamps, fixed values, real files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

T0 = 1_790_000_000.0


def make_run(
    home: Path,
    run_id: str,
    steps: int = 200,
    status: str = "completed",
    metrics: tuple[str, ...] = ("loss", "grad_norm", "learning rate"),
    start: float = T0,
    step_seconds: float = 0.5,
    pid: int | None = None,
    pid_start_time: int | None = None,
    nan_at: tuple[int, ...] = (),
    torn_tail: bool = False,
    checkpoints: tuple[int, ...] = (),
    log_lines: int = 30,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    root = home / run_id
    root.mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        rec: dict[str, Any] = {"step": s, "ts": start + s * step_seconds}
        for i, name in enumerate(metrics):
            if name == "learning rate":
                rec[name] = 1e-3 * (1 - s / (steps + 1))
            else:
                rec[name] = (2.0 + i) * math.exp(-s / 60) + 0.1 * math.sin(s / 3) + 0.2
            if s in nan_at:
                rec[name] = float("nan")
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += f'{{"step": {steps + 1}, "loss": 0.'
    (root / "metrics.jsonl").write_text(text)
    events = [{"ts": start, "kind": "launch", "pid": pid or 1, "launch": 1}]
    events += [{"ts": start + c * step_seconds, "kind": "checkpoint", "step": c} for c in checkpoints]
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (root / "output.log").write_text(
        "===== twinkle launch 1 · 2026-01-01 00:00:00 · python -u train.py =====\n"
        + "".join(f"\x1b[32mstep {i * 10}\x1b[0m: loss [bold]not markup[/bold] {i}\n" for i in range(log_lines))
    )
    meta = {
        "schema": 1, "run_id": run_id, "model_id": "builtin:smollm2-135m-instruct", "status": status,
        "pid": pid, "pid_start_time": pid_start_time, "pgid": pid, "start_time": start,
        "end_time": None if status in ("running", "paused") else start + steps * step_seconds,
        "progress": {"last_step": steps, "total_steps": 500}, "launches": 1,
        "last_checkpoint": {"step": checkpoints[-1], "path": str(root / f"checkpoints/step-{checkpoints[-1]}")} if checkpoints else None,
    }
    meta.update(extra_meta or {})
    (root / "meta.json").write_text(json.dumps(meta))
    return root
