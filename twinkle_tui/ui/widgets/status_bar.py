"""The selected run's status line: status, step/total with a progress bar, rate, ETA, elapsed, last error."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate
from twinkle_tui.runs.store import RunView
from twinkle_tui.ui.widgets.run_list import STATUS_ICONS

BAR_WIDTH = 20


def progress_bar(fraction: float | None, width: int = BAR_WIDTH) -> Text:
    if fraction is None:
        return Text("─" * width, style="grey37")
    filled = int(round(fraction * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="grey37")


class RunStatusBar(Static):
    """Pulls everything it shows from the run view when asked to update."""

    def show(self, view: RunView | None, now: float) -> None:
        if view is None:
            self.update(Text("no run selected · press n to start one", style="dim"), layout=False)
            return
        progress = RunProgress.of(view, now)
        icon, style = STATUS_ICONS[view.status]
        model = (view.meta.get("model_id") or "").removeprefix("builtin:")
        line = Text.assemble(
            (f"{icon} {view.status.value}", f"bold {style}"), "  ", (view.run_id, "bold"),
            ("  ·  " + model if model else "", "dim"),
            ("  ·  launch " + str(view.meta.get("launches")) if (view.meta.get("launches") or 0) > 1 else "", "dim"),
            ("  ·  elapsed ", "dim"), format_duration(progress.elapsed),
            "\n",
            f"step {progress.step}" + (f"/{progress.total}" if progress.total else ""), " ",
            progress_bar(progress.fraction), " ",
            f"{progress.fraction:.0%}" if progress.fraction is not None else "",
            ("  ·  ", "dim"), format_rate(progress.rate),
            ("  ·  ETA ", "dim"), format_duration(progress.eta) if view.status.is_active else "--",
        )
        problems = [p for p in (view.meta.get("error"), view.problem) if p]
        if view.metrics.malformed:
            problems.append(f"{view.metrics.malformed} malformed metric line(s) skipped")
        if problems:
            line.append("\n")
            line.append(" · ".join(str(p) for p in problems)[:300], style="red")
        self.update(line, layout=False)  # fixed height in the stylesheet: no layout pass per update
