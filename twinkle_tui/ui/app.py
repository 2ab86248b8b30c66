"""The twinkle-tui dashboard: run list, status, charts, log, GPU panel and chat on one screen.

The app renders a Session (twinkle_tui.commands) and forwards input to it: keys, slash commands and the palette
run the same registered commands, destructive ones after a confirmation. Workers do the I/O (watching files,
reading the store, sampling GPUs, controlling runs) and post messages; the handlers here own the state. Beside it:
ui.feed (watching and reading the runs), ui.agent_chat (the LLM behind the chat), ui.monitoring (the monitor's
findings and fixes), ui.layout (classes by size).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState

from twinkle_tui.agent import LLMSettings
from twinkle_tui.commands import CommandError, CommandRunner, Confirmation, Reply, Resources, Session, execute
from twinkle_tui.commands.chart_commands import shown_metrics
from twinkle_tui.gpu import GpuProbe, GpuSnapshot, ProcessUsage, UsageSampler
from twinkle_tui.monitor import DEFAULT_INTERVAL
from twinkle_tui.research import commands as _research_commands  # noqa: F401  (registers start_research, /research)
from twinkle_tui.runs.store import NoSuchRun, RunCache, RunStore, RunSummary
from twinkle_tui.ui.agent_chat import AgentChat
from twinkle_tui.ui.feed import StoreReader
from twinkle_tui.ui.keys import DASHBOARD_ACTIONS, KEYMAP_FILE, KEYS, load_keymap
from twinkle_tui.ui.layout import layout_classes
from twinkle_tui.ui.messages import FilesChanged, MonitorReports, ResourcesSampled, RunsRefreshed
from twinkle_tui.ui.monitoring import DashboardMonitor
from twinkle_tui.ui.palette import RunCommands
from twinkle_tui.ui.scheduler import RedrawScheduler
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.screens.help import HelpScreen
from twinkle_tui.ui.screens.metric_picker import MetricPicker
from twinkle_tui.ui.screens.new_run import NewRunScreen, find_recipes
from twinkle_tui.ui.screens.research import ResearchScreen, research_screen
from twinkle_tui.ui.widgets.chart_area import ChartArea
from twinkle_tui.ui.widgets.charts import MetricChart
from twinkle_tui.ui.widgets.chat import ChatPanel
from twinkle_tui.ui.widgets.gpu_panel import GpuPanel
from twinkle_tui.ui.widgets.log_view import RunLog
from twinkle_tui.ui.widgets.run_list import RunFilter, RunList, RunsPanel
from twinkle_tui.ui.widgets.status_bar import RunStatusBar

log = logging.getLogger(__name__)

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLUSH_INTERVAL = 0.25  # the redraw tick
RESOURCE_INTERVAL = 2.0
LIST_INTERVAL = 5.0  # ages, and runs whose process died without a word
DATA_INTERVAL = 1.0  # streamed data redraws the screen at most once a second; keys redraw at once
READ_BUDGET = 8 * 1024 * 1024  # bytes of one run read under the store lock before the UI gets a turn


class TwinkleApp(App[int]):
    """The dashboard over one $TWINKLE_HOME."""

    CSS_PATH = "app.tcss"
    TITLE = "twinkle-tui"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = KEYS

    def __init__(
        self,
        home: str | Path | None = None,
        run_id: str | None = None,
        llm: LLMSettings | None = None,
        grace: float = 30.0,
        clock: Callable[[], float] = time.time,
        gpu_probe: Callable[[], GpuSnapshot] | None = None,
        usage_probe: Callable[..., ProcessUsage | None] | None = None,
        watch: bool = True,
        recipe_dirs: list[Path] | None = None,
        start: tuple[str, list[str]] | None = None,
        data_interval: float = DATA_INTERVAL,
        auto_yes: bool = False,
        monitor_interval: float | None = DEFAULT_INTERVAL,
        fix_mode: str = "ask",
        store: RunStore | None = None,
    ) -> None:
        super().__init__()
        self.recipe_dirs = recipe_dirs if recipe_dirs is not None else [Path.cwd() / "examples", REPO_EXAMPLES]
        # A store given is one already reading the first run (RunStore.prefetch, as twinkle-tui starts it).
        self.session = Session.open(home, grace, clock, self.recipe_dirs,
                                    resources=lambda: Resources(self.gpus, self.usage), store=store)
        self.runner = CommandRunner(self.session, self.confirm, self.apply, auto_yes)
        self.clock = clock
        self.gpu_probe = gpu_probe or GpuProbe().snapshot
        self.usage_probe = usage_probe or UsageSampler().sample
        self.watch_enabled = watch
        self.auto_yes = auto_yes
        self.summaries: tuple[RunSummary, ...] = ()
        self.gpus = GpuSnapshot(error="probing GPUs…")
        self.usage: ProcessUsage | None = None
        self.scheduler = RedrawScheduler(data_interval=data_interval)
        self._requested_run = run_id
        self._start = start
        self.panels_override: bool | None = None  # b: None = by width, True/False = the user's choice
        self._override_width = 0  # the width the user made that choice at
        self._keymap: dict[str, str] = {}  # the user's remapped keys (keymap.toml), by binding id
        self.reader = StoreReader(self.session, self.scheduler, self.post_message, lambda: self.summaries)
        self.agent_chat = AgentChat(self, self.runner, lambda: self.chat, llm or LLMSettings(mode="none"),
                                    lambda name, args: self.run_command(name, args, "chat"))
        self.session.services.llm_settings = llm  # start_research hands it to the loop it starts
        self.monitoring = DashboardMonitor(self, self.runner, lambda: self.chat, lambda: self.agent_chat.llm,
                                           monitor_interval, fix_mode, clock)

    @property
    def store(self) -> RunStore:
        return self.session.store

    @property
    def selected(self) -> str | None:
        return self.session.selected

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield RunsPanel()
                yield Static("resources", classes="panel-title")
                yield GpuPanel(id="gpu")
            with Vertical(id="center"):
                yield RunStatusBar(id="status")
                yield ChartArea(id="chart-area")
                yield Static("log", classes="panel-title")
                yield RunLog(id="log")
            yield ChatPanel(self.session.complete_run, id="chat")
        yield Footer()

    def on_mount(self) -> None:
        # Kept once: while a modal is open, App.query_one would search the modal, not the dashboard.
        self.run_list = self.query_one(RunList)
        self.run_filter = self.query_one(RunFilter)
        self.status_bar = self.query_one(RunStatusBar)
        self.chart_area = self.query_one(ChartArea)
        self.chart_grid = self.chart_area.grid
        self.run_log = self.query_one(RunLog)
        self.gpu_panel = self.query_one(GpuPanel)
        self.chat = self.query_one(ChatPanel)
        self.waiting = self.chart_area.waiting
        self.apply_layout(self.size.width, self.size.height)
        keymap, problem = load_keymap(self.store.home)
        self._keymap = keymap
        if keymap:
            self.set_keymap(keymap)
        if problem:
            self.say(problem, error=True)
        self.run_list.focus()
        if self._requested_run:
            try:
                self.session.select(self._requested_run)
            except CommandError as exc:
                self.say(f"{exc}; showing the newest run instead", error=True)
        if self._start:
            path, args = self._start
            self.run_worker(self.run_command("start_training", {"path": path, "args": args}, "key", confirmed=True),
                            group="commands", exit_on_error=False)
        # A small first read in the main thread gives the first full frame sooner than a reader thread would
        # during Textual's own start-up; a large one goes to the worker and streams in.
        self.refresh_runs(full_list=True, run_ids=set(), inline=True)
        if self.watch_enabled:
            self.watch_home()
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.set_interval(RESOURCE_INTERVAL, self.sample_resources)
        self.set_interval(LIST_INTERVAL, self._periodic)
        if self.monitoring.enabled:
            self.set_interval(self.monitoring.monitor.interval, self.monitoring.check)
        self.sample_resources()
        self.run_worker(self.agent_chat.restore(), group="chat", exit_on_error=False)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._override_width:
            self.panels_override = None  # b or / chose for the old width; the new width decides as a fresh start
        self.apply_layout(event.size.width, event.size.height)

    def apply_layout(self, width: int, height: int) -> None:
        """Side panels shrink with the terminal and fold away below 100 columns (b brings them back), so the charts
        keep most of the width. Only the new size decides: a resize ends as a fresh start at that size would."""
        for name, wanted in layout_classes(width, height, self.panels_override).items():
            self.set_class(wanted, name)
        if getattr(self, "chart_area", None) is not None:  # a resize can come before on_mount
            self.chart_area.forget()
        self.scheduler.now("charts", "list", "status", "log")

    def on_unmount(self) -> None:
        self.reader.stop.set()
        self.session.save_settings()
        self.agent_chat.close()
        self.session.services.servers.stop_all()

    # ------------------------------------------------------------------ workers (I/O only; they post messages)
    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_home(self) -> None:
        await self.reader.watch()

    def refresh_runs(self, full_list: bool = False, run_ids: set[str] | None = None, inline: bool = False) -> None:
        """Ask for a read of the run list and/or runs; one reader at a time drains every request."""
        if not self.reader.request(full_list, run_ids):
            return
        if inline and not self.reader.drain(budget=READ_BUDGET // 4, passes=1):
            return
        self.read_store()

    @work(thread=True, group="io", exit_on_error=False)
    def read_store(self) -> None:
        self.reader.drain(budget=READ_BUDGET)

    @work(thread=True, exclusive=True, group="resources", exit_on_error=False)
    def sample_resources(self) -> None:
        gpus = self.gpu_probe()
        view = self.current_view()
        pid = view.meta.pid if view is not None and view.status.is_active else None
        try:
            usage = self.usage_probe(pid, gpus)
        except TypeError:
            usage = self.usage_probe(pid)  # a probe that takes only the pid
        self.post_message(ResourcesSampled(gpus, usage))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that failed is logged with its traceback and named in the status bar, never silent."""
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            log.error("worker %s failed", event.worker.name, exc_info=error)
            self.say(f"internal error in {event.worker.name or 'a worker'}: {type(error).__name__}: {error} "
                     "(details in the log)", error=True)
            if event.worker.group == "io":
                self.reader.failed()

    # ------------------------------------------------------------------ message handlers (own the state)
    @on(FilesChanged)
    def _files_changed(self) -> None:
        ids, self.reader.pending_runs = set(self.reader.pending_runs), set()
        self.monitoring.files_changed(ids, self.summaries)
        full, self.reader.list_stale = self.reader.list_stale, False
        if full or ids & self._on_screen():
            self.refresh_runs(full_list=full, run_ids=ids)

    @on(RunsRefreshed)
    def _runs_refreshed(self, message: RunsRefreshed) -> None:
        if message.summaries is not None:
            self.summaries = message.summaries
        if self.session.selected is None and self.summaries:
            self.select(self.summaries[0].run_id)
            return
        if message.summaries is not None and self.session.selected is not None and self.summaries and \
                self.session.selected not in {s.run_id for s in self.summaries}:
            gone = self.session.selected  # deleted or archived elsewhere
            self.session.clear_selection()
            self.say(f"run {gone} is gone", error=True)
            self.select(self.summaries[0].run_id)
            return
        self.flush()

    @on(ResourcesSampled)
    def _resources_sampled(self, message: ResourcesSampled) -> None:
        self.gpus, self.usage = message.gpus, message.usage
        runs_by_pid = {s.meta.pid: s.run_id for s in self.summaries if s.status.is_active and s.meta.pid}
        self.gpu_panel.show(self.gpus, self.usage, runs_by_pid)

    @on(MonitorReports)
    async def _monitor_reports(self, message: MonitorReports) -> None:
        await self.monitoring.show(message.reports)

    @on(RunStatusBar.Resized)
    def _status_resized(self) -> None:
        self.scheduler.now("status")
        self.flush()

    @on(RunList.Selected)
    def _run_selected(self, message: RunList.Selected) -> None:
        if message.run_id != self.session.selected:
            self.select(message.run_id)

    @on(MetricChart.ZoomRequest)
    def _zoom_request(self, message: MetricChart.ZoomRequest) -> None:
        if message.lo is not None and message.hi is not None:
            self.action_view_command("zoom_metrics", {"start": message.lo, "end": message.hi})
        elif message.factor is not None:
            args: dict[str, Any] = {"factor": message.factor}
            if message.center is not None:
                args["center"] = message.center
            self.action_view_command("zoom_metrics", args)

    @on(ChatPanel.Submitted)
    async def _chat_submitted(self, message: ChatPanel.Submitted) -> None:
        await self.agent_chat.submitted(message.text)

    @on(ChatPanel.Leave)
    def _chat_leave(self) -> None:
        if not self.agent_chat.cancel():  # Esc cancels an answer being written, else leaves the chat
            self.run_list.focus()

    # ------------------------------------------------------------------ commands
    async def run_command(self, name: str, args: dict[str, Any] | None = None, origin: str = "key",
                          confirmed: bool = False) -> Reply | None:
        """Run a registered command and tell the user where the command came from."""
        outcome = await self.runner.run(name, args, confirmed)
        if outcome.refused:
            await self.tell(outcome.text.replace("not done: the user declined", "cancelled"), origin)
        else:
            await self.tell(outcome.text, origin, error=not outcome.ok)
        return outcome.reply

    def action_view_command(self, name: str, args: dict[str, Any] | None = None) -> None:
        """A view command (zoom, pan, chart options) from a key, the palette or the mouse: synchronous, errors as a
        notice."""
        try:
            reply = execute(self.session, name, args)
        except CommandError as exc:
            self.say(str(exc), error=True)
            return
        self.apply(reply)

    def apply(self, reply: Reply) -> None:
        if isinstance(reply.data, dict) and reply.data.get("open_research"):
            self.action_open_research(str(reply.data["open_research"]))
        before = self.session.selected
        self.session.apply(reply)
        if self.session.selected != before:
            self._selection_changed()
        if reply.redraw & {"list", "status"}:  # a run changed state: read the list and that run now
            self.refresh_runs(full_list=True, run_ids=self._on_screen())
        self.scheduler.now(*(reply.redraw or {"charts"}))
        self.flush()

    async def confirm(self, confirmation: Confirmation) -> bool:
        """Show a confirmation and wait for the answer."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def answered(yes: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(yes))

        self.push_screen(ConfirmScreen(confirmation.title, confirmation.detail, confirmation.action,
                                       confirmation.code), answered)
        return await answer

    async def tell(self, text: str, origin: str, error: bool = False) -> None:
        """A reply goes back where the command came from: the chat log for chat commands, a notice otherwise."""
        if origin == "chat":
            await self.chat.add(f"⚠ {text}" if error else text, "error" if error else "reply")
        else:
            self.say(text, error=error)

    def say(self, text: str, error: bool = False) -> None:
        """A short notice (a toast); errors also stay in the status bar for a while."""
        first = text.splitlines()[0] if text else ""
        first = re.sub(r"`([^`]*)`", r"\1", first).replace("**", "")  # a toast shows text, not Markdown
        self.notify(first, severity="error" if error else "information", timeout=8 if error else 4)
        if error:
            self.status_bar.hold_notice(first)
            self.scheduler.now("status")

    # ------------------------------------------------------------------ drawing
    def flush(self) -> None:
        """Draw what is due (keys at once, streamed data at most once per data interval)."""
        parts = self.scheduler.take()
        if not parts:
            return
        now = self.clock()
        with self.store.lock:
            view = self.current_view()
            if "list" in parts:
                self.run_list.show(list(self.summaries), self.session.selected, now)
            if "status" in parts:
                self.status_bar.show(view, now)
            if "log" in parts:
                self.run_log.show(view)
                if self.chart_area.waiting_shown and "charts" not in parts and view and not view.metrics.names():
                    self.chart_area.show_waiting(view)  # its latest log line says what the run is doing
            if "charts" in parts:
                self.chart_area.show(view, self.session.settings, self.compare_view())

    # ------------------------------------------------------------------ selection
    def current_view(self) -> RunCache | None:
        if self.session.selected is None:
            return None
        try:
            return self.store.view(self.session.selected)
        except (NoSuchRun, ValueError):
            return None

    def compare_view(self) -> RunCache | None:
        if not self.session.settings.compare:
            return None
        try:
            return self.store.view(self.session.settings.compare)
        except (NoSuchRun, ValueError):
            return None

    def select(self, run_id: str) -> None:
        try:
            self.session.select(run_id)
        except CommandError as exc:
            self.say(str(exc), error=True)
            return
        self._selection_changed()

    def _on_screen(self) -> set[str]:
        return {r for r in (self.session.selected, self.session.settings.compare) if r is not None}

    def _selection_changed(self) -> None:
        self.chart_area.forget()
        self.refresh_runs(run_ids=self._on_screen(), inline=True)  # the run's first bytes in this very frame
        self.sample_resources()
        self.scheduler.now()
        self.flush()

    # ------------------------------------------------------------------ actions (keys and palette)
    def action_command(self, name: str, args: dict[str, Any] | None = None) -> None:
        """A key's command (p, r, s, k, d, a, u and the palette): run as the chat and the agent would run it."""
        self.run_worker(self.run_command(name, args, "key"), group="commands", exit_on_error=False)

    def action_new_run(self) -> None:
        def chosen(value: tuple[str, list[str]] | None) -> None:
            if value:  # the picker is itself the deliberate choice: no second question
                path, args = value
                self.run_worker(self.run_command("start_training", {"path": path, "args": args}, "key",
                                                 confirmed=True), group="commands", exit_on_error=False)

        self.push_screen(NewRunScreen(find_recipes(*self.recipe_dirs)), chosen)

    def action_focus_chat(self) -> None:
        if self.has_class("panels-hidden") or self.has_class("chat-folded"):
            self.panels_override, self._override_width = True, self.size.width
            self.apply_layout(self.size.width, self.size.height)
        self.chat.query_one("#chat-input", Input).focus()

    def action_filter_runs(self) -> None:
        if self.has_class("panels-hidden"):
            self.panels_override = True
            self.apply_layout(self.size.width, self.size.height)
        self.run_filter.open()

    def action_leave_chat(self) -> None:
        self.run_list.focus()

    def action_pick_metrics(self) -> None:
        view = self.current_view()
        if view is None or not view.metrics.names():
            self.say("this run has no numeric metrics yet", error=True)
            return

        def picked(names: list[str] | None) -> None:
            if names:
                self.action_view_command("select_metrics", {"names": names})

        names = view.metrics.names()
        self.push_screen(MetricPicker(names, shown_metrics(self.session.settings, names)), picked)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The dashboard's keys do nothing over the research view (off its footer too): `r` there resumed a run
        that nobody could see."""
        return not (action in DASHBOARD_ACTIONS and isinstance(self.screen, ResearchScreen))

    def action_help(self) -> None:
        remapped = self._keymap
        keys = [(remapped.get(b.id or "", b.key_display or b.key), b.description, b.id or "")
                for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(keys, str(self.store.home / KEYMAP_FILE)))

    def action_toggle_panels(self) -> None:
        shown = not (self.has_class("panels-hidden") or self.has_class("chat-folded"))
        self.panels_override, self._override_width = not shown, self.size.width
        self.apply_layout(self.size.width, self.size.height)

    def action_copy_run_id(self) -> None:
        if self.session.selected:
            self.copy_to_clipboard(self.session.selected)
            self.say(f"copied {self.session.selected}")

    def action_open_research(self, name: str | None = None) -> None:
        """The research view of `name`, or of the newest research (twinkle_tui.ui.screens.research)."""
        screen = research_screen(name, self.store, self.screen, lambda action, research: self.run_command(
            "control_research", {"action": action, "name": research}, "key"))
        if screen is None:
            self.say("no research yet: /research PROGRAM.md starts one", error=True)
        elif screen is not self.screen:
            self.push_screen(screen)

    def set_compare(self, run_id: str | None) -> None:
        self.action_command("compare_runs", {"run_id": run_id or "none"})

    # ------------------------------------------------------------------ housekeeping
    def _periodic(self) -> None:
        self.session.services.reap()
        self.refresh_runs(full_list=True)
        self.scheduler.data("status", "list")  # elapsed time and ages move on without any file changing
