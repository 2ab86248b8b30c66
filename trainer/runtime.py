"""TrainingRuntime: how a training script reports to twinkle-tui and cooperates with pause, stop and resume.

Standard library only (torch is touched lazily, and only if the script already imported it).

    rt = TrainingRuntime().start(model_id="toy", config=cfg, total_steps=100)
    resume = rt.get_resume_info()            # None on a fresh run
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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from trainer.protocol import (
    RUN_ID_ENV,
    RunPaths,
    RunStatus,
    append_jsonl,
    new_run_id,
    process_start_time,
    read_meta,
    record_event,
    twinkle_home,
    update_meta,
    validate_run_id,
)

log = logging.getLogger(__name__)

SUPERVISED_ENV = "TWINKLE_SUPERVISED"
STATE_FILE = "twinkle_state.json"
FINAL_STATUSES = {RunStatus.COMPLETED.value, RunStatus.STOPPED.value, RunStatus.FAILED.value}

SaveFn = Callable[[Path], None]


@dataclass(frozen=True)
class ResumeInfo:
    """Where a relaunched run continues: the last completed checkpoint."""

    step: int
    path: Path
    state: dict[str, Any]

    @property
    def next_step(self) -> int:
        return self.step + 1


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
        self.run_id = validate_run_id(run_id or os.environ.get(RUN_ID_ENV) or new_run_id())
        self.paths = RunPaths(twinkle_home(base_dir) / self.run_id)
        self.clock = clock
        self.progress_interval = progress_interval
        self.supervised = os.environ.get(SUPERVISED_ENV) == "1"
        self._stop_requested = threading.Event()
        self._last_step = 0
        self._total_steps: int | None = None
        self._progress_written_at = 0.0
        self._progress_dirty = False
        self._finished = False
        self._started = False
        self._save_fn: SaveFn | None = None
        self._prev_excepthook: Callable[..., Any] | None = None

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

        def change(meta: dict[str, Any]) -> None:
            meta["run_id"] = self.run_id
            if model_id is not None:
                meta["model_id"] = model_id
            if config is not None:
                meta["config"] = config
            meta["status"] = RunStatus.RUNNING.value
            if not self.supervised:  # under the supervisor, pid is its child: the leader of the run's group
                meta["pid"] = pid
                meta["pid_start_time"] = process_start_time(pid)
            meta["cwd"] = meta.get("cwd") or os.getcwd()
            if script and not meta.get("script_path"):
                meta["script_path"] = str(Path(script).resolve())
            meta["start_time"] = meta.get("start_time") or now
            meta["end_time"] = None
            meta["exit_code"] = None
            meta["exit_signal"] = None
            meta["error"] = None
            if total_steps is not None:
                meta["progress"]["total_steps"] = int(total_steps)
            if not self.supervised:  # the supervisor counts launches it makes
                meta["launches"] = int(meta.get("launches") or 0) + 1
                meta["command"] = meta.get("command") or [sys.executable, *sys.argv]

        meta = update_meta(self.paths, change)
        self._last_step = int(meta["progress"].get("last_step") or 0)
        self._total_steps = meta["progress"].get("total_steps")
        self._started = True
        if not self.supervised:
            record_event(self.paths, "launch", self.clock, pid=pid, launch=meta["launches"])
        self._install_hooks()
        return self

    def finish(self, status: str | RunStatus = RunStatus.COMPLETED, error: str | None = None) -> None:
        """Record the final status (completed, stopped or failed) and flush progress."""
        status = RunStatus.parse(status.value if isinstance(status, RunStatus) else status).value
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish() takes completed, stopped or failed, not {status!r}")
        now = self.clock()

        def change(meta: dict[str, Any]) -> None:
            meta["status"] = status
            meta["end_time"] = now
            meta["progress"]["last_step"] = max(int(meta["progress"].get("last_step") or 0), self._last_step)
            if error:
                meta["error"] = error

        update_meta(self.paths, change)
        self._progress_dirty = False
        self._finished = True
        record_event(self.paths, "finish", self.clock, status=status, step=self._last_step, **({"error": error} if error else {}))

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
        self._total_steps = int(total_steps)
        update_meta(self.paths, lambda meta: meta["progress"].__setitem__("total_steps", self._total_steps))

    def flush_progress(self) -> None:
        """Write the last step to meta.json now (log_metrics does it at most once per progress_interval)."""
        step = self._last_step

        def change(meta: dict[str, Any]) -> None:
            meta["progress"]["last_step"] = step

        update_meta(self.paths, change)
        self._progress_written_at = self.clock()
        self._progress_dirty = False

    @property
    def last_step(self) -> int:
        return self._last_step

    # ---------------------------------------------------------------- stop and resume
    @property
    def should_stop(self) -> bool:
        """True once a graceful stop was requested (SIGTERM); check it at step boundaries."""
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        self._stop_requested.set()

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
        final = self.paths.checkpoint(step)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if save_fn is not None:
            save_fn(tmp)
        record = {"step": int(step), "ts": self.clock(), "run_id": self.run_id, **state}
        (tmp / STATE_FILE).write_text(json.dumps(record, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._last_step = max(self._last_step, int(step))

        def change(meta: dict[str, Any]) -> None:
            meta["last_checkpoint"] = {"step": int(step), "path": str(final)}
            meta["progress"]["last_step"] = max(int(meta["progress"].get("last_step") or 0), self._last_step)

        update_meta(self.paths, change)
        record_event(self.paths, "checkpoint", self.clock, step=int(step), path=str(final))
        return final

    def get_resume_info(self) -> ResumeInfo | None:
        """The last complete checkpoint of this run, or None for a fresh start."""
        try:
            last = read_meta(self.paths).get("last_checkpoint")
        except Exception:  # a run without meta.json yet simply has nothing to resume
            last = None
        candidates: list[Path] = []
        if isinstance(last, dict) and last.get("path"):
            candidates.append(Path(last["path"]))
        if self.paths.checkpoints.is_dir():
            found = []
            for child in self.paths.checkpoints.iterdir():
                name = child.name
                if name.startswith("step-") and name[5:].isdigit():
                    found.append((int(name[5:]), child))
            candidates.extend(p for _, p in sorted(found, reverse=True))
        for path in candidates:
            state_file = path / STATE_FILE
            if state_file.is_file():
                try:
                    state = json.loads(state_file.read_text())
                    return ResumeInfo(step=int(state["step"]), path=path, state=state)
                except (ValueError, KeyError, OSError):
                    continue  # a damaged checkpoint: fall back to an older one
        return None

    # ---------------------------------------------------------------- hooks
    def _install_hooks(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._prev_excepthook is None:
            self._prev_excepthook = sys.excepthook
            sys.excepthook = self._on_uncaught
        atexit.register(self._at_exit)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._stop_requested.is_set():
            return
        self._stop_requested.set()
        print("[twinkle] stop requested: finishing the current step and saving a checkpoint", flush=True)

    def _on_uncaught(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if not self._finished and not issubclass(exc_type, KeyboardInterrupt):
            summary = f"{exc_type.__name__}: {exc}".strip().rstrip(":")
            try:
                self.finish(RunStatus.FAILED, error=summary.splitlines()[0] if summary else exc_type.__name__)
            except Exception:  # never hide the original traceback behind our own
                log.exception("could not record the failure")
        assert self._prev_excepthook is not None
        self._prev_excepthook(exc_type, exc, tb)

    def _at_exit(self) -> None:
        if self._finished or not self._started:
            return
        try:
            if self.supervised:
                if self._progress_dirty:  # the supervisor records the exit; we only must not lose the last step
                    self.flush_progress()
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
        elif not issubclass(exc_type, KeyboardInterrupt):
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

