"""The research view: the leaderboard, the metric per experiment (kept ones joined as the best-so-far line,
discarded grey, crashes marked), the live metric of the experiments running, the diff of the selected experiment
against its parent, keep rate and budget left. Keys pause/resume the loop, approve or reject a proposal waiting for
review, and stop it; they run the command layer's control_research, as the chat and the agent would.

It renders what twinkle_tui.research.watch reads from the research's files: a worker reads, posts a message, and
the handlers here draw."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from twinkle_tui.research.records import Experiment, ResearchDir
from twinkle_tui.research.summary import format_metric
from twinkle_tui.research.watch import Snapshot, experiment_diff, progress_points, read_snapshot
from twinkle_tui.runs.store import RunStore
from twinkle_tui.ui.widgets.charts import place_y_ticks
from twinkle_tui.ui.widgets.plot import OncePlot

Control = Callable[[str, str], Awaitable[object]]  # (action, research name) -> runs control_research

STATUS_STYLE = {"keep": "bold green", "discard": "grey62", "crash": "bold red", "timeout": "yellow",
                "stopped": "grey50"}
LIVE_COLORS = ("cyan", "orange", "magenta", "yellow", "blue", "green")
REFRESH_SECONDS = 1.0


class SnapshotRead(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotRead)


class DiffRead(Message):
    def __init__(self, key: str, text: str) -> None:
        super().__init__()
        self.key, self.text = key, text


class ResearchScreen(Screen[None]):
    CSS_PATH = "research.tcss"
    BINDINGS = [
        Binding("p", "pause", "Pause/resume", id="research.pause"),
        Binding("y", "review(True)", "Approve", id="research.approve"),
        Binding("n", "review(False)", "Reject", id="research.reject"),
        Binding("s", "stop", "Stop", id="research.stop"),
        Binding("escape,q", "back", "Back", id="research.back"),
    ]

    def __init__(self, research: ResearchDir, store: RunStore, control: Control,
                 refresh_seconds: float | None = REFRESH_SECONDS) -> None:
        super().__init__()
        self.research = research
        self.control = control  # runs the command layer's control_research (the app's CommandRunner, so it asks)
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.snapshot: Snapshot | None = None
        self.selected: str | None = None
        self.diff_key: str | None = None
        self.diff_text = ""  # what the diff panel shows, as text
        self._rows: list[tuple[Any, ...]] = []

    def compose(self) -> ComposeResult:
        yield Static("reading the research…", id="research-header")
        with Horizontal(id="research-main"):
            with Vertical(id="research-left"):
                yield Static("leaderboard (best first)", classes="panel-title")
                yield DataTable(id="leaderboard", cursor_type="row", zebra_stripes=False)
            with Vertical(id="research-charts"):
                yield OncePlot(replot=self._replot_progress, id="progress-chart")
                yield OncePlot(replot=self._replot_live, id="live-chart")
        yield Static("diff", id="diff-title", classes="panel-title")
        with VerticalScroll(id="diff-scroll"):
            yield Static("", id="research-diff")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#leaderboard", DataTable)
        table.add_columns("exp", "status", "metric", "Δ best", "description")
        table.focus()
        self.reload()
        if self.refresh_seconds:
            self.set_interval(self.refresh_seconds, self.reload)

    # ------------------------------------------------------------------ reading (workers post messages)
    @work(thread=True, exclusive=True, group="research-read", exit_on_error=False)
    def reload(self) -> None:
        self.post_message(SnapshotRead(read_snapshot(self.research, self.store)))

    @work(thread=True, exclusive=True, group="research-diff", exit_on_error=False)
    def read_diff(self, key: str, experiment: Experiment | None, review: dict[str, Any] | None) -> None:
        if review is not None:
            text = f"{review['id']} · waiting for your review (y approves, n rejects) · {review.get('description')}"
            text += "\n\n" + (review.get("diff") or f"knobs: {review.get('params')}")
        elif experiment is not None:
            text = experiment_diff(self.research, experiment)
        else:
            text = "no experiment yet"
        self.post_message(DiffRead(key, text))

    # ------------------------------------------------------------------ drawing (handlers own the state)
    @on(SnapshotRead)
    def _snapshot_read(self, message: SnapshotRead) -> None:
        snap = self.snapshot = message.snapshot
        self.query_one("#research-header", Static).update(self._header(snap))
        self.set_class(snap.review is not None, "reviewing")
        self._fill_table(snap)
        self._draw_progress(snap)
        self._draw_live(snap)
        self._want_diff()

    def _header(self, snap: Snapshot) -> Text:
        text = Text(snap.header())
        reason = snap.state.get("reason")
        if reason and snap.status in ("paused", "stopped", "not running", "stopping"):
            text.append(f"\n{snap.status}: {reason}", style="bold yellow")
        elif snap.status == "not running":
            text.append("\nthe loop is not running: continue it with "
                        f"twinkle-tui research {snap.state.get('program')} --resume", style="bold yellow")
        if snap.review is not None:
            text.append(f"\n{snap.review['id']} waits for your review: y approves, n rejects", style="bold cyan")
        return text

    def _fill_table(self, snap: Snapshot) -> None:
        best = snap.summary.best_metric
        rows = []
        for e in snap.summary.leaderboard():
            delta = "" if e.metric is None or best is None or not math.isfinite(e.metric) else \
                f"{e.metric - best:+.3g}" if e.metric != best else "best"
            style = STATUS_STYLE.get(e.status, "")
            description = ("baseline · " if e.baseline else "") + e.description
            rows.append((e.id, Text(e.status, style=style), format_metric(e.metric), delta, description))
        key = [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows]
        if key == self._rows:
            return
        self._rows = key
        table = self.query_one("#leaderboard", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*row, key=row[0])
        if self.selected is None and rows:
            self.selected = str(rows[0][0])
        if self.selected is not None:
            try:
                table.move_cursor(row=table.get_row_index(self.selected))
            except Exception:  # the selected experiment is no longer listed
                self.selected = str(rows[0][0]) if rows else None

    def _replot_progress(self) -> None:
        if self.snapshot is not None:
            self._draw_progress(self.snapshot)

    def _replot_live(self) -> None:
        if self.snapshot is not None:
            self._draw_live(self.snapshot)

    def _draw_progress(self, snap: Snapshot) -> None:
        chart = self.query_one("#progress-chart", OncePlot)
        plt = chart.plt
        plt.clear_data()
        plt.clear_figure()
        points = progress_points(snap.summary)
        if points["discarded"]:
            plt.scatter(*_xy(points["discarded"]), marker="o", color="gray")
        if points["best"]:
            plt.plot(*_xy(points["best"]), marker="braille", color="green")
        if points["kept"]:
            plt.scatter(*_xy(points["kept"]), marker="O", color="green")
        if points["failed"]:
            plt.scatter(*_xy(points["failed"]), marker="x", color="red")
        last = max((e.number for e in snap.summary.runs), default=1)  # no xlim: plotext then misplaces markers
        step = max(1, math.ceil(last / 10))
        plt.xticks(list(range(1, last + 1, step)))
        values = [y for _, y in points["kept"] + points["discarded"]]
        if values and max(values) > min(values):
            lo, hi = min(values), max(values)
            log = lo > 0 and hi / lo > 20  # a baseline far above the rest would flatten every later experiment
            if log:
                plt.yscale("log")
            # round values (0.01, 0.1, 1), as the metric charts have; the title, the frame and the experiment
            # numbers take four rows
            place_y_ticks(plt, lo, hi, lo, hi, max(1, chart.size.height - 4), log)
        plt.title(f"{snap.metric} ({'higher' if snap.summary.maximize else 'lower'} is better) "
                  "O kept o discarded x failed")
        chart.plotted()

    def _draw_live(self, snap: Snapshot) -> None:
        chart = self.query_one("#live-chart", OncePlot)
        plt = chart.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = 0
        for i, live in enumerate(snap.live):
            if live.steps:
                plt.plot(live.steps, live.values, marker="braille", color=LIVE_COLORS[i % len(LIVE_COLORS)])
                drawn += 1
        if snap.live:
            names = ", ".join(f"{x.experiment} ({LIVE_COLORS[i % len(LIVE_COLORS)]})" for i, x in enumerate(snap.live))
            plt.title(f"{snap.metric} of the running: {names}" + ("" if drawn else " — none logged yet"))
        else:
            plt.title("no experiment running")
        chart.plotted()

    def _want_diff(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        review = snap.review
        experiment = next((e for e in snap.summary.runs if e.id == self.selected), None)
        key = f"review:{review['id']}" if review else f"exp:{experiment.id if experiment else None}"
        if key != self.diff_key:
            self.diff_key = key
            self.read_diff(key, experiment, review)

    @on(DiffRead)
    def _diff_read(self, message: DiffRead) -> None:
        if message.key != self.diff_key:
            return
        head, _, body = message.text.partition("\n\n")
        self.query_one("#diff-title", Static).update(escape(head.splitlines()[0] if head else "diff"))
        body_text = "\n".join(head.splitlines()[1:]) + ("\n\n" if body and len(head.splitlines()) > 1 else "") + body
        self.diff_text = body_text or "(no change)"
        widget = self.query_one("#research-diff", Static)
        widget.update(Syntax(self.diff_text, "diff", theme="ansi_dark", word_wrap=True,
                             background_color="default"))

    @on(DataTable.RowHighlighted, "#leaderboard")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.selected = str(event.row_key.value)
            self._want_diff()

    # ------------------------------------------------------------------ keys: the command layer's control_research
    def _control(self, action: str) -> None:
        self.app.run_worker(self.control(action, self.research.name), group="commands", exit_on_error=False)
        self.set_timer(0.3, self.reload)

    def action_pause(self) -> None:
        paused = self.snapshot is not None and self.snapshot.status == "paused"
        self._control("resume" if paused else "pause")

    def action_review(self, approve: bool) -> None:
        if self.snapshot is None or self.snapshot.review is None:
            self.app.notify("no proposal is waiting for review", severity="warning")
            return
        self._control("approve" if approve else "reject")

    def action_stop(self) -> None:
        self._control("stop")

    def action_back(self) -> None:
        self.app.pop_screen()


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def research_screen(name: str | None, store: RunStore, current: Screen[Any], control: Control) -> Screen[Any] | None:
    """The research view of `name` (or of the newest research): the one on screen if it shows that research
    already, else a new one; None when there is no research."""
    from twinkle_tui.research.watch import newest_research

    research = ResearchDir.of(name, store.home) if name else newest_research(store.home)
    if research is None:
        return None
    if isinstance(current, ResearchScreen) and current.research.root == research.root:
        return current
    return ResearchScreen(research, store, control)
