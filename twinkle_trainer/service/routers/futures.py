"""Futures: one result by request id (long-polled), a sampling client's completions after its cursor, and the
cancel of a sample its client abandoned."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from tinker import types as t

from twinkle_trainer.service import wire
from twinkle_trainer.service.deps import ServiceDep

router = APIRouter(prefix="/api/v1", tags=["futures"])

LONG_POLL = 25.0  # below the SDK's 45 s timeout for retrieve_future (it asks again at once on a 408)
POLL = 0.01


@router.post("/retrieve_futures")
async def retrieve_futures(req: t.FuturesRetrieveRequest, service: ServiceDep) -> dict[str, Any]:
    """A sampling client's completions after its cursor (long-polled); the ids it has read are released."""
    queue = service.sampling.get(req.target.sampling_session_id).queue(req.target.cloned_sampler_id)
    service.futures.mark_fetched(list(req.retrieved_request_ids))
    deadline = time.monotonic() + min(LONG_POLL, req.timeout if req.timeout is not None else LONG_POLL)
    completions, cursor = queue.after(req.prev_cursor)
    while not completions and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        completions, cursor = queue.after(req.prev_cursor)
    return {"completions": completions, "cursor": cursor}


@router.post("/retrieve_future", response_model=None)
async def retrieve_future(req: t.FutureRetrieveRequest, service: ServiceDep) -> Response | dict[str, Any]:
    f = service.futures.get(req.request_id)
    deadline = time.monotonic() + LONG_POLL
    while not f.done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    if not f.done.is_set():  # 408, not a 200 try_again: the SDK polls again either way, but warns "Retrying
        # request ... because of try_again" on each 200 one, which reads like an error in the client's output
        return JSONResponse({"type": "try_again", "request_id": f.request_id, "queue_state": "active"},
                            status_code=408)
    service.futures.fetched(f)
    if f.error is not None:
        return {"error": f.error[0], "category": f.error[1]}
    if f.proto is not None:
        return Response(f.proto, media_type=wire.PROTO)
    return f.json or {}


class CancelRequest(BaseModel):
    request_id: str = Field(max_length=200)


@router.post("/cancel_future")
async def cancel_future(req: CancelRequest, service: ServiceDep) -> dict[str, str]:
    """Sent by the SDK for a sample it stopped waiting for (offered by /client/dynamic_config)."""
    return {"status": service.futures.cancel(req.request_id)}
