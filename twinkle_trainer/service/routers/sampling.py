"""Sampling: sampling sessions (create, join, describe) and sample requests."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from tinker import types as t

from twinkle_trainer.service.deps import ServiceDep, untyped
from twinkle_trainer.service.sampling import sample_of

router = APIRouter(prefix="/api/v1", tags=["sampling"])


@router.post("/create_sampling_session", response_model_exclude_none=True)
def create_sampling_session(req: t.CreateSamplingSessionRequest,
                            service: ServiceDep) -> t.CreateSamplingSessionResponse:
    s = service.sampling.create(service.sessions.get(req.session_id), req.base_model, req.model_path)
    return t.CreateSamplingSessionResponse(sampling_session_id=s.session_id)


@router.post("/join_sampling_session", response_model_exclude_none=True)
async def join_sampling_session(req: t.JoinSamplingSessionRequest,
                                service: ServiceDep) -> t.JoinSamplingSessionResponse:
    s = service.sampling.get(req.sampling_session_id)
    return t.JoinSamplingSessionResponse(client_counter=next(s.clients))


@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, service: ServiceDep) -> dict[str, Any]:
    return service.sampling.sampler_info(service.sampling.get(sampler_id))


@router.post("/asample", response_model_exclude_none=True)
async def asample(req: t.SampleRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    request = sample_of(req)  # every size checked before anything is made per sample
    if req.sampling_session_id:
        s, to_queue = service.sampling.get(req.sampling_session_id), True
    else:
        s = await asyncio.to_thread(service.sampling.create, service.sessions.any_open(), req.base_model,
                                    req.model_path)
        to_queue = False
    f = service.sampling.sample(s, request, req.seq_id, to_queue)
    return untyped(f, sample_sequence_ids=[f"{f.request_id}-{i}" for i in range(req.num_samples)])
