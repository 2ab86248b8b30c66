"""The selected run's status line: status, step/total with a progress bar, rate, ETA, elapsed, last error."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate
from twinkle_tui.runs.store import RunView, format_age
from twinkle_tui.ui.widgets.run_list import STATUS_ICONS

BAR_WIDTH = 20


def progress_bar(fraction: float | None, width: int = BAR_WIDTH) -> Text:
    if fraction is None:
        return Text("─" * width, style="grey37")
    filled = int(round(fraction * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="grey37")


class RunStatusBar(Static):
    """Pulls everything it shows from the run view when asked to update."""

    class Resized(Message):
        """The bar's width changed: what it shows (the progress bar's length) must be laid out again."""

    def on_resize(self) -> None:
        self.post_message(self.Resized())

    def show(self, view: RunView | None, now: float, notice: str | None = None) -> None:
        if view is None:
            lines = [Text("no run selected · press n to start one", style="dim")]
            if notice:
                lines.append(Text(notice, style="red"))
            self._show(lines)
            return
        progress = RunProgress.of(view, now)
        icon, style = STATUS_ICONS[view.status]
        active = view.status.is_active
        # The first line holds what matters most (state, step, rate, ETA): lines are cut at the end, not this.
        steps = Text.assemble(
            (f"{icon} {view.status.value}", f"bold {style}"), "  ",
            f"step {progress.step}" + (f"/{progress.total}" if progress.total else ""), " ",
            progress_bar(progress.fraction, self.bar_width), " ",
            f"{progress.fraction:.0%}" if progress.fraction is not None else "",
            ("  ·  ", "dim"), format_rate(progress.rate),
            ("  ·  ETA ", "dim") if active else "", format_duration(progress.eta) if active else "",
        )
        model = (view.meta.get("model_id") or "").removeprefix("builtin:")
        launches = view.meta.get("launches") or 0
        name = view.meta.get("display_name")
        end = view.meta.get("end_time")
        when = f"elapsed {format_duration(progress.elapsed)}" if active else (
            f"ran {format_duration(progress.elapsed)}" + (f" · ended {format_age(now - end)} ago" if end else ""))
        head = Text.assemble(
            (name or view.run_id, "bold"), (f" ({view.run_id})" if name else "", "dim"),
            ("  ·  " + model if model else "", "dim"),
            ("  ·  launch " + str(launches) if launches > 1 else "", "dim"),
            ("  ·  " + when, "dim"),
        )
        lines = [steps, head]
        problems = [p for p in (notice, view.meta.get("error"), view.problem) if p]
        if view.metrics.skipped:
            problems.append(f"{view.metrics.skipped} malformed metric line(s) skipped")
        if problems:
            lines.append(Text(" · ".join(str(p) for p in problems), style="red"))
        self._show(lines)

    @property
    def bar_width(self) -> int:
        """The progress bar takes what is left after the step, rate and ETA (20 cells at most, 4 at least)."""
        width = self.size.width or 120
        return max(4, min(BAR_WIDTH, width - 62))

    def _show(self, lines: list[Text]) -> None:
        self._lines = lines
        self.refresh()  # fixed height in the stylesheet: no layout pass per update

    def render(self) -> Text:
        """One row per line, cut to the width the bar has now (not when the data came), never wrapped: the bar
        has a fixed height of three rows."""
        width = max(10, self.size.width - 2)
        out = []
        for text in getattr(self, "_lines", []):
            row = text.copy()
            row.truncate(width, overflow="ellipsis")
            out.append(row)
        return Text("\n").join(out)
