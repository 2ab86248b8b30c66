"""The selected run's status line: status, step/total with a progress bar, rate, ETA, elapsed, last error."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate
from twinkle_tui.runs.store import RunCache, format_age
from twinkle_tui.ui.widgets.run_list import STATUS_ICONS

BAR_WIDTH = 20
NOTICE_SECONDS = 12.0  # an error stays this long in the status bar
MIN_BAR = 4


def progress_bar(fraction: float | None, width: int = BAR_WIDTH) -> Text:
    if fraction is None:
        return Text("─" * width, style="grey37")
    filled = int(round(fraction * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="grey37")


Line = Text | Callable[[int], Text]  # a row, or how to lay it out for a width


class RunStatusBar(Static):
    """Pulls everything it shows from the run view when asked to update."""

    _lines: list[Line] = []
    _notice: tuple[str, float] | None = None

    class Resized(Message):
        """The bar's width changed: what it shows (the progress bar's length) must be laid out again."""

    def on_resize(self) -> None:
        self.post_message(self.Resized())

    def hold_notice(self, text: str) -> None:
        """An error stays in the status bar for NOTICE_SECONDS (the toast fades sooner)."""
        self._notice = (text, time.monotonic())

    def _held_notice(self) -> str | None:
        notice = self._notice
        if notice is None or time.monotonic() - notice[1] > NOTICE_SECONDS:
            self._notice = None
            return None
        return str(notice[0])

    def show(self, view: RunCache | None, now: float, notice: str | None = None) -> None:
        notice = notice or self._held_notice()
        if view is None:
            empty: list[Line] = [Text("no run selected · press n to start one", style="dim")]
            if notice:
                empty.append(Text(notice, style="red"))
            self._show(empty)
            return
        progress = RunProgress.of(view, now)
        icon, style = STATUS_ICONS[view.status]
        active = view.status.is_active
        # The first line holds what matters most (state, step, rate, ETA): the progress bar gets the room the
        # others leave, and goes before any of them would be cut.
        before = Text.assemble((f"{icon} {view.status.value}", f"bold {style}"), "  ",
                               f"step {progress.step}" + (f"/{progress.total}" if progress.total else ""), " ")
        after = Text.assemble(
            f"{progress.fraction:.0%}" if progress.fraction is not None else "",
            ("  ·  ", "dim"), format_rate(progress.rate),
            ("  ·  ETA ", "dim") if active else "", format_duration(progress.eta) if active else "",
        )

        def steps(width: int) -> Text:
            room = width - before.cell_len - after.cell_len - 1
            bar = progress_bar(progress.fraction, min(BAR_WIDTH, room)) + " " if room >= MIN_BAR else Text("")
            return before + bar + after

        model = (view.meta.model_id or "").removeprefix("builtin:")
        launches = view.meta.launches or 0
        name = view.meta.display_name
        end = view.meta.end_time
        when = f"elapsed {format_duration(progress.elapsed)}" if active else (
            f"ran {format_duration(progress.elapsed)}" + (f" · ended {format_age(now - end)} ago" if end else ""))

        def head(width: int) -> Text:  # too long: the model goes first, then the launch count; the time stays
            for extras in ((model, launches), ("", launches), ("", 0)):
                text = Text.assemble(
                    (name or view.run_id, "bold"), (f" ({view.run_id})" if name else "", "dim"),
                    ("  ·  " + extras[0] if extras[0] else "", "dim"),
                    ("  ·  launch " + str(extras[1]) if extras[1] > 1 else "", "dim"),
                    ("  ·  " + when, "dim"),
                )
                if text.cell_len <= width:
                    break
            return text

        lines: list[Line] = [steps, head]
        problems = [p for p in (notice, view.meta.error, view.problem) if p]
        if view.metrics.skipped:
            problems.append(f"{view.metrics.skipped} malformed metric line(s) skipped")
        if problems:
            lines.append(Text(" · ".join(str(p) for p in problems), style="red"))
        self._show(lines)

    @property
    def text_width(self) -> int:
        return max(10, (self.content_size.width or 120))

    def _show(self, lines: list[Line]) -> None:
        self._lines = lines
        self.refresh()  # fixed height in the stylesheet: no layout pass per update

    def render(self) -> Text:
        """One row per line, laid out for the width the bar has now (not when the data came): the progress bar
        takes the room the numbers leave, and a row still too long is cut at its end, never wrapped (the bar has
        a fixed height of three rows)."""
        width = self.text_width
        out = []
        for line in self._lines:
            row = line(width) if callable(line) else line.copy()
            row.truncate(width, overflow="ellipsis")
            out.append(row)
        return Text("\n").join(out)
