"""The training service as one object: its sessions, training models, sampling sessions, checkpoints and futures,
the worker thread that computes, and the housekeeping thread that ends sessions whose client has gone.

The HTTP routes (routers/) only translate requests into calls on this object and its parts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import RunKind, RunMeta, RunPaths, RunStatus, process_is, read_meta, validate_run_id
from twinkle_trainer.service.catalog import ModelCatalog
from twinkle_trainer.service.checkpoints import CheckpointStore
from twinkle_trainer.service.errors import ServiceError
from twinkle_trainer.service.futures import FutureStore, Worker
from twinkle_trainer.service.memory import MemoryBudget
from twinkle_trainer.service.ordering import GAP_TIMEOUT
from twinkle_trainer.service.recipe_metrics import RecipeMetrics
from twinkle_trainer.service.runs import ServiceRun, quietly
from twinkle_trainer.service.sampler_engine import Samplers
from twinkle_trainer.service.sampling import SamplingSessions
from twinkle_trainer.service.sessions import SessionRegistry, TinkerSession
from twinkle_trainer.service.stability import StabilityRecords
from twinkle_trainer.service.training import TrainingModels

log = logging.getLogger(__name__)

HOUSEKEEPING = 1.0  # seconds between checks for ended clients and expired results
PUBLISH_EVERY = 5.0  # seconds between updates of what the service is doing, in its run's meta.json (when changed)
POLLS = ("/session_heartbeat", "/retrieve_future", "/retrieve_futures", "/telemetry", "/healthz")  # not "requests"
CLIENT_WATCH = 0.05  # seconds between looks at the client processes (for an exit status before it is reaped)
PRUNE_CHECKPOINTS = 300.0  # seconds between sweeps for expired checkpoints
SHUTDOWN_WAIT = 30.0  # seconds the worker gets to finish its current request when the service stops


class Service:
    def __init__(self, home: Path, samplers: Samplers | None = None, gap_timeout: float = GAP_TIMEOUT,
                 catalog: ModelCatalog | None = None, budget: MemoryBudget | None = None) -> None:
        self.home = home
        self.catalog = catalog or ModelCatalog()
        self.budget = budget or MemoryBudget(None)
        self.started = time.time()
        self.futures = FutureStore()
        self.worker = Worker()
        self.sessions = SessionRegistry(home)
        self.checkpoints = CheckpointStore(home)
        self.samplers = samplers or Samplers()
        self.samplers.budget = self.budget
        self.training = TrainingModels(home, self.worker, self.futures, self.checkpoints, self.catalog, gap_timeout,
                                       self.budget)
        self.records = StabilityRecords()
        self.training.records = self.records
        self.sampling = SamplingSessions(self.worker, self.futures, self.checkpoints, self.samplers, self.catalog,
                                         self.records)
        self.own_run: RunPaths | None = None
        self.requests: deque[float] = deque()  # when each request of the last minute came (polls not counted)
        self._published: tuple[int, int, int] | None = None
        self._last_publish = 0.0
        self.secret = os.urandom(32)  # signs download links; a restart invalidates them
        self.recipes: dict[str, RecipeMetrics] = {}  # session id -> its recipe's own metrics, followed
        self._stop = threading.Event()
        self._last_prune = 0.0
        self.reconcile_orphans()
        self.reaper = threading.Thread(target=self._housekeeping, name="twinkle-service-reaper", daemon=True)
        self.reaper.start()
        self.watcher = threading.Thread(target=self._watch_clients, name="twinkle-service-clients", daemon=True)
        self.watcher.start()

    # ------------------------------------------------------------------ the service's own run
    def announce(self, run: RunPaths, url: str, sampler: str) -> None:
        """The service's own run (it runs as one): its address and open sessions in meta.json, so the dashboard
        shows what it is doing instead of waiting for a first step that never comes."""
        self.own_run = run

        def change(meta: RunMeta) -> None:
            meta.service = {"url": url, "sampler": sampler, "sessions": 0, "clients": 0, "requests_per_minute": 0}

        quietly(run, change)

    def count_request(self, path: str) -> None:
        """A request came (called for each, on the event loop): polls and heartbeats are not work, not counted."""
        if not path.endswith(POLLS):
            self.requests.append(time.monotonic())

    def requests_per_minute(self) -> int:
        cutoff = time.monotonic() - 60.0
        while self.requests and self.requests[0] < cutoff:
            self.requests.popleft()
        return len(self.requests)

    def publish(self, force: bool = True) -> None:
        """What the service is doing, in its run's meta.json for the dashboard and `twinkle-tui serve`'s progress
        line: open sessions, clients (training and sampling clients of those sessions), requests per minute.
        Written when asked (force), or at most every PUBLISH_EVERY seconds when something changed."""
        if self.own_run is None:
            return
        now = time.monotonic()
        if not force and now - self._last_publish < PUBLISH_EVERY:
            return
        open_sessions = self.sessions.open_sessions()
        shown = (len(open_sessions), sum(len(s.models) + len(s.samplers) for s in open_sessions),
                 self.requests_per_minute())
        self._last_publish = now
        if shown == self._published:
            return
        self._published = shown

        def change(meta: RunMeta) -> None:
            meta.service = {**(meta.service or {}), "sessions": shown[0], "clients": shown[1],
                            "requests_per_minute": shown[2]}

        quietly(self.own_run, change)

    # ------------------------------------------------------------------ sessions
    def create_session(self, peer: tuple[str, int] | None, local: tuple[str, int] | None,
                       user_metadata: dict[str, Any] | None) -> TinkerSession:
        session = self.sessions.create(peer, local, user_metadata)
        self.publish()
        return session

    def close_session(self, s: TinkerSession, why: str, status: RunStatus | None = None) -> None:
        if not self.sessions.mark_closed(s):
            return
        log.info("session %s ended: %s", s.session_id, why)
        self.publish()
        recipe = self.recipes.pop(s.session_id, None)
        if recipe is not None:
            recipe.poll()  # the lines it wrote last
        self.training.close(self.training.pop(s.models), why, status)
        self.records.drop_session(s.session_id)

    # ------------------------------------------------------------------ runs and their ids
    def run_id_of(self, ident: str) -> str:
        """A run id from a model id (live, or recorded in a run's meta) or a run id."""
        with self.training.lock:
            if ident in self.training.models:
                return self.training.models[ident].run_id
        if ":" not in ident:
            return validate_run_id(ident)
        for root in self.home.iterdir() if self.home.is_dir() else []:
            try:
                if (read_meta(RunPaths(root)).config or {}).get("tinker_model_id") == ident:
                    return root.name
            except Exception:
                continue
        raise ServiceError(f"no training run {ident!r}", 404)

    def sign(self, *parts: object) -> str:
        """An HMAC of the parts with this service's secret (download links)."""
        return hmac.new(self.secret, "\x00".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ lifetime
    def _housekeeping(self) -> None:
        while not self._stop.wait(HOUSEKEEPING):
            try:
                self.housekeeping()
            except Exception:
                log.exception("housekeeping failed")

    def _watch_clients(self) -> None:
        """Look at every client process often, to catch the exit status of one that ends before its parent reaps
        it (a few /proc reads every CLIENT_WATCH seconds)."""
        while not self._stop.wait(CLIENT_WATCH):
            for s in self.sessions.open_sessions():
                s.watch()

    def reconcile_orphans(self) -> None:
        """Client runs left active by a service that was killed (its sessions died with it): they end now, failed,
        with why. Runs of another live service are left alone."""
        for run_id in self.checkpoints.tinker_runs():
            paths = RunPaths(self.home / run_id)
            try:
                meta = read_meta(paths)
            except Exception:
                continue
            service = meta.supervisor_pid
            if meta.kind != RunKind.SERVICE_CLIENT or not meta.status.is_active \
                    or service == os.getpid() or process_is(service, meta.supervisor_start_time):
                continue
            why = (f"the training service that served this client (pid {service}) ended without closing its "
                   "session: it was killed or crashed")
            ServiceRun(paths, owned=True).end(why, RunStatus.FAILED, why)
            log.info("run %s: %s", run_id, why)

    def follow_recipes(self) -> None:
        """Each local client's recipe metrics (a tinker-cookbook ml_log), into its first training model's run."""
        for s in self.sessions.open_sessions():
            self.follow_recipe(s)

    def follow_recipe(self, s: TinkerSession, until_found: bool = False) -> None:
        """Find (or go on reading) one session's recipe metrics. Housekeeping does it every second; a model's
        creation and each optim_step do it too while the folder is unknown (`until_found`), so a client that ends
        between two housekeeping rounds still has its folder found while it runs."""
        recipe = self.recipes.get(s.session_id)
        if recipe is None and s.client_pid and s.models:
            with self.training.lock:
                first = self.training.models.get(s.models[0])
            if first is not None:
                recipe = self.recipes.setdefault(s.session_id, RecipeMetrics(s.client_pid, first.run))
        if recipe is not None and not (until_found and recipe.path is not None):
            recipe.poll()

    def housekeeping(self) -> None:
        """End sessions whose client is gone, move request orders past requests that never came, drop results
        already read, and (every few minutes) delete expired checkpoints."""
        for s, why, status in self.sessions.ended():
            self.close_session(s, why, status)
        self.training.expire_gaps()
        self.follow_recipes()
        self.futures.prune()
        self.records.prune()
        self.publish(force=False)
        now = time.monotonic()
        if now - self._last_prune > PRUNE_CHECKPOINTS:
            self._last_prune = now
            self.checkpoints.prune_expired()

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> bool:
        """Close every session and let the worker finish what it is doing; True if it finished in time."""
        self._stop.set()
        for s in self.sessions.open_sessions():  # a client that has gone ended its run itself; others are cut short
            if s.client_alive() is False:
                self.close_session(s, "the client process exited")
            else:
                self.close_session(s, "the training service stopped", RunStatus.STOPPED)
        return self.worker.close(wait)
