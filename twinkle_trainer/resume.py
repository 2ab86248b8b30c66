"""Where a relaunched run continues: its complete checkpoints, newest first (standard library only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinkle_trainer.manifest import STATE_FILE, verify_manifest
from twinkle_trainer.protocol import RunPaths


@dataclass(frozen=True)
class ResumeInfo:
    """Where a relaunched run continues: the last complete checkpoint. On a fresh run it is empty and falsy
    (step 0, no path), so both `resume.step if resume else 0` and the original Auto's `resume['last_step']` work."""

    step: int = 0
    path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def next_step(self) -> int:
        return self.step + 1

    def __bool__(self) -> bool:
        return self.path is not None

    # The original Twinkle Auto returned a dict: resume['last_step'], resume.get('checkpoint_path').
    def _as_dict(self) -> dict[str, Any]:
        return {**self.state, "last_step": self.step, "step": self.step,
                "checkpoint_path": str(self.path) if self.path else None, "path": str(self.path) if self.path else None}

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._as_dict().get(key, default)

    def keys(self) -> list[str]:
        return list(self._as_dict())


def complete_checkpoints(paths: RunPaths, say: Callable[[str], None]) -> list[ResumeInfo]:
    """Every complete checkpoint of a run, newest first. One whose files no longer match the manifest written when
    it was saved (a file deleted or truncated since) is skipped, and `say` is told why."""
    found: dict[Path, int] = {}
    if paths.checkpoints.is_dir():
        for child in paths.checkpoints.iterdir():
            name = child.name
            if name.startswith("step-") and name[5:].isdigit():
                found[child] = int(name[5:])
    out = []
    for path in sorted(found, key=found.__getitem__, reverse=True):
        try:
            state = json.loads((path / STATE_FILE).read_text())
            step = int(state["step"])
        except (ValueError, KeyError, TypeError, OSError):
            continue  # never finished: os.replace publishes a checkpoint only whole
        problem = verify_manifest(path, state.get("files"))
        if problem:
            say(f"checkpoint {path.name} is incomplete ({problem}); using an older one")
            continue
        out.append(ResumeInfo(step=step, path=path, state=state))
    return out
