"""The twinkle-tui dashboard: run list, status, charts, log, GPU panel and chat on one screen.

The app renders a Session (twinkle_tui.commands) and forwards input to it: keys, slash commands and the palette
run the same registered commands, destructive ones after a confirmation. Workers do the I/O (watching files,
reading the store, sampling GPUs, controlling runs) and post messages; the handlers here own the state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState
from watchfiles import awatch

from twinkle_tui.agent import AgentLoop, Connection, EndpointError, History, LLMSettings, SkillLibrary, connect
from twinkle_tui.agent.loop import describe_call
from twinkle_tui.commands import REGISTRY, CommandError, Confirmation, Reply, Resources, Session, parse_slash
from twinkle_tui.commands.charts import pan, zoom_by
from twinkle_tui.commands.runner import CommandRunner, Outcome
from twinkle_tui.gpu import GpuProbe, GpuSnapshot, ProcessUsage, UsageSampler
from twinkle_tui.monitor import DEFAULT_INTERVAL, FixPipeline, FixRefused, Report, TrainingMonitor, review
from twinkle_tui.process.controller import ProcessController, RunControlError
from twinkle_tui.runs.store import NoSuchRun, RunStore, RunSummary, RunView
from twinkle_tui.ui.commands import RunCommands
from twinkle_tui.ui.messages import FilesChanged, MonitorReports, ResourcesSampled, RunsRefreshed
from twinkle_tui.ui.scheduler import RedrawScheduler
from twinkle_tui.ui.screens.confirm import ConfirmScreen
from twinkle_tui.ui.screens.help import HelpScreen
from twinkle_tui.ui.screens.metric_picker import MetricPicker
from twinkle_tui.ui.screens.new_run import NewRunScreen, find_recipes
from twinkle_tui.ui.widgets.charts import ChartGrid, MetricChart, default_metrics
from twinkle_tui.ui.widgets.chat import AgentAnswer, ChatPanel, ToolLine
from twinkle_tui.ui.widgets.gpu_panel import GpuPanel
from twinkle_tui.ui.widgets.log_view import RunLog
from twinkle_tui.ui.widgets.run_list import RunList
from twinkle_tui.ui.widgets.status_bar import RunStatusBar

log = logging.getLogger(__name__)

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLUSH_INTERVAL = 0.25  # the redraw tick
RESOURCE_INTERVAL = 2.0
LIST_INTERVAL = 5.0  # ages, and runs whose process died without a word
DATA_INTERVAL = 1.0  # streamed data redraws the screen at most once a second; keys redraw at once
READ_BUDGET = 8 * 1024 * 1024  # bytes of one run read under the store lock before the UI gets a turn
NOTICE_SECONDS = 12.0
MONITOR_MIN_GAP = 2.0  # seconds between checks triggered by file changes


def layout_classes(width: int, height: int, panels: bool | None = None) -> dict[str, bool]:
    """The stylesheet classes for a terminal size: side panels narrow as the width falls, the chat folds away below
    120 columns and the run list below 100, so the charts keep most of the width; the log gets fewer rows on short
    terminals. `panels` overrides the folding (the b key, or / for the chat)."""
    hidden = width < 100 if panels is None else not panels
    return {
        "medium": 120 <= width < 150,
        "narrow": width < 120,
        "chat-folded": panels is None and 100 <= width < 120,  # the run list stays; / brings the chat back
        "panels-hidden": hidden,
        "short": height < 32,
    }


class ChatEvents:
    """The agent's progress, rendered into one answer in the chat panel."""

    def __init__(self, answer: AgentAnswer, chat: ChatPanel) -> None:
        self.answer, self.chat = answer, chat
        self.lines: list[ToolLine] = []

    async def text(self, delta: str) -> None:
        await self.answer.text(delta)
        self.chat.follow()

    async def reasoning(self, delta: str) -> None:
        await self.answer.think(delta)

    async def tool_call(self, name: str, arguments: str) -> None:
        self.lines.append(await self.answer.tool_call(describe_call(name, arguments)))
        self.chat.follow()

    async def tool_result(self, name: str, outcome: Outcome) -> None:
        if self.lines:
            self.lines[-1].finish(outcome)


class RunFilesFilter:
    """watchfiles filter: changes inside run directories only. The app's own files (.logs, .chat, .views, the
    model cache) live under $TWINKLE_HOME too; a log line about a change must not cause another change."""

    def __init__(self, home: Path) -> None:
        self.prefixes = tuple({str(home) + os.sep, str(home.resolve()) + os.sep})

    def __call__(self, change: Any, path: str) -> bool:
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return not path[len(prefix):].startswith(".")
        return False


class TwinkleApp(App[int]):
    """The dashboard over one $TWINKLE_HOME."""

    CSS_PATH = "app.tcss"
    TITLE = "twinkle-tui"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("p", "pause", "Pause", id="pause"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("s", "stop", "Stop", id="stop"),
        Binding("k", "kill", "Kill", id="kill", show=False),
        Binding("n", "new_run", "New run", id="new_run"),
        Binding("slash", "focus_chat", "Chat", id="focus_chat", key_display="/"),
        Binding("m", "pick_metrics", "Metrics", id="pick_metrics"),
        Binding("z", "zoom(0.5)", "Zoom in", id="zoom_in"),
        Binding("x", "zoom(2.0)", "Zoom out", id="zoom_out"),
        Binding("left_square_bracket", "pan(-0.25)", "Pan left", id="pan_left", show=False, key_display="["),
        Binding("right_square_bracket", "pan(0.25)", "Pan right", id="pan_right", show=False, key_display="]"),
        Binding("0", "reset_zoom", "Reset zoom", id="reset_zoom"),
        Binding("e", "toggle_smoothing", "Smooth", id="toggle_smoothing"),
        Binding("l", "toggle_log_y", "Log-y", id="toggle_log_y"),
        Binding("d", "delete_run", "Delete run", id="delete_run", show=False),
        Binding("a", "archive_run", "Archive run", id="archive_run", show=False),
        Binding("u", "undo_fix", "Undo fix", id="undo_fix", show=False),
        Binding("b", "toggle_panels", "Panels", id="toggle_panels", show=False),
        Binding("c", "copy_run_id", "Copy id", id="copy_run_id", show=False),
        Binding("question_mark", "help", "Help", id="help", key_display="?"),
        Binding("escape", "leave_chat", "Back", id="leave_chat", show=False),
        Binding("q", "quit", "Quit", id="quit"),
    ]

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
    ) -> None:
        super().__init__()
        store = RunStore(home)
        self.recipe_dirs = recipe_dirs if recipe_dirs is not None else [Path.cwd() / "examples", REPO_EXAMPLES]
        self.session = Session(store, ProcessController(store.home, grace=grace), clock, self.recipe_dirs,
                               resources=lambda: Resources(self.gpus, self.usage))
        self.llm_settings = llm or LLMSettings(mode="none")
        self.connection: Connection | None = None
        self.agent: AgentLoop | None = None
        self.history = History(self.session.store.home / ".chat" / "history.jsonl")
        self.runner = CommandRunner(self.session, self.ask, self.apply, auto_yes)
        self.clock = clock
        self.gpu_probe = gpu_probe or GpuProbe().snapshot
        self.usage_probe = usage_probe or UsageSampler().sample
        self.watch_enabled = watch
        self.auto_yes = auto_yes
        self.summaries: tuple[RunSummary, ...] = ()
        self.gpus = GpuSnapshot(error="probing GPUs…")
        self.usage: ProcessUsage | None = None
        self.scheduler = RedrawScheduler(data_interval=data_interval)
        self.notice: tuple[str, float] | None = None
        self._requested_run = run_id
        self._start = start
        self._drawn: tuple[Any, ...] | None = None
        self._stop_watch = threading.Event()
        self._pending_runs: set[str] = set()
        self._list_stale = True
        self._refresh_lock = threading.Lock()
        self._refresh_wanted: tuple[bool, set[str]] = (False, set())
        self._refresh_running = False
        self._monitor_checked = 0.0
        self.panels_override: bool | None = None  # b: None = by width, True/False = the user's choice
        # The monitor reads the runs through a store of its own (no lock shared with drawing).
        self.monitor = TrainingMonitor(store.home, monitor_interval or DEFAULT_INTERVAL, clock)
        self.monitor_enabled = monitor_interval is not None
        self.fixes = FixPipeline(self.session.controller, fix_mode)

    @property
    def store(self) -> RunStore:
        return self.session.store

    @property
    def controller(self) -> ProcessController:
        return self.session.controller

    @property
    def selected(self) -> str | None:
        return self.session.selected

    @property
    def settings(self) -> Any:
        return self.session.settings

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
                yield Static("", id="waiting")
                yield Static("", id="legend")
                yield ChartGrid(id="charts")
                yield Static("log", classes="panel-title")
                yield RunLog(id="log")
            yield ChatPanel(self.session.complete_run, id="chat")
        yield Footer()

    def on_mount(self) -> None:
        # Kept once: while a modal is open, App.query_one would search the modal, not the dashboard.
        self.run_list = self.query_one(RunList)
        self.status_bar = self.query_one(RunStatusBar)
        self.chart_grid = self.query_one(ChartGrid)
        self.run_log = self.query_one(RunLog)
        self.gpu_panel = self.query_one(GpuPanel)
        self.chat = self.query_one(ChatPanel)
        self.waiting = self.query_one("#waiting", Static)
        self.legend = self.query_one("#legend", Static)
        self.apply_layout(self.size.width, self.size.height)
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
        self._refresh(full_list=True, run_ids=set(), inline=True)
        if self.watch_enabled:
            self.watch_home()
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.set_interval(RESOURCE_INTERVAL, self.sample_resources)
        self.set_interval(LIST_INTERVAL, self._periodic)
        if self.monitor_enabled:
            self.set_interval(self.monitor.interval, self.check_runs)
        self.sample_resources()
        self.run_worker(self._restore_chat(), group="chat", exit_on_error=False)

    def on_resize(self, event: events.Resize) -> None:
        self.apply_layout(event.size.width, event.size.height)

    def apply_layout(self, width: int, height: int) -> None:
        """Side panels shrink with the terminal and fold away below 100 columns (b brings them back), so the charts
        keep most of the width. Only the new size decides: a resize ends as a fresh start at that size would."""
        for name, wanted in layout_classes(width, height, self.panels_override).items():
            self.set_class(wanted, name)
        self._drawn = None
        self.scheduler.now("charts", "list", "status", "log")

    def on_unmount(self) -> None:
        self._stop_watch.set()
        self.session.save_settings()
        if self.connection is not None:
            self.connection.close()  # the embedded LLM server goes with the app
        servers = self.session.services.get("servers")
        if servers is not None:
            servers.stop_all()

    # ------------------------------------------------------------------ workers (I/O only; they post messages)
    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_home(self) -> None:
        home = self.store.home
        # Batches of up to 0.4 s: a run writing every step would otherwise wake us for every line.
        async for changes in awatch(home, debounce=400, step=200, stop_event=self._stop_watch,
                                    ignore_permission_denied=True, watch_filter=RunFilesFilter(home)):
            paths = [p for _, p in changes]
            self._pending_runs |= self.store.run_ids_for_paths(paths)
            if any(p.endswith("meta.json") or Path(p).parent == home for p in paths):
                self._list_stale = True
            self.post_message(FilesChanged())

    def _refresh(self, full_list: bool = False, run_ids: set[str] | None = None, inline: bool = False) -> None:
        """Ask for a read of the run list and/or runs; one reader at a time drains every request."""
        with self._refresh_lock:
            full, ids = self._refresh_wanted
            self._refresh_wanted = (full or full_list, ids | (run_ids if run_ids is not None else set()))
            if self._refresh_running:
                return
            self._refresh_running = True
        if inline and not self._read_store(budget=READ_BUDGET // 4, passes=1):
            return
        self.read_store()

    @work(thread=True, group="io", exit_on_error=False)
    def read_store(self) -> None:
        self._read_store(budget=READ_BUDGET)

    def _read_store(self, budget: int, passes: int | None = None) -> bool:
        """Drain the read requests: the run list (meta.json only) and the new data of the runs on screen, in
        bounded reads, so the UI can draw between them and a huge file never freezes the other runs. Returns
        True if work is left (only when `passes` ran out)."""
        while True:
            if passes is not None:
                if passes == 0:
                    return True
                passes -= 1
            with self._refresh_lock:
                (full, ids), self._refresh_wanted = self._refresh_wanted, (False, set())
                if not full and not ids and not self._refresh_more:
                    self._refresh_running = False
                    return False
            summaries = None
            if full:
                with self.store.lock:
                    summaries = tuple(self.store.list_runs())
                if [(s.run_id, s.status, s.last_step, s.total_steps, s.meta.get("display_name")) for s in summaries] \
                        != [(s.run_id, s.status, s.last_step, s.total_steps, s.meta.get("display_name"))
                            for s in self.summaries]:
                    self.scheduler.data("list")
            more = self._read_runs(full, ids, summaries, budget)
            self.post_message(RunsRefreshed(summaries))
            with self._refresh_lock:
                self._refresh_more = more
            if self._stop_watch.is_set():
                with self._refresh_lock:
                    self._refresh_running = False
                return False

    _refresh_more = False

    def _read_runs(self, full: bool, ids: set[str], summaries: tuple[RunSummary, ...] | None, budget: int) -> bool:
        wanted = {self.session.selected, self.session.settings.compare}
        if self.session.selected is None:
            newest = (summaries or self.summaries or (None,))[0]
            if newest is not None:  # the newest run will be selected: read it now
                wanted.add(newest.run_id)
        more = False
        for run_id in wanted - {None}:
            assert run_id is not None
            if not (full or run_id in ids or not ids or self._refresh_more):
                continue
            with self.store.lock:
                try:
                    view = self.store.view(run_id)
                    parts = view.refresh(budget)
                except (NoSuchRun, ValueError):
                    continue
            more |= view.pending
            if "metrics" in parts or "events" in parts:
                self.scheduler.data("charts", "status")
            if "meta" in parts:
                self.scheduler.data("status", "list")
            if "log" in parts:
                self.scheduler.data("log")
        return more

    @work(thread=True, exclusive=True, group="resources", exit_on_error=False)
    def sample_resources(self) -> None:
        gpus = self.gpu_probe()
        view = self.current_view()
        pid = view.meta.get("pid") if view is not None and view.status.is_active else None
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
                with self._refresh_lock:
                    self._refresh_running = False

    # ------------------------------------------------------------------ message handlers (own the state)
    @on(FilesChanged)
    def _files_changed(self) -> None:
        ids, self._pending_runs = set(self._pending_runs), set()
        if self.monitor_enabled and ids and time.monotonic() - self._monitor_checked > MONITOR_MIN_GAP:
            self._monitor_checked = time.monotonic()
            changed = {s.run_id for s in self.summaries if s.run_id in ids and s.status.is_active}
            if changed:  # a change of a running run is a reason to look now, not in 30 s
                self.check_runs(frozenset(changed | set(self.monitor.watched())))
        full, self._list_stale = self._list_stale, False
        watched = {self.session.selected, self.session.settings.compare}
        if full or ids & watched:
            self._refresh(full_list=full, run_ids=ids)

    @on(RunsRefreshed)
    def _runs_refreshed(self, message: RunsRefreshed) -> None:
        if message.summaries is not None:
            self.summaries = message.summaries
        if self.session.selected is None and self.summaries:
            self.select(self.summaries[0].run_id)
            return
        if self.session.selected is not None and self.summaries and \
                self.session.selected not in {s.run_id for s in self.summaries} and message.summaries is not None:
            gone, self.session.selected = self.session.selected, None  # deleted or archived elsewhere
            self.say(f"run {gone} is gone", error=True)
            self.select(self.summaries[0].run_id)
            return
        self.flush()

    @on(ResourcesSampled)
    def _resources_sampled(self, message: ResourcesSampled) -> None:
        self.gpus, self.usage = message.gpus, message.usage
        runs_by_pid = {s.meta["pid"]: s.run_id for s in self.summaries if s.status.is_active and s.meta.get("pid")}
        self.gpu_panel.show(self.gpus, self.usage, runs_by_pid)

    # ------------------------------------------------------------------ the monitor
    @work(thread=True, exclusive=True, group="monitor", exit_on_error=False)
    def check_runs(self, run_ids: frozenset[str] | None = None) -> None:
        reports = self.monitor.check(run_ids)
        if reports:
            self.post_message(MonitorReports(reports))

    @on(MonitorReports)
    async def _monitor_reports(self, message: MonitorReports) -> None:
        for report in message.reports:
            for finding in report.findings:
                evidence = "; ".join(finding.evidence[:3])
                await self.chat.add(f"**monitor** · `{report.snapshot.run_id}` · {finding.line()}"
                                    + (f"\n\n*evidence:* {evidence}" if evidence else ""),
                                    "monitor" if finding.level < 2 else "error")
            if self.connection is not None and self.connection.settings is not None \
                    and self.monitor.needs_review(report):
                self.review_run(report)
        self.scheduler.now("charts", "list", "status")  # findings are chart markers
        self.flush()

    @work(group="review", exit_on_error=False)
    async def review_run(self, report: Report) -> None:
        assert self.connection is not None and self.connection.settings is not None
        result = await review(self.connection.settings, report.snapshot, report.findings)
        if result is None:
            return  # logged: an unreadable reply is no decision
        run_id = report.snapshot.run_id
        if result.decision != "FIX":
            if result.decision == "WARNING":
                await self.chat.add(f"**monitor review** · `{run_id}` · {result.summary}\n\n{result.diagnosis}",
                                    "monitor")
            return
        try:
            proposal = self.fixes.propose(report.snapshot, result.script or "", result.summary, report.findings)
        except FixRefused as exc:
            await self.chat.add(f"**monitor** · `{run_id}` · a fix was proposed but not used: {exc}", "monitor")
            return
        await self.chat.add(f"**monitor** · `{run_id}` · proposes a fix: {result.summary}\n\n"
                            f"```diff\n{proposal.diff[:3000]}\n```", "monitor")
        automatic = self.fixes.mode == "auto" and proposal.automatic
        if not automatic and not await self.ask(Confirmation(f"Apply the monitor's fix to {run_id}?",
                                                             f"{result.diagnosis}\n\n{proposal.diff}", "Apply")):
            await self.chat.add(f"fix for `{run_id}` not applied", "monitor")
            return
        try:
            launched = await asyncio.to_thread(self.fixes.apply, proposal)
        except (FixRefused, RunControlError, OSError) as exc:
            await self.chat.add(f"⚠ the fix for `{run_id}` could not be applied: {exc}", "error")
            return
        if launched is not None:
            self.session.services.setdefault("launched", []).append(launched)
        await self.chat.add(f"**monitor** · `{run_id}` · fix applied" + (", relaunched from its last checkpoint"
                                                                          if launched else "") + " (u undoes it)",
                            "monitor")
        self._refresh(full_list=True, run_ids={run_id})

    def action_undo_fix(self) -> None:
        self._command("undo_fix")

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
            self.run_view_command("zoom_metrics", {"start": message.lo, "end": message.hi})
        elif message.factor is not None:
            zoom_by(self.session, message.factor, message.center)
            self.scheduler.now("charts")
            self.flush()

    @on(ChatPanel.Submitted)
    async def _chat_submitted(self, message: ChatPanel.Submitted) -> None:
        await self.chat.add(message.text, "user")
        if message.text.startswith("/"):
            try:
                name, args = parse_slash(message.text)
            except CommandError as exc:
                await self.chat.add(f"⚠ {exc}", "error")
                return
            self.run_worker(self.run_command(name, args, "chat"), group="commands", exit_on_error=False)
            return
        if self.agent is None:
            waiting = self.connection is None and self.llm_settings.mode != "none"
            await self.chat.add("The LLM is still starting; try again in a moment (slash commands work now)."
                                if waiting else "No LLM agent is connected; slash commands work: **/help**.", "reply")
            return
        self.ask_agent(message.text)

    @on(ChatPanel.Leave)
    def _chat_leave(self) -> None:
        running = [w for w in self.workers if w.group == "agent" and w.is_running]
        if running:
            for worker in running:
                worker.cancel()
            return
        self.run_list.focus()

    # ------------------------------------------------------------------ the agent
    @work(exclusive=True, group="agent-start", exit_on_error=False)
    async def start_agent(self) -> None:
        """Connect to the LLM (probe the endpoint, or start the embedded one) without blocking the first frame."""
        settings = self.llm_settings
        if settings.mode != "none":
            self.chat.set_title("chat · connecting to the LLM…")
        connection = await connect(settings, self.store.home)
        self.connection = connection
        self.session.services["llm_models"] = connection.models
        if connection.settings is not None:
            skills = SkillLibrary(self.store.home, os.environ.get("TWINKLE_SKILLS_GIT")).load()
            self.session.services["skills"] = skills
            self.agent = AgentLoop(connection.settings, self.runner, self.history, skills,
                                   tools=[n for n in sorted(REGISTRY) if n != "help"])
            self.chat.set_title(f"chat · {connection.settings.model}")
            if skills.git_url:
                self.sync_skills()
        else:
            self.chat.set_title("chat · slash commands")
        await self.chat.add(connection.notice, "error" if connection.error else "notice")

    @work(thread=True, exclusive=True, group="skills", exit_on_error=False)
    def sync_skills(self) -> None:
        skills = self.session.services.get("skills")
        if skills is not None and skills.sync_community() is None:
            skills.load()

    @work(exclusive=True, group="agent", exit_on_error=False)
    async def ask_agent(self, text: str) -> None:
        assert self.agent is not None
        answer = await self.chat.answer()
        events = ChatEvents(answer, self.chat)
        try:
            reply = await self.agent.ask(text, events)
            await answer.finish(None if reply else "the model wrote no answer; the lines above are what it did")
        except EndpointError as exc:
            await answer.finish()
            await self.chat.add(f"⚠ {exc}", "error")
        except asyncio.CancelledError:
            await answer.finish("cancelled")
            raise
        self.chat.follow()

    # ------------------------------------------------------------------ commands
    async def _restore_chat(self) -> None:
        """The conversation from the last session (kept under $TWINKLE_HOME/.chat/)."""
        shown = 0
        for m in self.history.messages[-40:]:
            role, content = m.get("role"), str(m.get("content") or "")
            if role == "user":
                await self.chat.add(content, "user")
            elif role == "assistant" and content.strip():
                await self.chat.add(content, "agent")
            else:
                continue
            shown += 1
        if shown:
            await self.chat.add(f"*(the last {shown} messages of your previous session)*", "notice")
        self.start_agent()  # after the old conversation, so its notice comes below it

    async def run_command(self, name: str, args: dict[str, Any] | None = None, origin: str = "key",
                          confirmed: bool = False) -> Reply | None:
        """Run a registered command and tell the user where the command came from."""
        outcome = await self.runner.run(name, args, confirmed)
        if outcome.refused:
            await self.tell(outcome.text.replace("not done: the user declined", "cancelled"), origin)
        else:
            await self.tell(outcome.text, origin, error=not outcome.ok)
        return outcome.reply

    def run_view_command(self, name: str, args: dict[str, Any] | None = None) -> None:
        """A view command from a key or the mouse: synchronous, errors as a notice."""
        try:
            reply = self.session.execute(name, args)
        except CommandError as exc:
            self.say(str(exc), error=True)
            return
        self.apply(reply)

    def apply(self, reply: Reply) -> None:
        before = self.session.selected
        self.session.apply(reply)
        if self.session.selected != before:
            self._selection_changed()
        if reply.redraw & {"list", "status"}:  # a run changed state: read the list and that run now
            self._refresh(full_list=True, run_ids=self._on_screen())
        self.scheduler.now(*(reply.redraw or {"charts"}))
        self.flush()

    async def ask(self, confirmation: Confirmation) -> bool:
        """Show a confirmation and wait for the answer."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def answered(yes: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(yes))

        self.push_screen(ConfirmScreen(confirmation.title, confirmation.detail, confirmation.action), answered)
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
        self.notify(first, severity="error" if error else "information", timeout=8 if error else 4)
        if error:
            self.notice = (first, time.monotonic())
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
                self.status_bar.show(view, now, self._notice_text())
            if "log" in parts:
                self.run_log.show(view)
                if self.waiting.display and "charts" not in parts and view and not view.metrics.names():
                    self._show_waiting(view)  # its latest log line says what the run is doing
            if "charts" in parts:
                self._draw_charts(view)

    def _notice_text(self) -> str | None:
        if self.notice is None:
            return None
        text, at = self.notice
        if time.monotonic() - at > NOTICE_SECONDS:
            self.notice = None
            return None
        return text

    def _draw_charts(self, view: RunView | None) -> None:
        grid = self.chart_grid
        s = self.session.settings
        if view is None:
            grid.set_metrics([])
            self._show_waiting(None)
            self.legend.display = False
            return
        names = view.metrics.names()
        self._show_waiting(view if not names else None)
        if not names:
            grid.set_metrics([])
            return
        if not s.user_chose_metrics or not set(s.metrics) & set(names):
            s.metrics = default_metrics(names)
        grid.set_metrics([m for m in s.metrics if m in names] or s.metrics)
        compare = self.compare_view()
        self.legend.display = compare is not None
        if compare is not None:
            self.legend.update(f"[cyan]━━[/] {escape(view.run_id)}   [orange1]━━[/] {escape(compare.run_id)}")
        key = (view.run_id, view.metrics.generation, len(view.events.events),
               compare.run_id if compare else None, compare.metrics.generation if compare else None,
               tuple(s.metrics), s.zoom, s.smoothing, s.smoothing_weight, s.log_y, grid.size)
        if key == self._drawn:
            return
        self._drawn = key
        grid.draw(view, s, compare)

    def _show_waiting(self, view: RunView | None) -> None:
        """Before the first metric line, say what the run is doing instead of showing empty charts."""
        self.waiting.display = view is not None
        self.chart_grid.display = view is None
        if view is None:
            return
        service = view.meta.get("service")
        if view.status.is_active:
            last = next((line for line in reversed(view.log.lines) if line.strip()
                         and not line.startswith("===== twinkle launch")), "")
            text = "waiting for the first step…"
            if isinstance(service, dict) and service.get("url"):  # a training service: it serves, it takes no steps
                sessions = service.get("sessions")
                text = (f"tinker training service at {escape(str(service['url']))}"
                        + (f" · {sessions} open session{'s' if sessions != 1 else ''}" if isinstance(sessions, int)
                           else "")
                        + "\nits training clients are runs of their own in the run list")
            text += f"\n\n[dim]{escape(last[-300:])}[/]" if last else ""
        else:
            text = f"this run logged no metrics ({view.status.value})"
        self.waiting.update(text)

    @property
    def quiescent(self) -> bool:
        """Nothing is being read and nothing waits to be drawn (tests wait for this instead of sleeping)."""
        return not self._refresh_running and self.scheduler.idle

    # ------------------------------------------------------------------ selection
    def current_view(self) -> RunView | None:
        if self.session.selected is None:
            return None
        try:
            return self.store.view(self.session.selected)
        except (NoSuchRun, ValueError):
            return None

    def compare_view(self) -> RunView | None:
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
        self._drawn = None
        self._refresh(run_ids=self._on_screen())
        self.sample_resources()
        self.scheduler.now()
        self.flush()

    # ------------------------------------------------------------------ actions (keys and palette)
    def _command(self, name: str, args: dict[str, Any] | None = None) -> None:
        self.run_worker(self.run_command(name, args, "key"), group="commands", exit_on_error=False)

    def action_pause(self) -> None:
        self._command("pause_training")

    def action_resume(self) -> None:
        self._command("resume_training")

    def action_stop(self) -> None:
        self._command("stop_training")

    def action_kill(self) -> None:
        self._command("kill_training")

    def action_delete_run(self) -> None:
        self._command("delete_run")

    def action_archive_run(self) -> None:
        self._command("archive_run")

    def action_new_run(self) -> None:
        def chosen(value: tuple[str, list[str]] | None) -> None:
            if value:  # the picker is itself the deliberate choice: no second question
                path, args = value
                self.run_worker(self.run_command("start_training", {"path": path, "args": args}, "key",
                                                 confirmed=True), group="commands", exit_on_error=False)

        self.push_screen(NewRunScreen(find_recipes(*self.recipe_dirs)), chosen)

    def action_focus_chat(self) -> None:
        if self.has_class("panels-hidden") or self.has_class("chat-folded"):
            self.panels_override = True
            self.apply_layout(self.size.width, self.size.height)
        self.chat.query_one("#chat-input", Input).focus()

    def action_leave_chat(self) -> None:
        self.run_list.focus()

    def action_pick_metrics(self) -> None:
        view = self.current_view()
        if view is None or not view.metrics.names():
            self.say("this run has no numeric metrics yet", error=True)
            return

        def picked(names: list[str] | None) -> None:
            if names:
                self.run_view_command("select_metrics", {"names": names})

        self.push_screen(MetricPicker(view.metrics.names(), self.session.settings.metrics), picked)

    def set_metrics(self, names: list[str]) -> None:
        self.run_view_command("select_metrics", {"names": names})

    def action_zoom(self, factor: float, center: float | None = None) -> None:
        zoom_by(self.session, factor, center)
        self.scheduler.now("charts")
        self.flush()

    def action_pan(self, fraction: float) -> None:
        pan(self.session, fraction)
        self.scheduler.now("charts")
        self.flush()

    def action_reset_zoom(self) -> None:
        self.run_view_command("zoom_metrics", {"reset": True})

    def action_toggle_smoothing(self) -> None:
        self.run_view_command("set_chart_options", {"toggle": "smoothing"})

    def action_toggle_log_y(self) -> None:
        self.run_view_command("set_chart_options", {"toggle": "log_y"})

    def action_help(self) -> None:
        keys = [(b.key_display or b.key, b.description, b.id or "") for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(keys))

    def action_toggle_panels(self) -> None:
        shown = not (self.has_class("panels-hidden") or self.has_class("chat-folded"))
        self.panels_override = not shown
        self.apply_layout(self.size.width, self.size.height)

    def action_copy_run_id(self) -> None:
        if self.session.selected:
            self.copy_to_clipboard(self.session.selected)
            self.say(f"copied {self.session.selected}")

    def set_compare(self, run_id: str | None) -> None:
        self._command("compare_runs", {"run_id": run_id or "none"})

    # ------------------------------------------------------------------ housekeeping
    def _periodic(self) -> None:
        launched = self.session.services.get("launched", [])
        self.session.services["launched"] = [ln for ln in launched if ln.supervisor.poll() is None]  # reap
        self._refresh(full_list=True)
        self.scheduler.data("status", "list")  # elapsed time and ages move on without any file changing
