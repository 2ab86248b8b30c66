"""TrainingRuntime: how a training script reports to twinkle-tui and cooperates with pause, stop and resume.

Standard library only (torch is touched lazily, and only if the script already imported it).

    rt = TrainingRuntime().start(model_id="toy", config=cfg, total_steps=100)
    resume = rt.get_resume_info()            # falsy on a fresh run (resume["last_step"] == 0)
    rt.register_graceful_shutdown(save_fn=lambda path: save_everything(path))
    for step in range((resume.step if resume else 0) + 1, 101):
        loss = train_step()
        rt.log_metrics(step=step, loss=loss)
        if step % 20 == 0:
            rt.save_checkpoint(step)
        rt.step_boundary(step)                # on SIGTERM: checkpoint, mark stopped, exit 0
    rt.finish("completed")
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from twinkle_trainer.clock import running_time
from twinkle_trainer.manifest import STATE_FILE, file_manifest
from twinkle_trainer.protocol import (
    RUN_ID_ENV,
    CheckpointRef,
    RunMeta,
    RunPaths,
    RunStatus,
    append_jsonl,
    new_run_id,
    process_start_time,
    record_event,
    twinkle_home,
    update_meta,
    validate_run_id,
)
from twinkle_trainer.resume import ResumeInfo, complete_checkpoints

log = logging.getLogger(__name__)

SUPERVISED_ENV = "TWINKLE_SUPERVISED"
FINAL_STATUSES = {RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.FAILED}

SaveFn = Callable[[Path], None]


STEP_WINDOW = 20  # steps whose median time meta.json's progress.step_seconds reports


def _to_number(value: Any) -> Any:
    """Make tensors and numpy scalars JSON numbers; keep everything else as it is."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class TrainingRuntime:
    """The run protocol from inside a training process: metrics, progress, checkpoints, graceful stop."""

    def __init__(
        self,
        run_id: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        progress_interval: float = 1.0,
    ) -> None:
        managed = os.environ.get(RUN_ID_ENV)
        self._renamed_from = run_id if managed and run_id and run_id != managed else None
        # Under twinkle-tui the run directory already exists: the managed id wins, so there is one run, not two.
        self.run_id = validate_run_id(managed or run_id or new_run_id(Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "run"))
        self.paths = RunPaths(twinkle_home(base_dir) / self.run_id).check_not_symlink()
        self.clock = clock
        self.progress_interval = progress_interval
        self.supervised = os.environ.get(SUPERVISED_ENV) == "1"
        # A plain flag, not a threading.Event: it is set from a signal handler, and Event.set takes a lock that a
        # second signal arriving inside the first handler would wait on forever.
        self._stop_requested = False
        self._last_step = 0
        self._total_steps: int | None = None
        self._step_times: deque[float] = deque(maxlen=STEP_WINDOW)
        self._timed: tuple[int, float] | None = None  # the last step logged, and the running time then
        self._progress_written_at = 0.0
        self._progress_dirty = False
        self._finished = False
        self._started = False
        self._save_fn: SaveFn | None = None
        self._prev_excepthook: Callable[..., Any] | None = None
        self._prev_sigterm: Any = None
        self._prev_exit: Callable[..., Any] | None = None
        self._exit_code: int | None = None
        self._hooks_installed = False
        self._meta_warned = False

    # ---------------------------------------------------------------- lifecycle
    def start(
        self,
        model_id: str | None = None,
        config: dict[str, Any] | None = None,
        script_path: str | os.PathLike[str] | None = None,
        total_steps: int | None = None,
    ) -> TrainingRuntime:
        """Mark the run running. Progress, checkpoints and counters of earlier launches are kept."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        pid = os.getpid()
        script = script_path or (sys.argv[0] if sys.argv and sys.argv[0] else None)

        def change(meta: RunMeta) -> None:
            meta.run_id = self.run_id
            if model_id is not None:
                meta.model_id = model_id
            if config is not None:
                meta.config = config
            meta.status = RunStatus.RUNNING
            if not self.supervised:  # under the supervisor, pid is its child: the leader of the run's group
                meta.pid = pid
                meta.pid_start_time = process_start_time(pid)
            meta.cwd = meta.cwd or os.getcwd()
            if script and not meta.script_path:
                meta.script_path = str(Path(script).resolve())
            meta.start_time = meta.start_time or now
            if not self.supervised:  # the supervisor times the launches it makes
                meta.end_launch_time(now)
                meta.launch_time = now
            meta.end_time = None
            meta.exit_code = None
            meta.exit_signal = None
            meta.error = None
            if total_steps is not None:
                meta.progress.total_steps = int(total_steps)
            if not self.supervised:  # the supervisor counts launches it makes
                meta.launches = meta.launches + 1
                meta.command = meta.command or [sys.executable, *sys.argv]

        meta = update_meta(self.paths, change, repair=True)
        self._last_step = meta.progress.last_step
        self._total_steps = meta.progress.total_steps
        self._started = True
        if not self.supervised:
            record_event(self.paths, "launch", self.clock, pid=pid, launch=meta.launches)
        self._install_hooks()
        if self._renamed_from:
            self.log(f"running as managed run {self.run_id!r} (the script asked for {self._renamed_from!r})")
        return self

    def finish(self, status: str | RunStatus = RunStatus.COMPLETED, error: str | None = None) -> None:
        """Record the final status (completed, stopped or failed) and flush progress."""
        final = RunStatus.parse(status)
        if final not in FINAL_STATUSES:
            raise ValueError(f"finish() takes completed, stopped or failed, not {final.value!r}")
        now = self.clock()

        def change(meta: RunMeta) -> None:
            meta.status = final
            meta.end_time = now
            meta.progress.last_step = max(meta.progress.last_step, self._last_step)
            if error:
                meta.error = error

        self._update_meta(change)
        self._progress_dirty = False
        self._finished = True
        record_event(self.paths, "finish", self.clock, status=final.value, step=self._last_step, **({"error": error} if error else {}))
        self._uninstall_hooks()

    # ---------------------------------------------------------------- reporting
    def log_metrics(self, step: int | None = None, **metrics: Any) -> int:
        """Append one metrics line. `step` defaults to the last step + 1; NaN and Inf are written as such."""
        if step is None:
            step = self._last_step + 1
        step = int(step)
        record: dict[str, Any] = {"step": step, "ts": self.clock()}
        for name, value in metrics.items():
            record[name] = _to_number(value)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.paths.metrics, record)
        now = running_time()
        if self._timed is not None and step > self._timed[0]:
            self._step_times.append((now - self._timed[1]) / (step - self._timed[0]))
        self._timed = (step, now)
        self._last_step = step
        self._progress_dirty = True
        if self.clock() - self._progress_written_at >= self.progress_interval:
            self.flush_progress()
        return step

    def log(self, message: str) -> None:
        """A line for the run's log (output.log)."""
        line = f"[twinkle] {message}"
        print(line, flush=True)
        if not self.supervised:  # under the supervisor stdout already is output.log
            with open(self.paths.log, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def set_total_steps(self, total_steps: int) -> None:
        """The run's length when it is known only after start (the dashboard's progress bar and ETA use it)."""
        self._total_steps = int(total_steps)
        def change(meta: RunMeta) -> None:
            meta.progress.total_steps = self._total_steps

        self._update_meta(change)

    def flush_progress(self) -> None:
        """Write the last step to meta.json now (log_metrics does it at most once per progress_interval)."""
        step = self._last_step
        step_seconds = statistics.median(self._step_times) if self._step_times else None

        def change(meta: RunMeta) -> None:
            meta.progress.last_step = step
            if step_seconds is not None:
                meta.progress.step_seconds = step_seconds

        self._update_meta(change)
        self._progress_written_at = self.clock()
        self._progress_dirty = False

    def _update_meta(self, change: Callable[[RunMeta], None]) -> RunMeta | None:
        """Write meta.json, never stopping training over it: a corrupt file is rewritten from what this process
        knows, and any other failure is logged once and the step goes on."""
        try:
            return update_meta(self.paths, change, repair=True)
        except Exception as exc:
            if not self._meta_warned:
                self._meta_warned = True
                log.warning("could not update meta.json of %s: %s", self.run_id, exc)
                print(f"[twinkle] warning: could not update meta.json: {exc}", file=sys.stderr, flush=True)
            return None

    @property
    def last_step(self) -> int:
        return self._last_step

    # ---------------------------------------------------------------- stop and resume
    @property
    def should_stop(self) -> bool:
        """True once a graceful stop was requested (SIGTERM); check it at step boundaries."""
        return self._stop_requested

    def request_stop(self) -> None:
        """Ask for a graceful stop from the script itself: the next step_boundary() checkpoints and stops."""
        self._stop_requested = True

    def register_graceful_shutdown(
        self, model: Any = None, dataloader: Any = None, save_fn: SaveFn | None = None
    ) -> None:
        """Say how to checkpoint on a graceful stop: a save_fn(path), or a model (and stateful dataloader)."""
        if save_fn is None and model is not None:
            save_fn = _default_saver(model, dataloader)
        self._save_fn = save_fn

    def step_boundary(self, step: int | None = None) -> None:
        """Call after each optimizer step: on a requested stop, checkpoint, mark stopped and exit with 0."""
        if not self.should_stop:
            return
        step = self._last_step if step is None else int(step)
        if self._save_fn is not None:
            self.save_checkpoint(step)
        self.log(f"stopped at step {step}")
        self.finish(RunStatus.STOPPED)
        raise SystemExit(0)

    def save_checkpoint(self, step: int, save_fn: SaveFn | None = None, **state: Any) -> Path:
        """Save a checkpoint to checkpoints/step-<step>/ atomically and record it as the resume point."""
        save_fn = save_fn or self._save_fn
        started = running_time()
        final = self.paths.checkpoint(step)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if save_fn is not None:
            save_fn(tmp)
        record = {"step": int(step), "ts": self.clock(), "run_id": self.run_id, **state, "files": file_manifest(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(record, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._last_step = max(self._last_step, int(step))

        def change(meta: RunMeta) -> None:
            meta.last_checkpoint = CheckpointRef(int(step), str(final), seconds=round(running_time() - started, 3))
            meta.progress.last_step = max(meta.progress.last_step, self._last_step)

        self._update_meta(change)
        record_event(self.paths, "checkpoint", self.clock, step=int(step), path=str(final))
        return final

    def record_checkpoint(self, step: int, path: str | os.PathLike[str]) -> None:
        """Record a checkpoint another library saved (a Hugging Face Trainer's checkpoint-N folder) as the run's
        resume point, without copying it."""
        self._last_step = max(self._last_step, int(step))

        def change(meta: RunMeta) -> None:
            meta.last_checkpoint = CheckpointRef(int(step), str(path), external=True)
            meta.progress.last_step = max(meta.progress.last_step, self._last_step)

        self._update_meta(change)
        record_event(self.paths, "checkpoint", self.clock, step=int(step), path=str(path))

    def get_resume_info(self) -> ResumeInfo:
        """The newest complete checkpoint of this run; an empty (falsy) ResumeInfo on a fresh start."""
        for info in self.resume_candidates():
            return info
        return ResumeInfo()

    def resume_candidates(self) -> list[ResumeInfo]:
        """Every complete checkpoint, newest first. A checkpoint whose files no longer match the manifest written
        when it was saved (a file deleted or truncated since) is skipped, and the log says so."""
        return complete_checkpoints(self.paths, self.log)

    # ---------------------------------------------------------------- hooks
    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        if threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._prev_excepthook = sys.excepthook
        sys.excepthook = self._on_uncaught
        if not self.supervised:  # the supervisor knows the exit code; a plain `python train.py` needs sys.exit's
            self._prev_exit = sys.exit
            sys.exit = self._exit  # type: ignore[assignment]
        atexit.register(self._at_exit)

    def _uninstall_hooks(self) -> None:
        """Give back what start() took: the SIGTERM handler, sys.excepthook, sys.exit and the atexit hook."""
        if not self._hooks_installed:
            return
        self._hooks_installed = False
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._prev_sigterm)
        if sys.excepthook == self._on_uncaught and self._prev_excepthook is not None:
            sys.excepthook = self._prev_excepthook
        if self._prev_exit is not None and sys.exit == self._exit:
            sys.exit = self._prev_exit
        atexit.unregister(self._at_exit)

    def close(self) -> None:
        """Stop cooperating without recording a final status (the hooks are restored)."""
        self._uninstall_hooks()

    def _exit(self, code: Any = None) -> None:
        self._exit_code = 0 if code is None else (code if isinstance(code, int) else 1)
        assert self._prev_exit is not None
        self._prev_exit(code)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        print("[twinkle] stop requested: finishing the current step and saving a checkpoint", flush=True)

    def _on_uncaught(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        previous = self._prev_excepthook or sys.__excepthook__
        if not self._finished:
            try:
                if issubclass(exc_type, KeyboardInterrupt):
                    self._interrupted()
                else:
                    summary = f"{exc_type.__name__}: {exc}".strip().rstrip(":")
                    self.finish(RunStatus.FAILED, error=summary.splitlines()[0] if summary else exc_type.__name__)
            except Exception:  # never hide the original traceback behind our own
                log.exception("could not record the failure")
        previous(exc_type, exc, tb)

    def _interrupted(self) -> None:
        """Ctrl-C: the run is stopped, not completed, with a checkpoint of the last finished step if it can."""
        if self._save_fn is not None and self._last_step > 0:
            try:
                self.save_checkpoint(self._last_step)
            except Exception as exc:
                self.log(f"could not save a checkpoint on interrupt: {exc}")
        self.log(f"interrupted at step {self._last_step}")
        self.finish(RunStatus.STOPPED, error=None)

    def _at_exit(self) -> None:
        if self._finished or not self._started:
            return
        try:
            if self.supervised:
                if self._progress_dirty:  # the supervisor records the exit; we only must not lose the last step
                    self.flush_progress()
            elif self._exit_code not in (None, 0):
                self.finish(RunStatus.FAILED, error=f"exited with code {self._exit_code}")
            else:
                self.finish(RunStatus.STOPPED if self.should_stop else RunStatus.COMPLETED)
        except Exception:
            log.exception("could not record progress at exit")

    def __enter__(self) -> TrainingRuntime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._finished or not self._started:
            return
        if exc_type is None:
            self.finish(RunStatus.STOPPED if self.should_stop else RunStatus.COMPLETED)
        elif issubclass(exc_type, SystemExit):
            code = exc.code if isinstance(exc, SystemExit) else 0
            if code in (0, None):
                self.finish(RunStatus.STOPPED if self.should_stop else RunStatus.COMPLETED)
            else:
                self.finish(RunStatus.FAILED, error=f"exited with code {code}")
        elif issubclass(exc_type, KeyboardInterrupt):
            self._interrupted()
        else:
            self.finish(RunStatus.FAILED, error=f"{exc_type.__name__}: {exc}".splitlines()[0])




def _default_saver(model: Any, dataloader: Any) -> SaveFn:
    """Save a model (save_pretrained, else its state_dict) and a stateful dataloader's position."""

    def save(path: Path) -> None:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(str(path))
        elif hasattr(model, "state_dict"):
            torch = sys.modules.get("torch")
            if torch is None:
                raise RuntimeError("model has a state_dict but torch is not imported")
            torch.save(model.state_dict(), path / "model.pt")
        if dataloader is not None and hasattr(dataloader, "state_dict"):
            with open(path / "dataloader.pkl", "wb") as f:
                pickle.dump(dataloader.state_dict(), f)

    return save



__all__ = ["ResumeInfo", "SaveFn", "TrainingRuntime"]
