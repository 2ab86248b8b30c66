"""What tells runs apart: the keys a launch overrode on its command line (`sft-smollm2 lr=5e-4`), the shortest names
that still differ, and the configuration keys whose values differ; and metrics compared at the same step."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from twinkle_trainer.protocol import RunMeta
from twinkle_tui.runs.metrics import MetricSeries

MAX_OVERRIDES = 3
MAX_DIFFS = 12


def overrides(meta: RunMeta) -> list[str]:
    """`key=value` for each `--key value` (or `--flag`) the run's command gave after its recipe or script: what a
    user changed for this launch."""
    command = meta.command or []
    if "--" not in command:
        return []
    args = command[command.index("--") + 1 :]
    if args and not args[0].startswith("-"):
        args = args[1:]  # the recipe of `python -m twinkle_trainer RECIPE --key value`
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            out.append(f"{key}={value}" if value or eq else key)
        i += 1
    return out


def run_label(run_id: str, meta: RunMeta) -> str:
    """A run's name with what its launch overrode: `sft-smollm2-0431-a3cd lr=5e-4`."""
    extra = overrides(meta)[:MAX_OVERRIDES]
    name = meta.display_name or run_id
    return " ".join([name, *extra])


def short_names(run_ids: Iterable[str]) -> dict[str, str]:
    """The shortest form of each id that still tells it from the others: their common prefix (up to a `-`) is
    left out, so `sft-smollm2-0431-a3cd` and `sft-smollm2-0502-ffff` become `0431-a3cd` and `0502-ffff`."""
    ids = list(dict.fromkeys(run_ids))
    if len(ids) < 2:
        return {i: i for i in ids}
    common = os.path.commonprefix(ids)
    cut = common.rfind("-") + 1 if "-" in common else 0
    out = {i: i[cut:] or i for i in ids}
    return out if len(set(out.values())) == len(ids) else {i: i for i in ids}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configuration as dotted keys: {"lora": {"r": 8}} -> {"lora.r": 8}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_diff(a: RunMeta, b: RunMeta) -> list[tuple[str, Any, Any]]:
    """The configuration keys whose values differ between two runs (a key only one of them has included), with
    their values; the launches' command-line overrides count too."""
    fa, fb = flatten(a.config), flatten(b.config)
    for meta, flat in ((a, fa), (b, fb)):
        for item in overrides(meta):
            key, _, value = item.partition("=")
            flat.setdefault(f"--{key}", value)
    missing = object()
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            rows.append((key, None if va is missing else va, None if vb is missing else vb))
    return rows


def value_at(series: MetricSeries, step: int) -> float | None:
    """The metric's value at a step (the newest launch's value when a resume repeated it), None if not logged."""
    steps, values = series.snapshot()
    hits = np.flatnonzero(steps == step)
    return float(values[hits[-1]]) if len(hits) else None


def last_common_step(a: MetricSeries, b: MetricSeries) -> int | None:
    common = np.intersect1d(a.snapshot()[0], b.snapshot()[0])
    return int(common[-1]) if len(common) else None


def format_config_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"
