"""`twinkle-tui --run script.py`: a script as a managed run, its log and progress in this terminal."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from trainer.protocol import RunStatus
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate, format_value
from twinkle_tui.runs.store import RunStore

PROGRESS_METRICS = ("loss", "reward", "train/loss", "train/reward")


def progress_line(progress: RunProgress, metrics: dict[str, float]) -> str:
    step = f"step {progress.step}/{progress.total}" if progress.total else f"step {progress.step}"
    parts = [step]
    if progress.fraction is not None:
        parts[0] += f" ({progress.fraction:.0%})"
    parts += [f"{k} {format_value(v)}" for k, v in metrics.items()]
    parts.append(format_rate(progress.rate))
    if progress.eta is not None:
        parts.append(f"ETA {format_duration(progress.eta)}")
    return " · ".join(parts)


def last_metrics(view: Any) -> dict[str, float]:
    """The newest values of the metrics a progress line shows."""
    out = {}
    for name in PROGRESS_METRICS:
        series = view.metrics.series.get(name)
        if series is not None and len(series):
            out[name] = float(series.values[-1])
    return out


class HeadlessRun:
    """Follows one run: prints new log lines and a progress line until the supervisor exits."""

    def __init__(self, controller: ProcessController, out: TextIO = sys.stdout, poll: float = 0.2) -> None:
        self.controller = controller
        self.store = RunStore(controller.home)
        self.out = out
        self.poll = poll
        self.tty = out.isatty()
        self.interrupts = 0
        self._stop_pending = False
        self._status_shown = ""
        self._last_progress_print = 0.0
        self._log_seen = 0

    def run(self, script: str, args: Sequence[str], run_id: str | None) -> int:
        try:
            launched = self.controller.launch_script(script, args, run_id)
        except RunControlError as exc:
            print(f"twinkle-tui: {exc}", file=sys.stderr)
            return 2
        self.run_id = launched.run_id
        view = self.store.view(launched.run_id)
        self._say(f"twinkle-tui: run {launched.run_id} · log {view.paths.log}")
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while launched.supervisor.poll() is None:
                self._follow(view)
                time.sleep(self.poll)
            self._follow(view)
        finally:
            signal.signal(signal.SIGINT, previous)
        return self._finish(view)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self._say("twinkle-tui: stopping gracefully (checkpoint, then exit); Ctrl-C again to kill")
            self._stop_pending = True
        else:
            self._say("twinkle-tui: killing the run")
            try:
                self.controller.kill(self.run_id)
            except RunControlError as exc:
                self._say(f"twinkle-tui: {exc}")

    def _follow(self, view: Any) -> None:
        if self._stop_pending:
            try:
                self.controller.stop(self.run_id)
                self._stop_pending = False
            except RunControlError:
                pass  # not started yet: try again on the next poll
        if view.refresh():
            self._print_new(view)

    def _print_new(self, view: Any) -> None:
        new_lines = view.log.since(self._log_seen)
        self._log_seen = view.log.total_lines
        if new_lines:
            self._clear_status()
            for line in new_lines:
                if not line.startswith("===== twinkle launch"):
                    self.out.write(line + "\n")
        progress = RunProgress.of(view)
        line = progress_line(progress, last_metrics(view))
        if self.tty:
            self._status_shown = line
            self.out.write("\r\x1b[2K" + line)
        elif line != self._status_shown and time.monotonic() - self._last_progress_print >= 5.0 and progress.step:
            self._status_shown = line
            self._last_progress_print = time.monotonic()
            self.out.write(line + "\n")
        self.out.flush()

    def _clear_status(self) -> None:
        if self.tty and self._status_shown:
            self.out.write("\r\x1b[2K")

    def _say(self, text: str) -> None:
        self._clear_status()
        self.out.write(text + "\n")
        if self.tty and self._status_shown:
            self.out.write(self._status_shown)
        self.out.flush()

    def _finish(self, view: Any) -> int:
        view.refresh()
        meta = view.meta
        status = view.status
        code = meta.get("exit_code")
        if self.tty:
            self.out.write("\n")
        final = progress_line(RunProgress.of(view), last_metrics(view))
        detail = f" ({meta['error']})" if meta.get("error") else ""
        self.out.write(f"twinkle-tui: run {view.run_id} {status.value}{detail} · {final}\n")
        self.out.flush()
        if not isinstance(code, int):
            return 1
        if code < 0:
            return 128 - code
        if code == 0 and status == RunStatus.STOPPED and self.interrupts:
            return 130  # interrupted by the user, as a shell would report it
        return code


def run_headless(
    script: str, args: Sequence[str], run_id: str | None, home: str | None = None, grace: float = 30.0
) -> int:
    if not os.path.isfile(script):
        print(f"twinkle-tui: no such script: {script}", file=sys.stderr)
        return 2
    controller = ProcessController(home, grace=grace)
    return HeadlessRun(controller).run(script, args, run_id)
