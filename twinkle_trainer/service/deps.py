"""Dependencies of the routes: the service, the session or model a path names, the protobuf body, and the future
every queued request is answered with."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from tinker import types as t

from twinkle_trainer.service.errors import ServiceError
from twinkle_trainer.service.futures import Future
from twinkle_trainer.service.service import Service
from twinkle_trainer.service.sessions import TinkerSession
from twinkle_trainer.service.settings import ServiceSettings


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def open_session(session_id: str, service: ServiceDep) -> TinkerSession:
    """The open session a path names (`/sessions/{session_id}/...`)."""
    return service.sessions.get(session_id)


SessionDep = Annotated[TinkerSession, Depends(open_session)]


def untyped(f: Future, sample_sequence_ids: list[str] | None = None) -> t.UntypedAPIFuture:
    """The answer to a queued request: the future the SDK polls (retrieve_future or retrieve_futures)."""
    return t.UntypedAPIFuture(request_id=f.request_id, model_id=f.model_id,
                              sample_sequence_ids=sample_sequence_ids)


def follow_recipe_soon(service: Service, session_id: str) -> None:
    """Look for the client's recipe log folder now, off the event loop and without waiting for it (see
    Service.follow_recipe). Once the folder is known, housekeeping reads it: no job for each optim_step."""
    known = service.recipes.get(session_id)
    if known is not None and known.path is not None:
        return

    def find() -> None:
        try:
            service.follow_recipe(service.sessions.get(session_id), until_found=True)
        except ServiceError:  # the session has ended meanwhile
            pass

    asyncio.get_running_loop().run_in_executor(None, find)
