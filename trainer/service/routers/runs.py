"""Training runs and their checkpoints, as the SDK's RestClient lists and deletes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import Response
from tinker import types as t

from trainer.protocol import RunPaths, RunStatus, read_meta
from trainer.service.checkpoints import StoredCheckpoint
from trainer.service.deps import ServiceDep
from trainer.service.errors import ServiceError
from trainer.service.service import Service

router = APIRouter(prefix="/api/v1", tags=["runs"])


def checkpoint_of(c: StoredCheckpoint) -> t.Checkpoint:
    info = c.info
    return t.Checkpoint(checkpoint_id=f"{c.kind}/{c.name}",
                        checkpoint_type="training" if c.kind == "weights" else "sampler",
                        time=datetime.fromtimestamp(info.created, UTC), tinker_path=c.tinker_path,
                        size_bytes=c.size_bytes, user_metadata=info.user_metadata,
                        expires_at=datetime.fromtimestamp(info.expires_at, UTC) if info.expires_at else None)


def training_run(service: Service, run_id: str) -> t.TrainingRun:
    meta = read_meta(RunPaths(service.home / run_id))
    config = meta.get("config") or {}
    lora = config.get("lora") or {}
    last = service.checkpoints.last(run_id, "weights")
    last_sampler = service.checkpoints.last(run_id, "sampler_weights")
    user = config.get("user_metadata")
    requested = time.time() if RunStatus.parse(meta.get("status")).is_active else meta.get("end_time")
    return t.TrainingRun(training_run_id=run_id, base_model=meta.get("model_id") or "?", model_owner="local",
                         is_lora=True, lora_rank=lora.get("rank"),
                         user_metadata={str(k): str(v) for k, v in user.items()} if isinstance(user, dict) else None,
                         last_request_time=datetime.fromtimestamp(requested or time.time(), UTC),
                         last_checkpoint=checkpoint_of(last) if last else None,
                         last_sampler_checkpoint=checkpoint_of(last_sampler) if last_sampler else None)


@router.get("/training_runs", response_model_exclude_none=True)
def list_training_runs(service: ServiceDep, limit: int = 20, offset: int = 0) -> t.TrainingRunsResponse:
    runs = service.checkpoints.tinker_runs()
    return t.TrainingRunsResponse(training_runs=[training_run(service, r) for r in runs[offset : offset + limit]],
                                  cursor=t.Cursor(offset=offset, limit=limit, total_count=len(runs)))


@router.get("/training_runs/{ident}", response_model_exclude_none=True)
def get_training_run(ident: str, service: ServiceDep) -> t.TrainingRun:
    run_id = service.run_id_of(ident)
    if run_id not in service.checkpoints.tinker_runs():
        raise ServiceError(f"no training run {run_id!r}", 404)
    return training_run(service, run_id)


@router.get("/training_runs/{ident}/checkpoints", response_model_exclude_none=True)
def list_checkpoints(ident: str, service: ServiceDep) -> t.CheckpointsListResponse:
    run_id = service.run_id_of(ident)
    return t.CheckpointsListResponse(checkpoints=[checkpoint_of(c) for c in service.checkpoints.of_run(run_id)])


@router.delete("/training_runs/{ident}/checkpoints/{checkpoint_id:path}")
def delete_checkpoint(ident: str, checkpoint_id: str, service: ServiceDep) -> Response:
    service.checkpoints.delete(service.run_id_of(ident), checkpoint_id)
    return Response(status_code=204)


@router.get("/checkpoints", response_model_exclude_none=True)
def list_user_checkpoints(service: ServiceDep, limit: int = 100, offset: int = 0) -> t.CheckpointsListResponse:
    found = [checkpoint_of(c) for run_id in service.checkpoints.tinker_runs() for c in service.checkpoints.of_run(run_id)]
    found.sort(key=lambda c: c.time, reverse=True)
    return t.CheckpointsListResponse(checkpoints=found[offset : offset + limit],
                                     cursor=t.Cursor(offset=offset, limit=limit, total_count=len(found)))
