"""`twinkle-tui --run script.py|recipe.toml`: a run without the dashboard, its log and progress in this terminal.

Every line the run writes after the launch reaches stdout, in order (output.log is followed by byte offset, with no
buffer to overflow). The run is followed until it ends, also when its supervisor dies and another one adopts it.
If stdout is closed (`| head`), the run goes on; a line on stderr says so and how to watch it again.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TextIO

from twinkle_trainer.protocol import RunKind, RunStatus
from twinkle_tui.monitor.headless import HeadlessMonitor
from twinkle_tui.process.controller import Launched, ProcessController, RunControlError
from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate, format_value
from twinkle_tui.runs.store import NoSuchRun, RunCache, RunStore
from twinkle_tui.runs.tail import FileTail, clean_log_line

PROGRESS_METRICS = ("loss", "reward", "train/loss", "train/reward")
LAUNCH_MARK = "===== twinkle launch"
EXIT_SIGPIPE = 128 + signal.SIGPIPE


def progress_line(progress: RunProgress, metrics: dict[str, float], active: bool = True) -> str:
    step = f"step {progress.step}/{progress.total}" if progress.total else f"step {progress.step}"
    parts = [step]
    if progress.fraction is not None:
        parts[0] += f" ({progress.fraction:.0%})"
    parts += [f"{k} {format_value(v)}" for k, v in metrics.items()]
    parts.append(format_rate(progress.rate))
    if progress.eta is not None and active:
        parts.append(f"ETA {format_duration(progress.eta)}")
    return " · ".join(parts)


def status_line(view: RunCache, now: float) -> str:
    """The progress line of a run: its steps and metrics; while it stops, what it is finishing and how long it has
    left before it is killed; for the training service, what it serves."""
    meta = view.meta
    if view.status == RunStatus.STOPPING and meta.stop_deadline is not None:
        left = max(0.0, meta.stop_deadline - now)
        return (f"stopping: finishing step {view.last_step + 1}, about {format_duration(left)} left before it is "
                "killed (--grace sets the least it gets)")
    if meta.kind == RunKind.SERVICE and meta.service:
        service = meta.service
        parts = [f"serving at {service.get('url', '?')}", f"{service.get('sessions', 0)} open session(s)"]
        for key, label in (("clients", "client(s)"), ("requests_per_minute", "requests/min")):
            if isinstance(service.get(key), int | float):
                parts.append(f"{service[key]:g} {label}")
        return " · ".join(parts)
    return progress_line(RunProgress.of(view, now), last_metrics(view), active=view.status.is_active)


def last_metrics(view: RunCache) -> dict[str, float]:
    """The newest values of the metrics a progress line shows."""
    out = {}
    for name in PROGRESS_METRICS:
        series = view.metrics.series.get(name)
        if series is not None and len(series):
            out[name] = float(series.values[-1])
    return out


class OutputClosed(Exception):
    """stdout went away (a closed pipe)."""


class HeadlessRun:
    """Follows one run: prints every new log line and a progress line until the run ends."""

    def __init__(self, controller: ProcessController, out: TextIO = sys.stdout, poll: float = 0.2,
                 watch: HeadlessMonitor | None = None) -> None:
        self.controller = controller
        self.watch = watch
        self.store = RunStore(controller.home)
        self.out = out
        self.poll = poll
        self.tty = out.isatty()
        self.interrupts = 0
        self._stop_pending = False
        self._status_shown = ""
        self._last_progress_print = 0.0
        self.run_id = ""

    def run(self, spec: str, args: Sequence[str], run_id: str | None) -> int:
        return self.follow(lambda: self.controller.launch(spec, args, run_id))

    def follow(self, launch: Callable[[], Launched]) -> int:
        """Launch a run and follow it to its end; a launch that is refused is one line and exit code 2."""
        try:
            launched = launch()
        except (RunControlError, ValueError) as exc:
            print(f"twinkle-tui: {exc}", file=sys.stderr)
            return 2
        self.run_id = launched.run_id
        view = self.store.view(launched.run_id)
        log = FileTail(view.paths.log, keep_head=True)  # every line of this launch, from the first byte
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._say(f"twinkle-tui: run {launched.run_id} · log {view.paths.log}")
            while True:
                self._follow(view, log)
                launched.supervisor.poll()  # reap it when it ends; the run's state says when we are done
                if self.watch is not None:
                    self.watch.tick(self.run_id, self._say)
                if not self._active(view):
                    self._follow(view, log, final=True)
                    # A last look at how it ended; an applied fix relaunches it, and we follow the new launch.
                    if self.watch is not None and self.watch.tick(self.run_id, self._say, final=True):
                        continue
                    break
                time.sleep(self.poll)
            return self._finish(view)
        except OutputClosed:
            return self._output_closed()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _active(self, view: RunCache) -> bool:
        view.refresh_meta()
        if view.status.is_active:
            return True
        if view.meta.status.is_active:  # claimed active, but its supervisor is gone
            try:
                if self.controller.recover(self.run_id) == "adopted":
                    return True
            except (RunControlError, NoSuchRun):
                pass
            view.refresh_meta()
            return view.status.is_active
        return False

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self._say("twinkle-tui: stopping gracefully: the run finishes its step, saves a checkpoint and exits "
                      "(Ctrl-C again to kill it now)")
            self._stop_pending = True
        else:
            self._say("twinkle-tui: killing the run")
            try:
                self.controller.kill(self.run_id)
            except (RunControlError, NoSuchRun) as exc:
                self._say(f"twinkle-tui: {exc}")

    def _follow(self, view: RunCache, log: FileTail, final: bool = False) -> None:
        """Print what the run wrote since the last look; `final` (the run has ended) includes a last line that
        never got its newline."""
        if self._stop_pending:
            try:
                self.controller.stop(self.run_id)
                self._stop_pending = False
            except RunControlError:
                pass  # not started yet: try again on the next poll
        lines = log.read_final_lines() if final else log.read_lines() if log.has_new_data() else []
        changed = view.refresh()
        if lines:
            self._clear_status()
            self._write("".join(clean_log_line(line) + "\n" for line in lines
                                if not line.startswith(LAUNCH_MARK.encode())))
        if lines or changed or view.status == RunStatus.STOPPING:  # a stop counts down
            self._progress(view)

    def _progress(self, view: RunCache) -> None:
        line = status_line(view, time.time())
        if self.tty:
            self._status_shown = line
            self._write("\r\x1b[2K" + line)
        elif line != self._status_shown and time.monotonic() - self._last_progress_print >= 5.0 and \
                (view.last_step or view.status == RunStatus.STOPPING or view.meta.kind == RunKind.SERVICE):
            self._status_shown = line
            self._last_progress_print = time.monotonic()
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as exc:
            if exc.errno == 32:  # EPIPE
                raise OutputClosed from None
            raise

    def _clear_status(self) -> None:
        if self.tty and self._status_shown:
            self._write("\r\x1b[2K")

    def _say(self, text: str) -> None:
        self._clear_status()
        self._write(text + "\n" + (self._status_shown if self.tty and self._status_shown else ""))

    def _output_closed(self) -> int:
        """The reader of our output left: the run goes on (runs outlive their viewers), and we say so."""
        try:  # further writes to the closed pipe must not raise at interpreter exit either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        try:
            print(f"twinkle-tui: output closed; run {self.run_id} keeps training "
                  f"(watch it with: twinkle-tui --run-id {self.run_id})", file=sys.stderr)
        except OSError:
            pass
        return EXIT_SIGPIPE

    def _finish(self, view: RunCache) -> int:
        view.refresh()
        meta = view.meta
        status = view.status
        code = meta.exit_code
        if self.tty:
            self._write("\n")
        final = progress_line(RunProgress.of(view), last_metrics(view), active=False)
        detail = f" ({meta.error})" if meta.error else ""
        self._write(f"twinkle-tui: run {view.run_id} {status.value}{detail} · {final}\n")
        if status == RunStatus.STOPPED and self.interrupts and code in (0, None):
            return 130  # interrupted by the user, as a shell would report it
        if isinstance(code, int):
            return 128 - code if code < 0 else code
        # The exit code was not recorded (the run outlived its supervisor): say what the status says.
        return {RunStatus.COMPLETED: 0, RunStatus.STOPPED: 0, RunStatus.KILLED: 128 + signal.SIGKILL}.get(status, 1)


def run_headless(
    spec: str, args: Sequence[str], run_id: str | None, home: str | None = None, grace: float = 30.0,
    watch: HeadlessMonitor | None = None, controller: ProcessController | None = None,
) -> int:
    if not os.path.isfile(spec):
        print(f"twinkle-tui: no such script or recipe: {spec}", file=sys.stderr)
        return 2
    controller = controller or ProcessController(home, grace=grace)
    return HeadlessRun(controller, watch=watch).run(spec, args, run_id)
