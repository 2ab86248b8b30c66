"""TwinkleCallback: any Hugging Face `transformers.Trainer` (and so TRL's trainers) as a full twinkle-tui run.

    from twinkle_trainer.integrations.hf import TwinkleCallback

    callback = TwinkleCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint())

Metrics go to metrics.jsonl at the trainer's global step; total steps and progress to meta.json; every checkpoint the
Trainer saves becomes the run's resume point (a relaunch passes it to `resume_from_checkpoint`); a stop (SIGTERM from
the dashboard) ends training at the next step boundary with a final save (`control.should_training_stop`); the run
ends completed, stopped or failed. Only the main process writes; every process agrees on a stop.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from transformers import TrainerCallback

from twinkle_trainer.runtime import TrainingRuntime

SKIPPED = ("step", "total_flos")


class TwinkleCallback(TrainerCallback):
    """A transformers TrainerCallback that makes the Trainer's run a twinkle-tui run (see the module's docstring);
    `runtime` is an existing TrainingRuntime to use, else one is started for `run_id` (or the managed run)."""

    def __init__(self, run_id: str | None = None, runtime: TrainingRuntime | None = None) -> None:
        self.run_id = run_id
        self.runtime = runtime
        self._stop = False  # on processes without a runtime (other ranks): their own SIGTERM (a plain flag: signal-safe)
        self._stopped = False

    # ------------------------------------------------------------------ resume
    def resume_from_checkpoint(self) -> str | None:
        """The checkpoint a relaunched run continues from (for Trainer.train), or None on a fresh run."""
        from twinkle_trainer.protocol import RunPaths, read_meta

        rt = self.runtime or TrainingRuntime(self.run_id)
        self.run_id = rt.run_id
        try:
            last = read_meta(RunPaths(rt.paths.root)).last_checkpoint
        except Exception:  # a fresh run has no meta.json yet
            return None
        return last.path if last is not None else None

    # ------------------------------------------------------------------ lifecycle
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if not state.is_world_process_zero:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
            return
        if self.runtime is None:
            self.runtime = TrainingRuntime(self.run_id)
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        config = {k: v for k, v in args.to_dict().items() if isinstance(v, int | float | str | bool | type(None))}
        self.runtime.start(model_id=str(name), config=config, total_steps=int(state.max_steps or 0) or None)
        if state.global_step:
            self.runtime.log(f"resumed by the Trainer at step {state.global_step}")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if self.runtime is None or not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # (the last log of a run is a summary of the whole run, not a step)
        numbers = {k: float(v) for k, v in logs.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k not in SKIPPED}
        if numbers:
            self.runtime.log_metrics(step=state.global_step, **numbers)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._should_stop():
            control.should_save = True  # a final checkpoint of this step, then the loop ends
            control.should_training_stop = True
            self._stopped = True
            if self.runtime is not None:
                self.runtime.log(f"stop requested: saving step {state.global_step} and ending training")

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.runtime is None or not state.is_world_process_zero:
            return
        import os

        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(path):
            self.runtime.record_checkpoint(state.global_step, path)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.runtime is None or not state.is_world_process_zero:
            return
        self.runtime.flush_progress()
        self.runtime.finish("stopped" if self._stopped else "completed")

    def _should_stop(self) -> bool:
        """True on every process once any process was asked to stop (they must end at the same step)."""
        local = self._stop or (self.runtime is not None and self.runtime.should_stop)
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                import torch

                flag = torch.tensor([1.0 if local else 0.0])
                if dist.get_backend() == "nccl":
                    flag = flag.cuda()
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                return bool(flag.item() > 0)
        except (ImportError, RuntimeError):
            pass
        return local
