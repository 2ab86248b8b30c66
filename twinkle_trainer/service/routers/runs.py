"""Training runs and their checkpoints, as the SDK's RestClient lists and deletes them."""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from tinker import types as t

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_trainer.service.checkpoints import TYPES, StoredCheckpoint
from twinkle_trainer.service.deps import ServiceDep
from twinkle_trainer.service.errors import ServiceError
from twinkle_trainer.service.schemas import TtlRequest
from twinkle_trainer.service.service import Service

router = APIRouter(prefix="/api/v1", tags=["runs"])

URL_LIFETIME = 3600


def checkpoint_of(c: StoredCheckpoint) -> t.Checkpoint:
    info = c.info
    return t.Checkpoint(checkpoint_id=f"{c.kind}/{c.name}",
                        checkpoint_type=TYPES[c.kind],  # type: ignore[arg-type]
                        time=datetime.fromtimestamp(info.created, UTC), tinker_path=c.tinker_path,
                        size_bytes=c.size_bytes, user_metadata=info.user_metadata,
                        expires_at=datetime.fromtimestamp(info.expires_at, UTC) if info.expires_at else None)


def training_run(service: Service, run_id: str) -> t.TrainingRun:
    meta = read_meta(RunPaths(service.home / run_id))
    config = meta.config or {}
    lora = config.get("lora") or {}
    last = service.checkpoints.last(run_id, "weights")
    last_sampler = service.checkpoints.last(run_id, "sampler_weights")
    user = config.get("user_metadata")
    requested = time.time() if meta.status.is_active else meta.end_time
    return t.TrainingRun(training_run_id=run_id, base_model=meta.model_id or "?", model_owner="local",
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


@router.put("/training_runs/{ident}/checkpoints/{checkpoint_id:path}/ttl")
def set_ttl(ident: str, checkpoint_id: str, req: TtlRequest, service: ServiceDep) -> dict[str, Any]:
    service.checkpoints.set_ttl(service.checkpoints.resolve(f"tinker://{service.run_id_of(ident)}/{checkpoint_id}"),
                                req.ttl_seconds)
    return {}


@router.get("/training_runs/{ident}/checkpoints/{checkpoint_id:path}/external_weights_urls",
            response_model_exclude_none=True)
def external_weights_urls(ident: str, checkpoint_id: str, request: Request,
                          service: ServiceDep) -> t.ExternalWeightsUrlsResponse:
    """One signed URL per file of an external weights checkpoint, good for URL_LIFETIME seconds (the SDK and the
    cookbook's weights.download fetch them without the API key, as from a storage bucket)."""
    c = service.checkpoints.resolve(f"tinker://{service.run_id_of(ident)}/{checkpoint_id}")
    if c.kind != "external_weights":
        raise ServiceError(f"{c.tinker_path} is not an external weights checkpoint (save_weights_external)")
    expires = int(time.time() + URL_LIFETIME)
    base = str(request.base_url).rstrip("/")
    urls = {name: f"{base}/api/v1/files/{c.run_id}/{c.kind}/{c.name}/{name}?expires={expires}&signature="
                  f"{service.sign(c.run_id, c.kind, c.name, name, expires)}" for name in c.files()}
    return t.ExternalWeightsUrlsResponse(urls=urls, expires=datetime.fromtimestamp(expires, UTC))


@router.get("/files/{run_id}/{kind}/{name}/{filename}")
def signed_file(run_id: str, kind: str, name: str, filename: str, expires: int, signature: str,
                service: ServiceDep) -> FileResponse:
    """A file of an external weights checkpoint, to whoever holds a signed URL that has not expired."""
    if expires < time.time() or not hmac.compare_digest(signature, service.sign(run_id, kind, name, filename,
                                                                                 expires)):
        raise ServiceError("this download link is not valid (expired, or not signed by this service)", 403)
    c = service.checkpoints.resolve(f"tinker://{run_id}/{kind}/{name}")
    if filename not in c.files():
        raise ServiceError(f"{c.tinker_path} has no file {filename!r}", 404)
    return FileResponse(c.folder / filename, media_type="application/octet-stream")
