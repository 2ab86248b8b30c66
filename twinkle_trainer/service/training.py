"""Training models: one per SDK TrainingClient, each a LoRA trainer on the worker thread and a run in
$TWINKLE_HOME. Their requests run in seq_id order (ordering.RequestOrder); a refused request still uses up its
seq_id, so the client's next requests are not left waiting for it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tinker import types as t

from twinkle_trainer.protocol import RunStatus
from twinkle_trainer.service import losses, wire
from twinkle_trainer.service.catalog import ModelCatalog
from twinkle_trainer.service.checkpoints import EPHEMERAL, CheckpointStore
from twinkle_trainer.service.errors import EngineError, ServiceError
from twinkle_trainer.service.futures import Future, FutureStore, Worker
from twinkle_trainer.service.lora import LoraSpec, LoraTrainer
from twinkle_trainer.service.memory import MemoryBudget
from twinkle_trainer.service.ordering import RequestOrder
from twinkle_trainer.service.runs import Resumed, ServiceRun
from twinkle_trainer.service.sessions import TinkerSession
from twinkle_trainer.service.stability import StabilityRecords

log = logging.getLogger(__name__)


def data_digest(data: list[wire.Datum]) -> tuple[bytes, bytes]:
    """(what a request trains on: its tokens and targets; its weights), to recognise the same data sent twice."""
    h, w = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for d in data:
        h.update(np.ascontiguousarray(d.tokens, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(d.inputs.get("target_tokens", np.zeros(0)), dtype=np.int64).tobytes())
        w.update(np.ascontiguousarray(d.inputs.get("weights", np.zeros(0)), dtype=np.float32).tobytes())
    return h.digest(), w.digest()


def age_recipients(recipients: list[str]) -> list[Any]:
    """age recipients (age1... or SSH public keys), or a ServiceError that names the bad one."""
    try:
        import pyrage
    except ImportError:
        raise ServiceError("age_encryption_recipients need pyrage: pip install 'twinkle-tui[service]'") from None
    keys = []
    for r in recipients:
        try:
            keys.append(pyrage.x25519.Recipient.from_str(r) if r.startswith("age1") else
                        pyrage.ssh.Recipient.from_str(r))
        except Exception:
            raise ServiceError(f"{r[:40]!r} is not an age recipient (age1...) or an SSH public key") from None
    return keys


def sdk_json(model: Any) -> dict[str, Any]:
    """An SDK response object as the JSON the SDK reads (no nulls)."""
    return dict(model.model_dump(mode="json", exclude_none=True))


@dataclass(eq=False)
class TrainingModel:
    """A training client's model: its ids, its run, its LoRA trainer (once made) and its request order."""

    model_id: str  # the SDK's: SESSION:train:N
    session_id: str
    base_model: str
    lora: LoraSpec
    run: ServiceRun
    order: RequestOrder
    engine: LoraTrainer | None = None
    last_request: float = field(default_factory=time.time)
    forwards: list[tuple[bytes, bytes, float]] = field(default_factory=list)  # cross-entropy forwards to log

    @property
    def run_id(self) -> str:
        """The run in $TWINKLE_HOME; tinker:// paths name it (a model id has colons, a run id may not)."""
        return self.run.run_id

    def trainer(self) -> LoraTrainer:
        if self.engine is None:
            raise ServiceError(f"training model {self.model_id} could not be created; create a new one")
        return self.engine


@dataclass(frozen=True)
class Adam:
    learning_rate: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    grad_clip_norm: float


class TrainingModels:
    """The live training models by id, and what each request does to one."""

    def __init__(self, home: Path, worker: Worker, futures: FutureStore, checkpoints: CheckpointStore,
                 catalog: ModelCatalog, gap_timeout: float, budget: MemoryBudget) -> None:
        self.home, self.worker, self.futures, self.checkpoints = home, worker, futures, checkpoints
        self.catalog = catalog
        self.records: StabilityRecords | None = None
        self.gap_timeout, self.budget = gap_timeout, budget
        self.lock = threading.RLock()
        self.models: dict[str, TrainingModel] = {}

    # ------------------------------------------------------------------ lookup
    def get(self, model_id: str) -> TrainingModel:
        with self.lock:
            m = self.models.get(model_id)
        if m is None:
            raise ServiceError(f"no training model {model_id!r} in this service (models live as long as their "
                               "session)", 404)
        m.last_request = time.time()
        return m

    def all(self) -> list[TrainingModel]:
        with self.lock:
            return list(self.models.values())

    def pop(self, model_ids: list[str]) -> list[TrainingModel]:
        with self.lock:
            return [self.models.pop(m) for m in model_ids if m in self.models]

    # ------------------------------------------------------------------ ordering
    def ordered(self, model: TrainingModel, seq_id: int | None, job: Callable[[TrainingModel], Any]) -> Future:
        """Run a model's request in seq_id order; a seq_id seen before gets the earlier future (a retry)."""
        return model.order.submit(seq_id, lambda: self.futures.new(model.model_id, model.model_id),
                                  lambda f: self.worker.submit(lambda: job(model), f))

    @staticmethod
    def refuse(model: TrainingModel, seq_id: int | None, message: str, status: int = 400) -> NoReturn:
        """Refuse a request of this model: its seq_id is used up, so the requests after it still run."""
        model.order.skip(seq_id)
        raise ServiceError(message, status)

    def refuse_unread(self, model_id: str | None, seq_id: int | None) -> None:
        """A request that could not be read whole: if its model and seq_id can be told, the seq_id is used up."""
        with self.lock:
            m = self.models.get(model_id or "")
        if m is not None:
            m.order.skip(seq_id or None)

    # ------------------------------------------------------------------ creation
    def create(self, session: TinkerSession, model_seq_id: int, base_model: str, lora: LoraSpec,
               load: tuple[Path, bool] | None = None, user_metadata: dict[str, Any] | None = None,
               resumed_from: Resumed | None = None) -> Future:
        """A training model; its id is the SDK's own (SESSION:train:SEQ: the SDK derives it for create-via-load)."""
        try:
            lora.check()
        except EngineError as exc:
            raise ServiceError(str(exc)) from None
        self.catalog.check(base_model)
        model_id = f"{session.session_id}:train:{model_seq_id}"
        with self.lock:
            if model_id in self.models:
                raise ServiceError(f"model {model_id} exists already")
            attach = session.managed_run if session.managed_run and not any(
                self.models.get(m) and self.models[m].run_id == session.managed_run for m in session.models) else None
        if attach:
            run = ServiceRun.attach(self.home, attach, base_model, lora, model_id, user_metadata)
        else:
            run = ServiceRun.create(self.home, base_model, lora, session, model_id, user_metadata, resumed_from)
        model = TrainingModel(model_id, session.session_id, base_model, lora, run,
                              RequestOrder(gap_timeout=self.gap_timeout))
        with self.lock:
            self.models[model.model_id] = model
            session.models.append(model.model_id)

        def job() -> dict[str, Any]:
            model.engine = LoraTrainer(base_model, lora, self.budget)
            if load is not None:
                info = model.engine.load(*load)
                run.log(f"loaded {load[0]} (step {info.step}{', optimizer' if load[1] else ''})")
            run.log(f"ready: {sum(p.numel() for p in model.engine.params):,} trainable parameters")
            return {"model_id": model.model_id}

        def failed(f: Future) -> None:
            if f.error:
                run.log(f"could not create the model: {f.error[0]}")
                run.end("the model could not be created", RunStatus.FAILED, f.error[0])

        f = self.futures.new(model.model_id, model.model_id)
        f.on_done = failed
        self.worker.submit(job, f)
        return f

    # ------------------------------------------------------------------ training
    def forward_backward(self, model: TrainingModel, fb: wire.ForwardBackward) -> Future:
        try:
            spec = losses.check(fb.loss_fn, fb.config, fb.data)
            if spec.name in losses.NEEDS_SPANS:
                assert self.records is not None
                for i, d in enumerate(fb.data):
                    q, mask = self.records.sampler_logprobs(model.session_id, d, i)
                    d.inputs["logprobs"], d.inputs[losses.STABLE_MASK] = q, mask
        except losses.LossError as exc:
            self.refuse(model, fb.seq_id or None, str(exc))

        digest, weights = data_digest(fb.data)

        def job(m: TrainingModel) -> bytes:
            engine = m.trainer()
            outputs, metrics = engine.forward_backward(fb.data, spec, fb.forward_only)
            weight = sum(losses.weight_of(spec, d.inputs) for d in fb.data)
            if fb.forward_only and spec.name == "cross_entropy":
                # forward_backward_custom starts with this forward, then sends the same data back with the custom
                # loss's gradients as weights: only once that does not follow is it an evaluation.
                m.forwards.append((digest, weights, metrics["loss:sum"] / weight if weight > 0 else float("nan")))
            elif fb.forward_only:
                if weight > 0:
                    m.run.metrics(engine.step, {"eval loss": metrics["loss:sum"] / weight})
            elif spec.name == "cross_entropy" and any(d == digest and w != weights for d, w, _ in m.forwards):
                # the same data back with other weights: the custom loss's gradients, after its forward
                engine.totals.surrogate = True
                m.forwards = [f for f in m.forwards if f[0] != digest]
            return wire.write_forward_backward(outputs, metrics)

        return self.ordered(model, fb.seq_id or None, job)

    def optim_step(self, model: TrainingModel, seq_id: int | None, adam: Adam) -> Future:
        def job(m: TrainingModel) -> dict[str, Any]:
            engine = m.trainer()
            self.log_evaluations(m)
            metrics = engine.optim_step(adam.learning_rate, adam.beta1, adam.beta2, adam.eps, adam.weight_decay,
                                        adam.grad_clip_norm)
            m.run.metrics(engine.step, metrics)
            if "loss" in metrics and engine.step % 10 == 1:
                m.run.log(f"step {engine.step}: loss {metrics['loss']:.4f}, grad_norm {metrics['grad_norm']:.3g}")
            return sdk_json(t.OptimStepResponse(metrics={"grad_norm": metrics["grad_norm"],
                                                         "learning_rate": metrics["learning rate"]}))

        return self.ordered(model, seq_id, job)

    @staticmethod
    def log_evaluations(m: TrainingModel) -> None:
        """The forwards that no custom-loss backward followed were evaluations: the run's eval loss."""
        for _, _, value in m.forwards:
            if value == value:  # not NaN (a forward with no weight)
                m.run.metrics(m.trainer().step, {"eval loss": value})
        m.forwards = []

    # ------------------------------------------------------------------ weights
    def save(self, m: TrainingModel, kind: str, name: str | None, with_optimizer: bool, ttl: int | None,
             overwrite: bool, user_metadata: dict[str, str] | None) -> tuple[str, Path]:
        """On the worker: write the checkpoint, record it in the run. Returns (tinker path, folder)."""
        engine = m.trainer()
        name = name or f"step-{engine.step:06d}"
        if ttl is not None and not 3600 <= ttl <= 10 * 365 * 86400:
            raise ServiceError("ttl_seconds must be between 3600 (an hour) and ten years, or unset (no expiry)")
        folder = self.checkpoints.folder(m.run_id, kind, name)
        if folder.exists() and not overwrite and kind == "weights":
            raise ServiceError(f"a checkpoint named {name!r} exists; pass overwrite=True to replace it")
        engine.save(folder, {"weights": "training", "external_weights": "external"}.get(kind, "sampler"), with_optimizer,
                    time.time() + ttl if ttl else None, user_metadata)
        path = f"tinker://{m.run_id}/{kind}/{name}"
        if kind == "weights":
            m.run.checkpoint(engine.step, folder, path)
        if kind != EPHEMERAL:
            m.run.log(f"saved {path} at step {engine.step}")
        return path, folder

    def save_weights(self, model: TrainingModel, seq_id: int | None, path: str | None, ttl: int | None,
                     overwrite: bool, user_metadata: dict[str, str] | None) -> Future:
        def job(m: TrainingModel) -> dict[str, Any]:
            saved, _ = self.save(m, "weights", path, True, ttl, overwrite, user_metadata)
            return sdk_json(t.SaveWeightsResponse(path=saved, type="save_weights"))

        return self.ordered(model, seq_id, job)

    def save_for_sampler(self, model: TrainingModel, seq_id: int | None, path: str | None, ttl: int | None,
                         user_metadata: dict[str, str] | None,
                         new_sampler: Callable[[TrainingModel, Path], str]) -> Future:
        """Named: a sampler checkpoint. Unnamed: weights for a sampling client only (the SDK calls them ephemeral),
        gone with the session; `new_sampler` makes that sampling session and returns its id."""
        def job(m: TrainingModel) -> dict[str, Any]:
            if path is not None:
                saved, _ = self.save(m, "sampler_weights", path, False, ttl, True, user_metadata)
                return sdk_json(t.SaveWeightsForSamplerResponseInternal(path=saved, type="save_weights_for_sampler"))
            _, folder = self.save(m, EPHEMERAL, f"step-{m.trainer().step:06d}-{uuid.uuid4().hex[:6]}", False, None,
                                  True, None)
            return sdk_json(t.SaveWeightsForSamplerResponseInternal(sampling_session_id=new_sampler(m, folder),
                                                                    type="save_weights_for_sampler"))

        return self.ordered(model, seq_id, job)

    def save_external(self, model: TrainingModel, seq_id: int | None, name: str, ttl: int | None,
                      recipients: list[str] | None) -> Future:
        """The adapter in its external format (PEFT: adapter_model.safetensors + adapter_config.json), each file
        age-encrypted to the recipients when there are any."""
        keys = age_recipients(recipients) if recipients else None

        def job(m: TrainingModel) -> dict[str, Any]:
            saved, folder = self.save(m, "external_weights", name, False, ttl, True, None)
            if keys is not None:
                import pyrage

                for f in folder.iterdir():
                    if f.is_file() and f.name != "tinker.json":
                        (folder / f"{f.name}.age").write_bytes(pyrage.encrypt(f.read_bytes(), keys))
                        f.unlink()
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            return sdk_json(t.SaveWeightsExternalResponseInternal(path=saved, size_bytes=size,
                                                                  type="save_weights_external"))

        return self.ordered(model, seq_id, job)

    def load(self, model: TrainingModel, seq_id: int | None, tinker_path: str, folder: Path,
             with_optimizer: bool) -> Future:
        def job(m: TrainingModel) -> dict[str, Any]:
            info = m.trainer().load(folder, with_optimizer)
            m.run.log(f"loaded {tinker_path} (step {info.step}{', optimizer' if with_optimizer else ''})")
            return sdk_json(t.LoadWeightsResponse(path=tinker_path, model_id=m.model_id, type="load_weights"))

        return self.ordered(model, seq_id, job)

    # ------------------------------------------------------------------ lifetime
    def close(self, models: list[TrainingModel], why: str, status: RunStatus | None) -> None:
        """End the models' runs and free their memory on the worker (after the requests queued before)."""
        for m in models:
            m.run.end(f"session ended: {why}", status)
            engine = m.engine
            ephemeral = self.checkpoints.root(m.run_id) / f".{EPHEMERAL}"

            def free(engine: LoraTrainer | None = engine, ephemeral: Path = ephemeral) -> dict[str, Any]:
                import shutil

                if engine is not None:
                    engine.close()
                shutil.rmtree(ephemeral, ignore_errors=True)  # after the samples queued before it
                return {}

            self.worker.submit(free, Future("free"))

    def expire_gaps(self) -> None:
        """Move every model's request order past seq_ids that never arrived (refused before they could be read)."""
        for m in self.all():
            missing = m.order.expire_gaps()
            if missing:
                m.run.log(f"request{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} never arrived "
                          f"(refused before its seq_id could be read); the requests after continue")
