"""Sampling sessions (one per SDK SamplingClient: a base model, or a saved checkpoint's adapter) and sampling.

A sample request is checked whole before anything is queued, and its completion is pushed to its sampling
client's queue, which the SDK polls in batches (`/api/v1/retrieve_futures`).
"""

from __future__ import annotations

import itertools
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinker import types as t

from twinkle_trainer.service import wire
from twinkle_trainer.service.catalog import ModelCatalog
from twinkle_trainer.service.checkpoints import CheckpointStore
from twinkle_trainer.service.errors import EngineError, ServiceError
from twinkle_trainer.service.futures import CompletionQueue, Future, FutureStore, Worker
from twinkle_trainer.service.lora import CheckpointInfo
from twinkle_trainer.service.sampler_engine import SampleParams, Samplers
from twinkle_trainer.service.sessions import TinkerSession
from twinkle_trainer.service.stability import StabilityRecords

CLONE_STRIDE = 1_000_000_000  # the SDK numbers a cloned sampling client's requests from clone * this
MAX_SAMPLES = 64  # num_samples of one request
MAX_TOPK = 64  # topk_prompt_logprobs and topk_sample_logprobs


@dataclass(eq=False)
class SamplingSession:
    session_id: str
    base_model: str
    model_path: str | None
    folder: Path | None
    owner: str | None = None  # the tinker session that made it
    clients: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    queues: dict[int, CompletionQueue] = field(default_factory=dict)  # clone number -> its completions

    def queue(self, clone: int) -> CompletionQueue:
        return self.queues.setdefault(clone, CompletionQueue())


@dataclass(frozen=True)
class Sample:
    """One sample request, checked: what to sample and what to return."""

    prompt: list[int]
    num_samples: int
    params: SampleParams
    prompt_logprobs: bool
    topk_prompt: int
    topk_sample: int
    last_n: int | None
    record: bool = False  # record_stability_info: keep the samples for stable_reinforce


def sample_of(req: t.SampleRequest) -> Sample:
    """The request in the service's terms, or a ServiceError that says what it cannot do. Every size is checked
    first: nothing is allocated per requested sample or per top-k entry before that."""
    if not 1 <= req.num_samples <= MAX_SAMPLES:
        raise ServiceError(f"num_samples must be between 1 and {MAX_SAMPLES} (got {req.num_samples})")
    for name, k in (("topk_prompt_logprobs", req.topk_prompt_logprobs),
                    ("topk_sample_logprobs", req.topk_sample_logprobs)):
        if not 0 <= k <= MAX_TOPK:
            raise ServiceError(f"{name} must be between 0 and {MAX_TOPK} (got {k})")
    refused = [name for name, on in (("target_prompt_logprobs", req.target_prompt_logprobs is not None),
                                     ("prompt_alt_tokens_k", req.prompt_alt_tokens_k > 0)) if on]
    if refused:
        raise ServiceError(f"{', '.join(refused)} not supported by this service")
    prompt: list[int] = []
    for chunk in req.prompt.chunks:
        if getattr(chunk, "type", "encoded_text") != "encoded_text":
            raise ServiceError(f"{chunk.type} prompt chunks are not supported (text tokens only)")
        prompt += list(chunk.tokens)  # type: ignore[union-attr]
    last_n = req.prompt_logprobs_last_n
    if last_n is not None and not 1 <= last_n <= len(prompt) - 1:
        raise ServiceError("prompt_logprobs_last_n must be between 1 and len(prompt) - 1")
    sp = req.sampling_params
    stop: str | list[str] | list[int] | None
    if sp.stop is None or isinstance(sp.stop, str):
        stop = sp.stop
    elif all(isinstance(s, int) for s in sp.stop):
        stop = [int(s) for s in sp.stop]
    else:
        stop = [str(s) for s in sp.stop]
    params = SampleParams(sp.max_tokens, sp.seed, stop,
                          float(sp.temperature), int(sp.top_k), float(sp.top_p))
    try:
        params.check()
    except EngineError as exc:
        raise ServiceError(str(exc)) from None
    return Sample(prompt, req.num_samples, params, bool(req.prompt_logprobs), req.topk_prompt_logprobs,
                  req.topk_sample_logprobs, last_n, bool(req.record_stability_info))


class SamplingSessions:
    """The sampling sessions by id, and sampling on the worker."""

    def __init__(self, worker: Worker, futures: FutureStore, checkpoints: CheckpointStore, samplers: Samplers,
                 catalog: ModelCatalog, records: StabilityRecords) -> None:
        self.worker, self.futures, self.checkpoints, self.samplers = worker, futures, checkpoints, samplers
        self.catalog, self.records = catalog, records
        self.lock = threading.Lock()
        self.sessions: dict[str, SamplingSession] = {}

    def create(self, session: TinkerSession, base_model: str | None, model_path: str | None,
               folder: Path | None = None) -> SamplingSession:
        """A sampling session over a tinker:// path, an ephemeral folder, or the base model."""
        if model_path:
            folder = self.checkpoints.resolve(model_path).folder
        if folder is not None:
            try:
                info = CheckpointInfo.read(folder)
            except EngineError as exc:
                raise ServiceError(str(exc)) from None
            if base_model and base_model != info.base_model:
                raise ServiceError(f"{model_path or folder} was trained on {info.base_model}, not {base_model}")
            base_model = info.base_model
        if not base_model:
            raise ServiceError("a sampling session needs base_model or model_path")
        self.catalog.check(base_model)
        s = SamplingSession(f"sampler-{uuid.uuid4().hex[:12]}", base_model, model_path, folder,
                            session.session_id)
        with self.lock:
            self.sessions[s.session_id] = s
        session.samplers.append(s.session_id)
        return s

    def get(self, sampling_session_id: str) -> SamplingSession:
        with self.lock:
            s = self.sessions.get(sampling_session_id)
        if s is None:
            raise ServiceError(f"no sampling session {sampling_session_id!r}", 404)
        return s

    def of_session(self, session_id: str) -> list[str]:
        with self.lock:
            return [k for k, v in self.sessions.items() if v.owner == session_id]

    def sample(self, s: SamplingSession, request: Sample, seq_id: int | None, to_queue: bool) -> Future:
        """Queue the sample; its completion goes to the sampling client's queue when `to_queue`."""
        f = self.futures.new(s.session_id)
        f.cancellable = True
        if to_queue:
            f.on_done = s.queue((seq_id or 0) // CLONE_STRIDE).push

        def job() -> bytes:
            r = self.samplers.sample(s.base_model, s.folder, request.prompt, request.num_samples, request.params,
                                     request.prompt_logprobs, request.topk_prompt, request.topk_sample,
                                     request.last_n)
            if request.record and s.owner is not None:
                for i, seq in enumerate(r.sequences):
                    self.records.record(s.owner, f"{f.request_id}-{i}", seq.tokens, seq.logprobs or [])
            return wire.write_sample(r.sequences, r.prompt_logprobs, r.topk_prompt)

        self.worker.submit(job, f)
        return f

    def sampler_info(self, s: SamplingSession) -> dict[str, Any]:
        return {"sampler_id": s.session_id, "base_model": s.base_model, "model_path": s.model_path}
