"""The service's state: sessions, training models, sampling sessions, futures and the one worker thread that runs
every computation, and the runs they write into $TWINKLE_HOME.

Requests return a future at once; the worker runs them one at a time. A model's requests run in the order of
their seq_id (the SDK numbers them from 1), whatever order they arrive in, and a request sent twice (a retry) is
answered with the first one's future instead of running again.

Each training client is a run. When its client was started as a managed run (`twinkle-tui --run client.py`), the
service finds that out from the client process's environment (its TWINKLE_RUN_ID) and writes into that run; the
dashboard's pause, resume and stop then act on the client, as with any script. Otherwise the service makes a run
whose process is the client (found from the TCP connection on this machine) and whose supervisor is the service:
pausing it pauses the client, stopping it stops the client, and when the client process ends the run ends.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from twinkle_trainer.protocol import (
    HOME_ENV,
    RUN_ID_ENV,
    CheckpointRef,
    RunKind,
    RunMeta,
    RunPaths,
    RunStatus,
    append_jsonl,
    new_run_id,
    process_is,
    process_start_time,
    read_meta,
    record_event,
    update_meta,
    validate_run_id,
)
from twinkle_trainer.service import engine, losses
from twinkle_trainer.service.wire import WireError

log = logging.getLogger(__name__)

SESSION_TIMEOUT = 180.0  # seconds without a heartbeat after which a session whose client is unknown is over
RESULT_KEEP = 600.0  # seconds a finished result stays retrievable after it was fetched (retries)
USER_ERRORS = (engine.EngineError, losses.LossError, WireError)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ServiceError(ValueError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Future:
    request_id: str
    model_id: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    json: dict[str, Any] | None = None
    proto: bytes | None = None
    error: tuple[str, str] | None = None  # (message, category: user or server)
    finished_at: float | None = None
    fetched_at: float | None = None
    on_done: Callable[[Future], None] | None = None  # a sampling session's completion queue, told once

    def resolve(self, result: dict[str, Any] | bytes) -> None:
        if isinstance(result, bytes):
            self.proto = result
        else:
            self.json = result
        self._finish()

    def fail(self, message: str, category: str = "user") -> None:
        self.error = (message, category)
        self._finish()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


class CompletionQueue:
    """The finished and failed samples of one sampling client (a session and its clone number), for the SDK's
    batched retrieve (`/api/v1/retrieve_futures`): each completion gets the next cursor; a poll returns those after
    the cursor it names, and events at or before it are dropped."""

    KEEP = 10_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.cursor = 0

    def push(self, f: Future) -> None:
        event: dict[str, Any] = {"state": "failed" if f.error else "finished", "request_id": f.request_id}
        if f.error is None:
            size = len(f.proto) if f.proto is not None else len(json.dumps(f.json or {}))
            event["response_payload_uncompressed_size"] = size
        with self.lock:
            self.cursor += 1
            self.events.append((self.cursor, event))
            del self.events[: -self.KEEP]  # a client that never polls (an older SDK) cannot grow it without bound

    def after(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            self.events = [(c, e) for c, e in self.events if c > cursor]
            return [e for _, e in self.events], max([cursor] + [c for c, _ in self.events])


@dataclass
class Session:
    session_id: str
    client_pid: int | None
    client_start: int | None
    managed_run: str | None  # the client's own run, when it was started as one
    user_metadata: dict[str, Any] | None
    last_seen: float = field(default_factory=time.monotonic)
    models: list[str] = field(default_factory=list)
    closed: bool = False

    def client_alive(self) -> bool | None:
        """True or False when the client process is known, None when only heartbeats tell."""
        if self.client_pid is None:
            return None
        return process_is(self.client_pid, self.client_start)


@dataclass
class Model:
    model_id: str  # the SDK's: SESSION:train:N
    session_id: str
    base_model: str
    lora: engine.LoraSpec
    run: ServiceRun
    engine: engine.TrainingModel | None = None
    next_seq: int = 1
    pending: dict[int, Callable[[], None]] = field(default_factory=dict)
    seen: dict[int, Future] = field(default_factory=dict)
    last_request: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run_id(self) -> str:
        """The run in $TWINKLE_HOME; tinker:// paths name it (a model id has colons, a run id may not)."""
        return self.run.paths.run_id


@dataclass
class SamplingSession:
    session_id: str
    base_model: str
    model_path: str | None
    folder: Path | None
    clients: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    queues: dict[int, CompletionQueue] = field(default_factory=dict)  # clone number -> its completions

    def queue(self, clone: int) -> CompletionQueue:
        return self.queues.setdefault(clone, CompletionQueue())


class ServiceRun:
    """A training client's run: meta.json, metrics.jsonl, events, output.log (for runs the service made)."""

    def __init__(self, paths: RunPaths, owned: bool) -> None:
        self.paths, self.owned = paths, owned

    @classmethod
    def create(cls, home: Path, base_model: str, lora: engine.LoraSpec, session: Session, parent: str | None,
               model_id: str, user_metadata: dict[str, Any] | None = None) -> ServiceRun:
        short = base_model.removeprefix("builtin:").rsplit("/", 1)[-1].split("-")[0] or "model"
        paths = RunPaths(home / new_run_id(f"tinker-{short}"))
        paths.check_not_symlink()
        paths.root.mkdir(parents=True)
        now = time.time()
        service = os.getpid()

        def change(meta: RunMeta) -> None:
            meta.run_id, meta.kind, meta.model_id = paths.run_id, RunKind.SERVICE_CLIENT, base_model
            meta.status, meta.start_time, meta.launches = RunStatus.RUNNING, now, 1
            meta.pid, meta.pid_start_time, meta.pgid = session.client_pid, session.client_start, _pgid(session.client_pid)
            meta.supervisor_pid, meta.supervisor_start_time = service, process_start_time(service)
            meta.config = {"lora": asdict(lora), "source": "tinker service", "session": session.session_id,
                           "tinker_model_id": model_id,
                           **({"parent_run": parent} if parent else {}),
                           **({"session_metadata": session.user_metadata} if session.user_metadata else {}),
                           **({"user_metadata": user_metadata} if user_metadata else {})}

        update_meta(paths, change, repair=True)
        record_event(paths, "launch", pid=session.client_pid, launch=1, source="tinker service")
        run = cls(paths, owned=True)
        run.log(f"training client of session {session.session_id}: LoRA rank {lora.rank} on {base_model}"
                + (f" (client process {session.client_pid})" if session.client_pid else ""))
        return run

    @classmethod
    def attach(cls, home: Path, run_id: str, base_model: str, lora: engine.LoraSpec, model_id: str,
               user_metadata: dict[str, Any] | None = None) -> ServiceRun:
        paths = RunPaths(home / validate_run_id(run_id))

        def change(meta: RunMeta) -> None:
            meta.model_id = base_model
            meta.config = {**(meta.config or {}), "lora": asdict(lora), "source": "tinker service",
                              "tinker_model_id": model_id,
                              **({"user_metadata": user_metadata} if user_metadata else {})}

        update_meta(paths, change, repair=True)
        return cls(paths, owned=False)

    def log(self, message: str) -> None:
        """A line in the run's log; a managed client's log is its own output, so only runs the service made."""
        if self.owned:
            stamp = time.strftime("%H:%M:%S")
            with open(self.paths.log, "a", encoding="utf-8") as f:
                f.write(f"[service {stamp}] {message}\n")

    def metrics(self, step: int, values: dict[str, float]) -> None:
        append_jsonl(self.paths.metrics, {"step": step, "ts": time.time(), **values})
        def change(meta: RunMeta) -> None:
            meta.progress.last_step = max(meta.progress.last_step, step)

        _quietly(self.paths, change)

    def checkpoint(self, step: int, folder: Path, tinker_path: str) -> None:
        def change(meta: RunMeta) -> None:
            meta.last_checkpoint = CheckpointRef(step, str(folder), external=True, tinker_path=tinker_path)

        _quietly(self.paths, change)
        record_event(self.paths, "checkpoint", step=step, path=str(folder), tinker_path=tinker_path)

    def end(self, why: str, status: RunStatus | None = None, error: str | None = None) -> None:
        """The client is gone: a run the service made ends (stopped if the dashboard asked, else completed, unless
        told otherwise). A managed client's run is its supervisor's to end."""
        if not self.owned:
            return
        now = time.time()

        def change(meta: RunMeta) -> None:
            current = meta.status
            if not current.is_active:
                return
            final = status or (RunStatus.STOPPED if current == RunStatus.STOPPING else RunStatus.COMPLETED)
            meta.status = final
            meta.end_time = now
            if error:
                meta.error = error

        _quietly(self.paths, change)
        self.log(why)
        record_event(self.paths, "finish", status=read_meta(self.paths).status.value, note=why)


def _pgid(pid: int | None) -> int | None:
    try:
        return os.getpgid(pid) if pid else None
    except OSError:
        return None


def _quietly(paths: RunPaths, change: Callable[[RunMeta], None]) -> None:
    try:
        update_meta(paths, change, repair=True)
    except Exception as exc:  # bookkeeping never fails a training request
        log.warning("cannot update %s: %s", paths.meta, exc)


def client_of(peer: tuple[str, int] | None, local: tuple[str, int] | None) -> tuple[int | None, int | None]:
    """The local process at the other end of a TCP connection (pid, start time), if it is on this machine."""
    if peer is None or local is None or peer[0] not in ("127.0.0.1", "::1", "localhost"):
        return None, None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.pid and conn.laddr and conn.raddr and conn.laddr.port == peer[1] \
                    and conn.raddr.port == local[1] and conn.pid != os.getpid():
                return conn.pid, process_start_time(conn.pid)
    except (psutil.Error, OSError) as exc:
        log.info("cannot look up the client process: %s", exc)
    return None, None


def managed_run_of(pid: int | None, home: Path) -> str | None:
    """The run id a client process was started as (twinkle-tui --run), if it was, under this home."""
    if not pid:
        return None
    try:
        env = psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return None
    run_id = env.get(RUN_ID_ENV)
    if run_id and env.get(HOME_ENV) and Path(env[HOME_ENV]).resolve() == home.resolve():
        try:
            return validate_run_id(run_id)
        except ValueError:
            return None
    return None


class Worker:
    """One thread that runs every computation in submission order. A request's failure is its future's error:
    a refusal (bad input, unsupported option) is a user error, anything else a server error with its type."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="twinkle-service-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[], dict[str, Any] | bytes], future: Future) -> None:
        self.queue.put((job, future))

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            job, future = item
            try:
                future.resolve(job())
            except USER_ERRORS as exc:
                future.fail(str(exc), "user")
            except ServiceError as exc:
                future.fail(str(exc), "user")
            except Exception as exc:
                log.error("request %s failed:\n%s", future.request_id, traceback.format_exc())
                future.fail(f"{type(exc).__name__}: {exc}".strip(), "server")


class Service:
    def __init__(self, home: Path, samplers: engine.Samplers | None = None) -> None:
        self.home = home
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, Model] = {}
        self.samplings: dict[str, SamplingSession] = {}
        self.futures: dict[str, Future] = {}
        self.lock = threading.RLock()
        self.worker = Worker()
        self.samplers = samplers or engine.Samplers()
        self.own_run: RunPaths | None = None
        self.started = time.time()
        self._stop = threading.Event()
        self.reaper = threading.Thread(target=self._reap, name="twinkle-service-reaper", daemon=True)
        self.reaper.start()

    # ------------------------------------------------------------------ futures
    def future(self, model_id: str | None = None) -> Future:
        f = Future(f"req-{uuid.uuid4().hex}", model_id)
        with self.lock:
            self.futures[f.request_id] = f
        return f

    def run_now(self, job: Callable[[], dict[str, Any] | bytes], model_id: str | None = None,
                on_done: Callable[[Future], None] | None = None) -> Future:
        f = self.future(model_id)
        f.on_done = on_done
        self.worker.submit(job, f)
        return f

    def mark_fetched(self, request_ids: list[str]) -> None:
        """Results the client has read in full: kept RESULT_KEEP seconds more for a retry, then dropped."""
        now = time.monotonic()
        with self.lock:
            for rid in request_ids:
                f = self.futures.get(rid)
                if f is not None and f.done.is_set():
                    f.fetched_at = f.fetched_at or now

    def wait(self, request_id: str, timeout: float) -> Future:
        with self.lock:
            f = self.futures.get(request_id)
        if f is None:
            raise ServiceError(f"no request {request_id!r} (it finished more than {RESULT_KEEP:.0f} s ago, or the "
                               "service restarted)", 404)
        f.done.wait(timeout)
        if f.done.is_set():
            f.fetched_at = f.fetched_at or time.monotonic()
        return f

    # ------------------------------------------------------------------ sessions
    def create_session(self, peer: tuple[str, int] | None, local: tuple[str, int] | None,
                       user_metadata: dict[str, Any] | None) -> Session:
        pid, start = client_of(peer, local)
        session = Session(f"session-{uuid.uuid4().hex[:12]}", pid, start, managed_run_of(pid, self.home),
                          user_metadata)
        with self.lock:
            self.sessions[session.session_id] = session
        log.info("session %s: client %s%s", session.session_id, pid or "remote",
                 f", managed run {session.managed_run}" if session.managed_run else "")
        self.publish()
        return session

    def announce(self, run: RunPaths, url: str, sampler: str) -> None:
        """The service's own run (it runs as one): its address and open sessions in meta.json, so the dashboard
        shows what it is doing instead of waiting for a first step that never comes."""
        self.own_run = run
        def change(meta: RunMeta) -> None:
            meta.service = {"url": url, "sampler": sampler, "sessions": 0}

        _quietly(run, change)

    def publish(self) -> None:
        if self.own_run is None:
            return
        with self.lock:
            open_sessions = sum(not s.closed for s in self.sessions.values())
        def change(meta: RunMeta) -> None:
            meta.service = {**(meta.service or {}), "sessions": open_sessions}

        _quietly(self.own_run, change)

    def session(self, session_id: str) -> Session:
        with self.lock:
            s = self.sessions.get(session_id)
        if s is None or s.closed:
            raise ServiceError(f"no open session {session_id!r}", 404)
        s.last_seen = time.monotonic()
        return s

    def heartbeat(self, session_id: str) -> None:
        self.session(session_id)

    # ------------------------------------------------------------------ training models
    def model(self, model_id: str) -> Model:
        with self.lock:
            m = self.models.get(model_id)
        if m is None:
            raise ServiceError(f"no training model {model_id!r} in this service (models live as long as their "
                               "session)", 404)
        m.last_request = time.time()
        return m

    def create_model(self, session: Session, model_seq_id: int, base_model: str, lora: engine.LoraSpec,
                     load: tuple[Path, bool] | None = None, user_metadata: dict[str, Any] | None = None) -> Future:
        """A training model; its id is the SDK's own (SESSION:train:SEQ: the SDK derives it for create-via-load)."""
        lora.check()
        self.check_base_model(base_model)
        model_id = f"{session.session_id}:train:{model_seq_id}"
        with self.lock:
            if model_id in self.models:
                raise ServiceError(f"model {model_id} exists already")
            attach = session.managed_run if session.managed_run and not any(
                self.models.get(m) and self.models[m].run_id == session.managed_run for m in session.models) else None
        if attach:
            run = ServiceRun.attach(self.home, attach, base_model, lora, model_id, user_metadata)
        else:
            run = ServiceRun.create(self.home, base_model, lora, session, session.managed_run, model_id,
                                    user_metadata)
        model = Model(model_id, session.session_id, base_model, lora, run)
        with self.lock:
            self.models[model.model_id] = model
            session.models.append(model.model_id)

        def job() -> dict[str, Any]:
            model.engine = engine.TrainingModel(base_model, lora)
            if load is not None:
                info = model.engine.load(*load)
                run.log(f"loaded {load[0]} (step {info.step}{', optimizer' if load[1] else ''})")
            run.log(f"ready: {sum(p.numel() for p in model.engine.params):,} trainable parameters")
            return {"model_id": model.model_id}

        def failed(f: Future) -> None:
            if f.error:
                run.log(f"could not create the model: {f.error[0]}")
                run.end("the model could not be created", RunStatus.FAILED, f.error[0])

        f = self.run_now(job, model.model_id)

        def watch() -> None:
            f.done.wait()
            failed(f)

        threading.Thread(target=watch, daemon=True).start()
        return f

    def check_base_model(self, base_model: str) -> None:
        from twinkle_trainer.models import ModelError, resolve_model_dir

        if not base_model.startswith("builtin:"):  # hub ids and paths resolve offline or say why not
            try:
                resolve_model_dir(base_model)
            except ModelError as exc:
                raise ServiceError(str(exc)) from None
        elif base_model not in SUPPORTED:
            raise ServiceError(f"unknown base model {base_model!r}; this service offers {', '.join(SUPPORTED)}")

    def ordered(self, model: Model, seq_id: int | None, job: Callable[[], dict[str, Any] | bytes]) -> Future:
        """Run a model's request in seq_id order; a seq_id seen before gets the earlier future (a retry)."""
        with model.lock:
            if seq_id is not None and seq_id in model.seen:
                return model.seen[seq_id]
            f = self.future(model.model_id)

            def go() -> None:
                self.worker.submit(lambda: self._with_engine(model, job), f)

            if seq_id is None:
                go()
                return f
            model.seen[seq_id] = f
            if seq_id < model.next_seq:
                f.fail(f"seq_id {seq_id} comes after {model.next_seq - 1} already ran", "user")
            elif seq_id > model.next_seq:
                model.pending[seq_id] = go
            else:
                go()
                model.next_seq += 1
                while model.next_seq in model.pending:
                    model.pending.pop(model.next_seq)()
                    model.next_seq += 1
            return f

    @staticmethod
    def _with_engine(model: Model, job: Callable[[], Any]) -> Any:
        if model.engine is None:
            raise ServiceError(f"training model {model.model_id} could not be created; create a new one")
        return job()

    # ------------------------------------------------------------------ checkpoints: tinker:// paths
    def run_id_of(self, ident: str) -> str:
        """A run id from a model id (live, or recorded in a run's meta) or a run id."""
        with self.lock:
            if ident in self.models:
                return self.models[ident].run_id
        if ":" not in ident:
            return validate_run_id(ident)
        for root in self.home.iterdir() if self.home.is_dir() else []:
            try:
                if read_meta(RunPaths(root)).config.get("tinker_model_id") == ident:
                    return root.name
            except Exception:
                continue
        raise ServiceError(f"no training run {ident!r}", 404)

    def checkpoint_folder(self, run_id: str, kind: str, name: str) -> Path:
        """kind: weights, sampler_weights, or ephemeral (sampler weights saved without a name: not listed, and
        deleted when the session ends)."""
        if not NAME.match(name):
            raise ServiceError(f"checkpoint name {name!r}: use letters, digits, '.', '_' and '-' (no slashes)")
        folder = "." + kind if kind == "ephemeral" else kind
        return RunPaths(self.home / validate_run_id(run_id)).checkpoints / "tinker" / folder / name

    def resolve_path(self, tinker_path: str) -> tuple[str, str, str, Path]:
        """tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME -> (run, kind, name, folder)."""
        if not tinker_path.startswith("tinker://"):
            raise ServiceError(f"{tinker_path!r} is not a tinker:// path")
        parts = tinker_path[len("tinker://"):].split("/")
        if len(parts) != 3 or parts[1] not in ("weights", "sampler_weights"):
            raise ServiceError(f"{tinker_path!r}: expected tinker://RUN/weights/NAME or "
                               "tinker://RUN/sampler_weights/NAME")
        try:
            folder = self.checkpoint_folder(parts[0], parts[1], parts[2])
        except ValueError as exc:
            raise ServiceError(f"{tinker_path!r}: {exc}") from None
        if not (folder / "tinker.json").is_file():
            raise ServiceError(f"no checkpoint at {tinker_path}", 404)
        info = engine.CheckpointInfo.read(folder)
        if info.expires_at is not None and info.expires_at < time.time():
            raise ServiceError(f"the checkpoint {tinker_path} expired", 404)
        return parts[0], parts[1], parts[2], folder

    def save(self, model: Model, kind: str, name: str | None, with_optimizer: bool, ttl: int | None,
             overwrite: bool, user_metadata: dict[str, str] | None) -> tuple[str, Path]:
        """On the worker: write the checkpoint, record it in the run. Returns (tinker path, folder)."""
        assert model.engine is not None
        name = name or f"step-{model.engine.step:06d}"
        if ttl is not None and not 3600 <= ttl <= 10 * 365 * 86400:
            raise ServiceError("ttl_seconds must be between 3600 (an hour) and ten years, or unset (no expiry)")
        folder = self.checkpoint_folder(model.run_id, kind, name)
        if folder.exists() and not overwrite and kind == "weights":
            raise ServiceError(f"a checkpoint named {name!r} exists; pass overwrite=True to replace it")
        model.engine.save(folder, "training" if kind == "weights" else "sampler", with_optimizer,
                          time.time() + ttl if ttl else None, user_metadata)
        path = f"tinker://{model.run_id}/{kind}/{name}"
        if kind == "weights":
            model.run.checkpoint(model.engine.step, folder, path)
        if kind != "ephemeral":
            model.run.log(f"saved {path} at step {model.engine.step}")
        return path, folder

    def checkpoints(self, run_id: str) -> list[tuple[str, str, Path, engine.CheckpointInfo]]:
        """(kind, name, folder, info) of a run's checkpoints that have not expired; expired ones are deleted."""
        import shutil

        root = RunPaths(self.home / validate_run_id(run_id)).checkpoints / "tinker"
        out = []
        for kind in ("weights", "sampler_weights"):
            folder = root / kind
            if not folder.is_dir():
                continue
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or not (child / "tinker.json").is_file():
                    continue
                try:
                    info = engine.CheckpointInfo.read(child)
                except engine.EngineError:
                    continue
                if info.expires_at is not None and info.expires_at < time.time():
                    shutil.rmtree(child, ignore_errors=True)
                    continue
                out.append((kind, child.name, child, info))
        return out

    # ------------------------------------------------------------------ sampling
    def create_sampling(self, session: Session, base_model: str | None, model_path: str | None,
                        folder: Path | None = None) -> SamplingSession:
        """A sampling session over a tinker:// path, an ephemeral folder, or the base model."""
        if model_path:
            _, _, _, folder = self.resolve_path(model_path)
        if folder is not None:
            info = engine.CheckpointInfo.read(folder)
            if base_model and base_model != info.base_model:
                raise ServiceError(f"{model_path or folder} was trained on {info.base_model}, not {base_model}")
            base_model = info.base_model
        if not base_model:
            raise ServiceError("a sampling session needs base_model or model_path")
        self.check_base_model(base_model)
        s = SamplingSession(f"sampler-{uuid.uuid4().hex[:12]}", base_model, model_path, folder)
        with self.lock:
            self.samplings[s.session_id] = s
        return s

    def sampling(self, sampling_session_id: str) -> SamplingSession:
        with self.lock:
            s = self.samplings.get(sampling_session_id)
        if s is None:
            raise ServiceError(f"no sampling session {sampling_session_id!r}", 404)
        return s

    # ------------------------------------------------------------------ lifetime
    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.reap()
            except Exception:
                log.exception("session check failed")

    def reap(self) -> None:
        """End sessions whose client is gone: its process exited, or (client unknown) no heartbeat for a while."""
        now = time.monotonic()
        with self.lock:
            sessions = [s for s in self.sessions.values() if not s.closed]
        for s in sessions:
            alive = s.client_alive()
            if alive is False:
                self.close_session(s, "the client process exited")
            elif alive is None and now - s.last_seen > SESSION_TIMEOUT:
                self.close_session(s, f"no heartbeat from the client for {SESSION_TIMEOUT:.0f} s")
        cutoff = time.monotonic() - RESULT_KEEP
        with self.lock:
            for rid in [r for r, f in self.futures.items() if f.fetched_at and f.fetched_at < cutoff]:
                del self.futures[rid]

    def close_session(self, s: Session, why: str, status: RunStatus | None = None) -> None:
        with self.lock:
            if s.closed:
                return
            s.closed = True
            models = [self.models.pop(m) for m in s.models if m in self.models]
        log.info("session %s ended: %s", s.session_id, why)
        self.publish()
        for m in models:
            m.run.end(f"session ended: {why}", status)
            eng = m.engine
            ephemeral = m.run.paths.checkpoints / "tinker" / ".ephemeral"

            def free(eng: engine.TrainingModel | None = eng, ephemeral: Path = ephemeral) -> dict[str, Any]:
                import shutil

                if eng is not None:
                    eng.close()
                shutil.rmtree(ephemeral, ignore_errors=True)  # after the samples queued before it
                return {}

            self.worker.submit(free, Future("free"))

    def shutdown(self) -> None:
        self._stop.set()
        with self.lock:
            sessions = [s for s in self.sessions.values() if not s.closed]
        for s in sessions:  # a client that has already gone ended its run itself; the others are cut short
            if s.client_alive() is False:
                self.close_session(s, "the client process exited")
            else:
                self.close_session(s, "the training service stopped", RunStatus.STOPPED)
        self.worker.close()


SUPPORTED = ("builtin:smollm2-135m-instruct", "builtin:tiny-llama", "builtin:tiny-qwen2")
