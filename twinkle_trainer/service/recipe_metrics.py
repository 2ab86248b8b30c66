"""The metrics a tinker-cookbook recipe computes itself (its ml_log writes them to `<log_path>/metrics.jsonl`:
rewards, kl/teacher, DPO loss, test NLL, ...), brought into the client's run beside the service's own.

The recipe's log folder is found from the client process while it runs: ml_log keeps `<log_path>/logs.log` open
and writes config.json there at once, so a file the client holds open in a folder with a config.json or a
metrics.jsonl names it (found early, its metrics are still read after the client has exited). The file is then followed by byte
offset (whole lines only) and each line's numbers are appended to the run at the recipe's step + 1 (a recipe
counts its steps from 0 and logs after the step's optim_step, which the service counts from 1).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import psutil

from twinkle_trainer.service.runs import ServiceRun

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
SKIP = {"step"}


def metrics_file_of(pid: int) -> Path | None:
    """The metrics.jsonl beside a file the process holds open, if there is one (never one of twinkle's own runs:
    a managed client's output goes to its run's folder)."""
    try:
        files = psutil.Process(pid).open_files()
    except (psutil.Error, OSError):
        return None
    for f in files:
        folder = Path(f.path).parent
        candidate = folder / "metrics.jsonl"
        recipe = candidate.is_file() or (folder / "config.json").is_file()  # ml_log writes config.json first
        if recipe and not (folder / "meta.json").exists():  # a twinkle run's folder has a meta.json
            return candidate
    return None


class RecipeMetrics:
    """Follows one client's recipe metrics into its run."""

    def __init__(self, pid: int, run: ServiceRun) -> None:
        self.pid, self.run = pid, run
        self.path: Path | None = None
        self.offset = 0
        self.lines = 0
        self.lock = threading.Lock()  # housekeeping and a session's close may poll at once

    def poll(self) -> int:
        """Copy the whole new lines into the run; returns how many."""
        with self.lock:
            return self._poll()

    def _poll(self) -> int:
        if self.path is None:
            self.path = metrics_file_of(self.pid)
            if self.path is None:
                return 0
            log.info("run %s: the recipe's metrics are %s", self.run.run_id, self.path)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(MAX_LINE * 4)
        except OSError:
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        copied = 0
        for raw in data[: end + 1].splitlines():
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
            values = {str(k): float(v) for k, v in row.items() if k not in SKIP and isinstance(v, int | float)
                      and not isinstance(v, bool) and math.isfinite(float(v))}
            if values:
                self.run.metrics(int(row["step"]) + 1, values)
                copied += 1
        self.lines += copied
        return copied
