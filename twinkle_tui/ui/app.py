"""The twinkle-tui dashboard: run list, status, charts, log, GPU panel and chat on one screen.

Workers do the I/O (watching files, reading the store, sampling GPUs) and post payload-free messages; the
handlers here own the state. Widgets are redrawn at most ~4 times a second and only when what they show changed.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Static
from watchfiles import awatch

from trainer.protocol import InvalidRunId, RunStatus
from twinkle_tui.gpu import GpuProbe, GpuSnapshot, ProcessUsage, process_usage
from twinkle_tui.process.controller import Launched, ProcessController, RunControlError
from twinkle_tui.runs.store import RunStore, RunSummary, RunView
from twinkle_tui.slash import SlashCommand, SlashError, help_text, metric_names, parse
from twinkle_tui.ui.commands import RunCommands
from twinkle_tui.ui.messages import FilesChanged, ResourcesSampled, RunsRefreshed
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.screens.help import HelpScreen
from twinkle_tui.ui.screens.metric_picker import MetricPicker
from twinkle_tui.ui.screens.new_run import NewRunScreen, find_recipes
from twinkle_tui.ui.widgets.charts import ChartGrid, ChartSettings, MetricChart, default_metrics
from twinkle_tui.ui.widgets.chat import ChatPanel
from twinkle_tui.ui.widgets.gpu_panel import GpuPanel
from twinkle_tui.ui.widgets.log_view import RunLog
from twinkle_tui.ui.widgets.run_list import RunList
from twinkle_tui.ui.widgets.status_bar import RunStatusBar

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLUSH_INTERVAL = 0.25  # at most ~4 redraws a second
RESOURCE_INTERVAL = 2.0
LIST_INTERVAL = 5.0  # ages, and runs whose process died without a word
INITIAL_SYNC_BYTES = 32 * 1024 * 1024  # ~0.25 s of metrics reading
DATA_INTERVAL = 1.0  # streamed data redraws the screen at most once a second; keys redraw at once


class TwinkleApp(App[int]):
    """The dashboard over one $TWINKLE_HOME."""

    CSS_PATH = "app.tcss"
    TITLE = "twinkle-tui"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("p", "pause", "Pause", id="pause"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("s", "stop", "Stop", id="stop"),
        Binding("n", "new_run", "New run", id="new_run"),
        Binding("slash", "focus_chat", "Chat", id="focus_chat"),
        Binding("m", "pick_metrics", "Metrics", id="pick_metrics"),
        Binding("z", "zoom(0.5)", "Zoom in", id="zoom_in"),
        Binding("x", "zoom(2.0)", "Zoom out", id="zoom_out"),
        Binding("left_square_bracket", "pan(-0.25)", "Pan left", id="pan_left", show=False),
        Binding("right_square_bracket", "pan(0.25)", "Pan right", id="pan_right", show=False),
        Binding("0", "reset_zoom", "Reset zoom", id="reset_zoom"),
        Binding("e", "toggle_smoothing", "Smooth", id="toggle_smoothing"),
        Binding("l", "toggle_log_y", "Log-y", id="toggle_log_y"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("escape", "leave_chat", "Back", id="leave_chat", show=False),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        home: str | Path | None = None,
        run_id: str | None = None,
        llm: Any = None,
        grace: float = 30.0,
        clock: Callable[[], float] = time.time,
        gpu_probe: Callable[[], GpuSnapshot] | None = None,
        usage_probe: Callable[[int | None], ProcessUsage | None] = process_usage,
        watch: bool = True,
        recipe_dirs: list[Path] | None = None,
        start: str | None = None,
    ) -> None:
        super().__init__()
        self.store = RunStore(home)
        self.controller = ProcessController(self.store.home, grace=grace)
        self.llm = llm
        self.clock = clock
        self.gpu_probe = gpu_probe or GpuProbe().snapshot
        self.usage_probe = usage_probe
        self.watch_enabled = watch
        self.recipe_dirs = recipe_dirs if recipe_dirs is not None else [Path.cwd() / "examples", REPO_EXAMPLES]
        self.selected: str | None = run_id
        self.settings = ChartSettings()
        self.summaries: list[RunSummary] = []
        self.gpus = GpuSnapshot(error="probing GPUs…")
        self.usage: ProcessUsage | None = None
        self._pending_runs: set[str] = set()
        self._list_stale = True
        self._io_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._last_flush = 0.0
        # Parts whose data changed since the last data redraw: workers add, the UI thread takes (under the lock).
        self._data_pending: set[str] = set()
        self._data_lock = threading.Lock()
        self._data_drawn_at = 0.0
        self._drawn: tuple[Any, ...] | None = None
        self._launched: list[Launched] = []
        self._stop_watch = threading.Event()
        self._start_spec = start

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Static("runs", classes="panel-title")
                yield RunList(id="runs")
                yield Static("resources", classes="panel-title")
                yield GpuPanel(id="gpu")
            with Vertical(id="center"):
                yield RunStatusBar(id="status")
                yield ChartGrid(id="charts")
                yield Static("log", classes="panel-title")
                yield RunLog(id="log")
            yield ChatPanel(id="chat")
        yield Footer()

    def on_mount(self) -> None:
        # Kept once: while a modal is open, App.query_one would search the modal, not the dashboard.
        self.run_list = self.query_one(RunList)
        self.status_bar = self.query_one(RunStatusBar)
        self.chart_grid = self.query_one(ChartGrid)
        self.run_log = self.query_one(RunLog)
        self.gpu_panel = self.query_one(GpuPanel)
        self.chat = self.query_one(ChatPanel)
        self.store.home.mkdir(parents=True, exist_ok=True)
        self.run_list.focus()
        if self._start_spec:
            try:
                self.notify(self.start_run(self._start_spec), timeout=4)
            except (RunControlError, InvalidRunId) as exc:
                self.notify(str(exc), severity="error", timeout=10)
        if self._initial_read_is_small():
            # A reader thread during Textual's own start-up runs at half speed and delays the first paint;
            # a small first read in the main thread gives the first full frame sooner.
            self._read_store(full_list=True)
            self.post_message(RunsRefreshed())
        else:
            self.refresh_store(full_list=True)
        if self.watch_enabled:
            self.watch_home()
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.set_interval(RESOURCE_INTERVAL, self.sample_resources)
        self.set_interval(LIST_INTERVAL, self._periodic)
        self.sample_resources()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 130, "narrow")
        self._dirty.add("charts")

    def on_unmount(self) -> None:
        self._stop_watch.set()

    # ------------------------------------------------------------------ workers (I/O only; they post messages)
    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_home(self) -> None:
        home = self.store.home
        # Batches of up to 0.4 s: a run writing every step would otherwise wake us for every line.
        async for changes in awatch(home, debounce=400, step=200, stop_event=self._stop_watch,
                                    ignore_permission_denied=True):
            paths = [p for _, p in changes]
            self._pending_runs |= self.store.run_ids_for_paths(paths)
            if any(p.endswith("meta.json") or Path(p).parent == home for p in paths):
                self._list_stale = True
            self.post_message(FilesChanged())

    @work(thread=True, group="io", exit_on_error=False)
    def refresh_store(self, full_list: bool = False, run_ids: frozenset[str] = frozenset()) -> None:
        self._read_store(full_list, run_ids)
        self.post_message(RunsRefreshed())

    def _read_store(self, full_list: bool = False, run_ids: frozenset[str] = frozenset()) -> None:
        """Read the run list and the watched runs' new data (the only place the app reads files); remember
        which parts of the screen that data feeds."""
        with self._io_lock:
            if full_list:
                summaries = self.store.list_runs()
                if [(s.run_id, s.status, s.last_step, s.total_steps) for s in summaries] != [
                        (s.run_id, s.status, s.last_step, s.total_steps) for s in self.summaries]:
                    self._note_changed("list")
                self.summaries = summaries
            wanted = {self.selected, self.settings.compare}
            if self.selected is None and self.summaries:  # the newest run will be selected: read it now
                wanted.add(self.summaries[0].run_id)
            for run_id in wanted - {None}:
                if run_id is not None and (full_list or run_id in run_ids or not run_ids):
                    try:
                        parts = self.store.view(run_id).refresh()
                    except (KeyError, InvalidRunId):
                        continue
                    if "metrics" in parts or "events" in parts:
                        self._note_changed("charts", "status")
                    if "meta" in parts:
                        self._note_changed("status", "list")
                    if "log" in parts:
                        self._note_changed("log")

    def _note_changed(self, *parts: str) -> None:
        with self._data_lock:
            self._data_pending.update(parts)

    def _initial_read_is_small(self) -> bool:
        """True if the run shown first can be read before the first frame without a noticeable pause."""
        summaries = self.store.list_runs()
        run_id = self.selected or (summaries[0].run_id if summaries else None)
        if run_id is None:
            return True
        try:
            return self.store.view(run_id).paths.metrics.stat().st_size <= INITIAL_SYNC_BYTES
        except (OSError, KeyError, InvalidRunId):
            return True

    @work(thread=True, exclusive=True, group="resources", exit_on_error=False)
    def sample_resources(self) -> None:
        gpus = self.gpu_probe()
        view = self.current_view()
        pid = view.meta.get("pid") if view is not None and view.status.is_active else None
        self.post_message(ResourcesSampled(gpus, self.usage_probe(pid)))

    # ------------------------------------------------------------------ message handlers (own the state)
    @on(FilesChanged)
    def _files_changed(self) -> None:
        ids, self._pending_runs = frozenset(self._pending_runs), set()
        full, self._list_stale = self._list_stale, False
        watched = {self.selected, self.settings.compare}
        if full or ids & watched:
            self.refresh_store(full_list=full, run_ids=ids)

    @on(RunsRefreshed)
    def _runs_refreshed(self) -> None:
        if self.selected is None and self.summaries:
            self.select_run(self.summaries[0].run_id)
            return
        self._flush_data()

    @on(ResourcesSampled)
    def _resources_sampled(self, message: ResourcesSampled) -> None:
        self.gpus, self.usage = message.gpus, message.usage
        runs_by_pid = {s.meta["pid"]: s.run_id for s in self.summaries if s.status.is_active and s.meta.get("pid")}
        self.gpu_panel.show(self.gpus, self.usage, runs_by_pid)

    @on(RunList.Selected)
    def _run_selected(self, message: RunList.Selected) -> None:
        if message.run_id != self.selected:
            self.select_run(message.run_id)

    @on(MetricChart.ZoomRequest)
    def _zoom_request(self, message: MetricChart.ZoomRequest) -> None:
        if message.lo is not None and message.hi is not None:
            self.set_zoom(message.lo, message.hi)
        elif message.factor is not None:
            self.action_zoom(message.factor, message.center)

    @on(ChatPanel.Submitted)
    async def _chat_submitted(self, message: ChatPanel.Submitted) -> None:
        chat = self.chat
        await chat.add(message.text, "user")
        if not message.text.startswith("/"):
            await chat.add("The LLM agent is not connected in this version; slash commands work: **/help**.", "reply")
            return
        try:
            reply = self.run_slash(parse(message.text))
        except (SlashError, RunControlError, InvalidRunId, KeyError) as exc:
            await chat.add(f"⚠ {str(exc).strip(chr(39))}", "error")
            return
        if reply:
            await chat.add(reply, "reply")

    # ------------------------------------------------------------------ drawing (at most ~4 Hz)
    def _flush_data(self) -> None:
        """Redraw what new data changed, at most once per DATA_INTERVAL; the flush tick catches the rest."""
        if time.monotonic() - self._data_drawn_at < DATA_INTERVAL:
            return
        with self._data_lock:
            parts, self._data_pending = self._data_pending, set()
        if parts:
            self._data_drawn_at = time.monotonic()
            self.redraw(*parts)

    async def flush(self) -> None:
        self._flush_data()
        if not self._dirty:
            return
        self._last_flush = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        now = self.clock()
        view = self.current_view()
        if "list" in dirty:
            self.run_list.show(self.summaries, self.selected, now)
        if "status" in dirty:
            self.status_bar.show(view, now)
        if "log" in dirty:
            self.run_log.show(view)
        if "charts" in dirty:
            await self._draw_charts(view)

    async def _draw_charts(self, view: RunView | None) -> None:
        grid = self.chart_grid
        if view is None:
            await grid.set_metrics([])
            return
        names = view.metrics.names()
        if not self.settings.user_chose_metrics or not set(self.settings.metrics) & set(names):
            self.settings.metrics = default_metrics(names)
        await grid.set_metrics([m for m in self.settings.metrics if m in names] or self.settings.metrics)
        compare = self.compare_view()
        s = self.settings
        key = (view.run_id, view.metrics.generation, len(view.events.events),
               compare.run_id if compare else None, compare.metrics.generation if compare else None,
               tuple(s.metrics), s.zoom, s.smoothing, s.smoothing_weight, s.log_y, grid.size)
        if key == self._drawn:
            return
        self._drawn = key
        grid.draw(view, s, compare)

    def redraw(self, *parts: str) -> None:
        """Mark parts for redrawing: at once if nothing was drawn for an interval, else on the next tick."""
        self._dirty |= set(parts) or {"list", "status", "charts", "log"}
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL:
            self._last_flush = time.monotonic()
            self.call_later(self.flush)

    # ------------------------------------------------------------------ selection
    def current_view(self) -> RunView | None:
        if self.selected is None:
            return None
        try:
            return self.store.view(self.selected)
        except (KeyError, InvalidRunId):
            return None

    def compare_view(self) -> RunView | None:
        if not self.settings.compare:
            return None
        try:
            return self.store.view(self.settings.compare)
        except (KeyError, InvalidRunId):
            return None

    def select_run(self, run_id: str) -> None:
        self.store.view(run_id)  # raises for a bad or unknown id
        self.selected = run_id
        self.settings.zoom = None
        if self.settings.compare == run_id:
            self.settings.compare = None
        self.refresh_store(run_ids=frozenset({run_id}))
        self.sample_resources()
        self.redraw()

    # ------------------------------------------------------------------ actions (keys, palette and /commands)
    def _control(self, action: str) -> str:
        if self.selected is None:
            raise RunControlError("no run selected")
        result = getattr(self.controller, action)(self.selected)
        if isinstance(result, Launched):
            self._launched.append(result)
        self._list_stale = True
        self.refresh_store(full_list=True)
        return f"{action} {self.selected}: done"

    def _act(self, action: str) -> None:
        try:
            self.notify(self._control(action), timeout=3)
        except (RunControlError, InvalidRunId) as exc:
            self.notify(str(exc), severity="error", timeout=6)

    def action_pause(self) -> None:
        self._act("pause")

    def action_resume(self) -> None:
        self._act("resume")

    def action_stop(self) -> None:
        view = self.current_view()
        if view is None:
            self.notify("no run selected", severity="error")
            return
        if not view.status.is_active or view.status == RunStatus.STOPPING:
            self.notify(f"cannot stop run {view.run_id!r}: it is {view.status.value}", severity="error")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._act("stop")

        self.push_screen(ConfirmScreen(
            f"Stop run {view.run_id}?",
            f"It finishes step {view.last_step + 1}, saves a checkpoint and exits. "
            f"Resume later with r (relaunch from the checkpoint).",
        ), answered)

    def action_new_run(self) -> None:
        def chosen(value: str | None) -> None:
            if value:
                try:
                    self.notify(self.start_run(value), timeout=4)
                except (RunControlError, InvalidRunId, ValueError) as exc:
                    self.notify(str(exc), severity="error", timeout=8)

        self.push_screen(NewRunScreen(find_recipes(*self.recipe_dirs)), chosen)

    def start_run(self, spec: str) -> str:
        """Launch 'path [-- args]': a .py script as itself, a .toml/.yaml config through the embedded trainer."""
        parts = shlex.split(spec)
        path, args = parts[0], [a for a in parts[1:] if a != "--"]
        if not Path(path).exists():
            raise RunControlError(f"no such script or config: {path}")
        if path.endswith(".py"):
            launched = self.controller.launch_script(path, args)
        else:
            launched = self.controller.launch_module("trainer", [str(Path(path).resolve()), *args])
        self._launched.append(launched)
        self.selected = launched.run_id
        self.settings.zoom = None
        self._list_stale = True
        self.refresh_store(full_list=True)
        return f"started {launched.run_id}"

    def action_focus_chat(self) -> None:
        self.chat.query_one("#chat-input", Input).focus()

    def action_leave_chat(self) -> None:
        self.run_list.focus()

    def action_pick_metrics(self) -> None:
        view = self.current_view()
        if view is None or not view.metrics.names():
            self.notify("this run has no numeric metrics yet", severity="warning")
            return

        def picked(names: list[str] | None) -> None:
            if names:
                self.set_metrics(names)

        self.push_screen(MetricPicker(view.metrics.names(), self.settings.metrics), picked)

    def set_metrics(self, names: list[str]) -> None:
        self.settings.metrics = names[:4]
        self.settings.user_chose_metrics = True
        self.redraw("charts")

    def _data_range(self) -> tuple[float, float] | None:
        view = self.current_view()
        if view is None:
            return None
        ranges = [view.metrics.series[m].snapshot()[0] for m in self.settings.metrics if m in view.metrics.series]
        ranges = [r for r in ranges if len(r)]
        if not ranges:
            return None
        return float(min(r[0] for r in ranges)), float(max(r[-1] for r in ranges))

    def set_zoom(self, lo: float, hi: float) -> None:
        if hi - lo < 1:
            hi = lo + 1
        self.settings.zoom = (lo, hi)
        self.redraw("charts")

    def action_zoom(self, factor: float, center: float | None = None) -> None:
        full = self._data_range()
        if full is None:
            return
        lo, hi = self.settings.zoom or full
        center = (lo + hi) / 2 if center is None else center
        half = (hi - lo) * factor / 2
        if factor > 1 and half * 2 >= full[1] - full[0]:
            self.action_reset_zoom()
            return
        self.set_zoom(max(full[0], center - half), min(full[1], center + half) if factor > 1 else center + half)

    def action_pan(self, fraction: float) -> None:
        if self.settings.zoom is None:
            return
        lo, hi = self.settings.zoom
        shift = (hi - lo) * fraction
        self.set_zoom(lo + shift, hi + shift)

    def action_reset_zoom(self) -> None:
        self.settings.zoom = None
        self.redraw("charts")

    def action_toggle_smoothing(self) -> None:
        self.settings.smoothing = not self.settings.smoothing
        self.redraw("charts")

    def action_toggle_log_y(self) -> None:
        self.settings.log_y = not self.settings.log_y
        self.redraw("charts")

    def action_help(self) -> None:
        keys = [(b.key_display or b.key, b.description, b.id or "") for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(keys))

    def set_compare(self, run_id: str | None) -> None:
        if run_id is not None:
            self.store.view(run_id)
        self.settings.compare = run_id
        if run_id:
            self.refresh_store(run_ids=frozenset({run_id}))
        self.redraw("charts")

    # ------------------------------------------------------------------ slash commands
    def run_slash(self, cmd: SlashCommand) -> str | None:
        """Run a parsed slash command with the same handlers the keys use; returns the reply text."""
        name, args = cmd.name, cmd.args
        if name == "help":
            return "```\n" + help_text() + "\n```"
        if name == "runs":
            if not self.summaries:
                return "no runs yet under " + str(self.store.home)
            rows = "\n".join(f"| {s.run_id} | {s.status.value} | {s.last_step}/{s.total_steps or '?'} |" for s in self.summaries[:30])
            return "| run | status | step |\n|---|---|---|\n" + rows
        if name == "select":
            self.select_run(args[0])
            return f"selected {args[0]}"
        if name in ("pause", "resume"):
            return self._control(name)
        if name == "stop":
            self.action_stop()
            return None
        if name == "zoom":
            self.set_zoom(float(args[0]), float(args[1]))
            return f"showing steps {args[0]}–{args[1]}"
        if name == "reset":
            self.action_reset_zoom()
            return "zoom reset"
        if name == "metrics":
            view = self.current_view()
            known = view.metrics.names() if view else []
            wanted = metric_names(args)
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise SlashError(f"unknown metric(s): {', '.join(unknown)}; this run logs: {', '.join(known) or 'nothing yet'}")
            self.set_metrics(wanted)
            return "charting " + ", ".join(wanted)
        if name == "compare":
            target = args[0] if args and args[0] != "none" else None
            self.set_compare(target)
            return f"comparing with {target}" if target else "comparison off"
        if name == "smooth":
            if args:
                self.settings.smoothing_weight = float(args[0])
                self.settings.smoothing = True
            else:
                self.settings.smoothing = not self.settings.smoothing
            self.redraw("charts")
            return f"smoothing {'on' if self.settings.smoothing else 'off'} (weight {self.settings.smoothing_weight})"
        if name == "logy":
            self.action_toggle_log_y()
            return f"log-y {'on' if self.settings.log_y else 'off'}"
        if name == "gpu":
            return self._gpu_text()
        if name == "new":
            return self.start_run(" ".join(shlex.quote(a) for a in args))
        raise SlashError(f"/{name} is not handled")

    def _gpu_text(self) -> str:
        lines = [self.gpus.error] if self.gpus.error else []
        for g in self.gpus.gpus:
            lines.append(f"GPU{g.index} {g.name}: {g.utilization or 0:.0f}% util, "
                         f"{g.memory_used / 2**30:.1f}/{g.memory_total / 2**30:.1f} GiB")
        if self.usage:
            lines.append(f"selected run: CPU {self.usage.cpu_percent:.0f}%, RAM {self.usage.rss / 2**20:.0f} MiB")
        return "\n\n".join(lines) or "nothing to show"

    # ------------------------------------------------------------------ housekeeping
    def _periodic(self) -> None:
        self._launched = [ln for ln in self._launched if ln.supervisor.poll() is None]  # reap supervisors
        self.refresh_store(full_list=True)
        self.redraw("status", "list")  # elapsed time and ages move on without any file changing

