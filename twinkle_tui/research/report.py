"""`twinkle-tui research report NAME`: the summary of a research as text, and its progress chart as a PNG (the
metric per experiment: kept ones joined as the best-so-far line, discarded grey, crashes and timeouts marked), the
picture autoresearch's analysis draws."""

from __future__ import annotations

import math
import os
from pathlib import Path

from twinkle_trainer.protocol import InvalidRunId, validate_run_id
from twinkle_tui.research.records import Experiment, ResearchDir, list_researches
from twinkle_tui.research.summary import Summary, best_so_far, format_metric, summarize


class ReportError(Exception):
    """No such research, or the chart cannot be written; one line."""


def load(name: str, home: Path) -> tuple[ResearchDir, dict[str, object], Summary]:
    try:
        validate_run_id(name)
    except InvalidRunId:
        raise ReportError(f"{name!r} is not a research name") from None
    research = ResearchDir.of(name, home)
    if not research.exists:
        known = ", ".join(r.name for r in list_researches(home)[:8]) or "none yet"
        raise ReportError(f"no research {name!r} under {research.root.parent} (researches: {known})")
    state = research.read_state()
    summary = summarize(research.read_experiments(), state.get("goal") == "maximize", state)
    return research, state, summary


def summary_text(research: ResearchDir, state: dict[str, object], s: Summary) -> str:
    metric = str(state.get("metric") or "metric")
    settings = state.get("settings") if isinstance(state.get("settings"), dict) else {}
    assert isinstance(settings, dict)
    lines = [f"research {research.name} · {state.get('status', '?')}"
             + (f" ({state['reason']})" if state.get("reason") else ""),
             f"program {state.get('program')} · {metric} ({state.get('goal')}) · {settings.get('proposer')} proposer "
             f"· {settings.get('lanes')} lane(s)"]
    counts = {k: sum(1 for e in s.runs if e.status == k) for k in ("keep", "discard", "crash", "timeout")}
    rate = f"{s.keep_rate:.0%}" if s.keep_rate is not None else "—"
    lines.append(f"{len(s.runs)} experiments of {settings.get('experiments')}: kept {s.kept} ({rate} of "
                 f"{s.tried} tried), discarded {counts['discard']}, crashed {counts['crash']}, timed out "
                 f"{counts['timeout']}; {s.refused} proposals refused")
    noise = f" ± {format_metric(s.noise)}" if s.noise else ""
    gain = s.improvement()
    best = s.best.id if s.best is not None else "—"
    lines.append(f"baseline {format_metric(s.baseline)}{noise} · best {format_metric(s.best_metric)} ({best})"
                 + (f" · {gain:+.4g} better" if gain is not None else ""))
    lines.append("")
    lines.append("leaderboard:")
    for e in s.leaderboard()[:10]:
        lines.append(f"  {e.id}  {e.status:<8} {format_metric(e.metric):>12}  {_short(e.description, 70)}")
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def write_png(path: Path, runs: list[Experiment], summary: Summary, metric: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    try:
        finite = [e for e in runs if e.metric is not None and math.isfinite(e.metric)
                  and e.status in ("keep", "discard")]
        value = {id(e): float(e.metric or 0.0) for e in finite}
        discarded = [e for e in finite if e.status == "discard"]
        ax.scatter([e.number for e in discarded], [value[id(e)] for e in discarded], c="#bbbbbb", s=18,
                   label="discarded", zorder=2)
        kept = [e for e in finite if e.status == "keep"]
        if kept:
            line = best_so_far([(float(e.number), value[id(e)]) for e in kept], summary.maximize,
                               float(max(e.number for e in runs)))
            ax.plot([p[0] for p in line], [p[1] for p in line], color="#2a9d3a", linewidth=1.6,
                    label="best so far", zorder=3)
            ax.scatter([e.number for e in kept], [value[id(e)] for e in kept], c="#2a9d3a", s=36, label="kept", zorder=4)
            for e in kept:
                if e.baseline:
                    continue
                ax.annotate(_short(e.description, 40), (e.number, float(e.metric or 0)), textcoords="offset points",
                            xytext=(4, 6), fontsize=7, color="#1d6b28", rotation=20)
        failed = [e for e in runs if e.status in ("crash", "timeout")]
        if failed:
            values = list(value.values()) or [0.0]
            low, high = min(values), max(values)
            y = low - 0.05 * ((high - low) or abs(low) or 1.0)
            ax.scatter([e.number for e in failed], [y] * len(failed), marker="x", c="#d62728", s=40,
                       label="crash / timeout", zorder=4)
        values = list(value.values())
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # a baseline far above the rest would flatten every later experiment
        ax.set_xlabel("experiment")
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def write_report(name: str, home: Path, png: Path | None = None) -> tuple[str, Path]:
    research, state, summary = load(name, home)
    text = summary_text(research, state, summary)
    path = png or research.root / "progress.png"
    metric = str(state.get("metric") or "metric")
    title = (f"{research.name}: {len(summary.runs)} experiments, {summary.kept} kept · best {metric} "
             f"{format_metric(summary.best_metric)}")
    try:
        write_png(path, summary.runs, summary, metric, title)
    except OSError as exc:
        raise ReportError(f"cannot write the chart {path}: {exc.strerror or exc}") from None
    return text, path
