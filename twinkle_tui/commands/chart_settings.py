"""What the dashboard shows of a run: the selected run and, per run, its charts' settings (kept across restarts)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import validate_run_id, write_json_atomic

log = logging.getLogger(__name__)

MAX_CHARTS = 4
DEFAULT_SMOOTHING = 0.6
PERSISTED = ("metrics", "user_chose_metrics", "smoothing", "smoothing_weight", "log_y", "compare")


@dataclass
class ChartSettings:
    """What every chart shows: the metrics, the step window, smoothing, log-y, a compared run."""

    metrics: list[str] = field(default_factory=list)
    user_chose_metrics: bool = False
    zoom: tuple[float, float] | None = None
    smoothing: bool = False
    smoothing_weight: float = DEFAULT_SMOOTHING
    log_y: bool = False
    compare: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in PERSISTED}

    @classmethod
    def from_json(cls, data: Any) -> ChartSettings:
        """Settings from a saved file; anything of the wrong type falls back to the default."""
        out = cls()
        if not isinstance(data, dict):
            return out
        metrics = data.get("metrics")
        if isinstance(metrics, list) and all(isinstance(m, str) for m in metrics):
            out.metrics = metrics[:MAX_CHARTS]
        for key in ("user_chose_metrics", "smoothing", "log_y"):
            if isinstance(data.get(key), bool):
                setattr(out, key, data[key])
        weight = data.get("smoothing_weight")
        if isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight <= 0.999:
            out.smoothing_weight = float(weight)
        compare = data.get("compare")
        if isinstance(compare, str):
            try:
                out.compare = validate_run_id(compare)
            except ValueError:
                pass
        return out


class ChartSettingsStore:
    """Per-run chart settings under $TWINKLE_HOME/.views/ (outside the run directories, so the file watcher does
    not mistake them for a run's own changes)."""

    def __init__(self, home: Path) -> None:
        self.folder = home / ".views"

    def load(self, run_id: str) -> ChartSettings:
        path = self.folder / f"{run_id}.json"
        try:
            return ChartSettings.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return ChartSettings()

    def save(self, run_id: str, settings: ChartSettings) -> None:
        try:
            write_json_atomic(self.folder / f"{run_id}.json", settings.to_json())
        except OSError as exc:
            log.warning("cannot save the view settings of %s: %s", run_id, exc)

    def forget(self, run_id: str) -> None:
        (self.folder / f"{run_id}.json").unlink(missing_ok=True)
