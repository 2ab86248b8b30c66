"""Weights: save a training checkpoint or sampler weights, load a checkpoint (into a model, or as a new model),
and describe one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter
from tinker import types as t

from twinkle_trainer.service.deps import ServiceDep, follow_recipe_soon, untyped
from twinkle_trainer.service.errors import ServiceError
from twinkle_trainer.service.lora import LoraSpec
from twinkle_trainer.service.runs import Resumed
from twinkle_trainer.service.schemas import WeightsInfoRequest
from twinkle_trainer.service.training import TrainingModel

router = APIRouter(prefix="/api/v1", tags=["weights"])


@router.post("/save_weights", response_model_exclude_none=True)
async def save_weights(req: t.SaveWeightsRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    m = service.training.get(req.model_id)
    return untyped(service.training.save_weights(m, req.seq_id, req.path, req.ttl_seconds, req.overwrite,
                                                 req.user_metadata))


@router.post("/save_weights_for_sampler", response_model_exclude_none=True)
async def save_weights_for_sampler(req: t.SaveWeightsForSamplerRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    m = service.training.get(req.model_id)
    if req.kind != "snapshot":
        service.training.refuse(m, req.seq_id, f"sampling client kind {req.kind!r} is not supported; this service "
                                "saves snapshots")
    session = service.sessions.get(m.session_id)

    def new_sampler(model: TrainingModel, folder: Path) -> str:
        return service.sampling.create(session, None, None, folder).session_id

    return untyped(service.training.save_for_sampler(m, req.seq_id, req.path, req.ttl_seconds, req.user_metadata,
                                                     new_sampler))


@router.post("/load_weights", response_model_exclude_none=True)
async def load_weights(req: t.LoadWeightsRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    model = service.training.get(req.model_id) if req.model_id is not None and req.session_id is None else None
    try:
        stored = await asyncio.to_thread(service.checkpoints.resolve, req.path)
        if req.optimizer and stored.kind != "weights":
            raise ServiceError(f"{req.path} is a sampler checkpoint: it has no optimizer state")
    except ServiceError as exc:
        if model is None:
            raise
        service.training.refuse(model, req.seq_id, str(exc), exc.status)
    if req.session_id is not None:  # create-via-load: a new model from the checkpoint
        info = stored.info
        base = req.base_model or info.base_model
        if base != info.base_model:
            raise ServiceError(f"{req.path} was trained on {info.base_model}, not {base}")
        session = service.sessions.get(req.session_id)
        if req.model_seq_id is None:
            raise ServiceError("load_weights with session_id needs model_seq_id")
        lora = LoraSpec(**{k: v for k, v in info.lora.items() if k in LoraSpec.__dataclass_fields__})
        f = await asyncio.to_thread(service.training.create, session, req.model_seq_id, base, lora,
                                    (stored.folder, req.optimizer), req.user_metadata,
                                    Resumed(stored.run_id, stored.tinker_path, info.step))
        follow_recipe_soon(service, session.session_id)
        return untyped(f)
    if model is None:
        raise ServiceError("load_weights needs model_id (or session_id to create a model from the checkpoint)")
    return untyped(service.training.load(model, req.seq_id, req.path, stored.folder, req.optimizer))


@router.post("/save_weights_external", response_model_exclude_none=True)
async def save_weights_external(req: t.SaveWeightsExternalRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    m = service.training.get(req.model_id)
    try:
        service.checkpoints.folder(m.run_id, "external_weights", req.path)
        future = service.training.save_external(m, req.seq_id, req.path, req.ttl_seconds,
                                                req.age_encryption_recipients)
    except ServiceError as exc:
        service.training.refuse(m, req.seq_id, str(exc), exc.status)
    return untyped(future)


@router.post("/weights_info", response_model_exclude_none=True)
def weights_info(req: WeightsInfoRequest, service: ServiceDep) -> t.WeightsInfoResponse:
    info = service.checkpoints.resolve(req.tinker_path).info
    return t.WeightsInfoResponse(base_model=info.base_model, is_lora=True, lora_rank=info.lora.get("rank"),
                                 train_unembed=info.lora.get("train_unembed"), train_mlp=info.lora.get("train_mlp"),
                                 train_attn=info.lora.get("train_attn"))
