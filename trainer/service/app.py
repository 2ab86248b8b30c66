"""The HTTP API: tinker's REST endpoints as the official SDK (tinker 0.38.0) calls them, on FastAPI.

The factory only wires things together: the guard in front of every route (API key, body size), the refusals'
one shape ({"error", "category", "detail"}, with the HTTP status of the refusal), and one router per resource.
Request bodies are the SDK's own pydantic types and protobuf messages, so what the service accepts is exactly what
the SDK sends; the work is done by the service layer (service.Service), answered with a future.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from trainer.service.errors import EngineError, ServiceError
from trainer.service.routers import futures, runs, sampling, server, sessions, training, weights
from trainer.service.routers.training import MAX_BODY
from trainer.service.service import Service
from trainer.service.settings import ServiceSettings

UNGUARDED = ("/api/v1/healthz",)  # liveness says nothing else


def error(message: str, status: int = 400, category: str = "user") -> JSONResponse:
    return JSONResponse({"error": message, "category": category, "detail": message}, status_code=status)


def malformed(exc: Exception) -> str:
    if isinstance(exc, RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return f"malformed request: {'; '.join(parts) or 'invalid body'}"
    first = str(exc).splitlines()
    return f"malformed request: {' '.join(first[:3])}"


def create_app(service: Service, settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    app = FastAPI(title="twinkle training service", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.settings = service, settings
    expected = settings.api_key.encode() if settings.api_key else None

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if expected is not None and request.url.path not in UNGUARDED:
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, expected):  # constant time; the key is never logged
                return error("a valid API key is required (X-API-Key)", 401)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:  # before reading it: a body is held in memory whole
            return error(f"the request body is {int(length):,} bytes; this service takes at most {MAX_BODY:,}", 413)
        return await call_next(request)

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return error(str(exc), exc.status)

    @app.exception_handler(EngineError)
    async def cannot(request: Request, exc: EngineError) -> JSONResponse:
        return error(str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return error(malformed(exc))

    for kind in (RequestValidationError, ValidationError, ValueError):  # a body the SDK would not send
        app.add_exception_handler(kind, invalid)

    for module in (server, sessions, training, weights, runs, sampling, futures):
        app.include_router(module.router)
    return app
