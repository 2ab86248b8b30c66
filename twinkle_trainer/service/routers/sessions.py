"""Sessions: create, heartbeat, finish (ServiceClient.close), look up and list."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from tinker import types as t

from twinkle_trainer.protocol import RunStatus
from twinkle_trainer.service.deps import ServiceDep, SessionDep
from twinkle_trainer.service.schemas import FinishSessionRequest

router = APIRouter(prefix="/api/v1", tags=["sessions"])

INFO = "a local twinkle training service: every training client is a run in twinkle-tui"
FINISHED = {"success": RunStatus.COMPLETED, "errored": RunStatus.FAILED, "interrupted": RunStatus.STOPPED}


@router.post("/create_session", response_model_exclude_none=True)
async def create_session(req: t.CreateSessionRequest, request: Request,
                         service: ServiceDep) -> t.CreateSessionResponse:
    peer = (request.client.host, request.client.port) if request.client else None
    local = request.scope.get("server")
    session = await asyncio.to_thread(service.create_session, peer, tuple(local) if local else None,
                                      req.user_metadata)
    return t.CreateSessionResponse(session_id=session.session_id, info_message=INFO)


@router.post("/session_heartbeat")
async def heartbeat(req: t.SessionHeartbeatRequest, service: ServiceDep) -> dict[str, str]:
    service.sessions.get(req.session_id)
    return {"type": "session_heartbeat"}


@router.post("/sessions/{session_id}/finish")
async def finish_session(req: FinishSessionRequest, session: SessionDep, service: ServiceDep) -> dict[str, Any]:
    """ServiceClient.close(status): the session ends now, its runs with the status the client names."""
    kind = req.reason.type
    why = f"the client finished the session ({kind}{': ' + req.detail if req.detail else ''})"
    await asyncio.to_thread(service.close_session, session, why, FINISHED[kind])
    return {}


@router.get("/sessions", response_model_exclude_none=True)
async def list_sessions(service: ServiceDep, limit: int = 20, offset: int = 0) -> t.ListSessionsResponse:
    """The sessions this service has seen, newest first (open and closed)."""
    with service.sessions.lock:
        ids = list(reversed(service.sessions.sessions))
    return t.ListSessionsResponse(sessions=ids[offset : offset + limit])


@router.get("/sessions/{session_id}", response_model_exclude_none=True)
async def get_session(session: SessionDep, service: ServiceDep) -> t.GetSessionResponse:
    meta = {str(k): str(v) for k, v in (session.user_metadata or {}).items()} or None
    return t.GetSessionResponse(training_run_ids=list(session.models),
                                sampler_ids=service.sampling.of_session(session.session_id), user_metadata=meta)
