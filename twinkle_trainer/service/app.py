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
from starlette.exceptions import HTTPException as StarletteHTTPException

from twinkle_trainer.service.errors import EngineError, ServiceError
from twinkle_trainer.service.routers import futures, runs, sampling, server, sessions, training, weights
from twinkle_trainer.service.routers.training import MAX_BODY
from twinkle_trainer.service.service import Service
from twinkle_trainer.service.settings import ServiceSettings

UNGUARDED = ("/api/v1/healthz",)  # liveness says nothing else
SIGNED = "/api/v1/files/"  # downloads carry a signature instead of the key (as links to a storage bucket do)
BODY_TYPES = ("application/json", "application/x-protobuf")  # what the SDK sends
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a request to this address carries, when it is bound to loopback; None (any) otherwise:
    an address other machines reach needs an API key, and the key is the guard there."""
    from twinkle_trainer.service.startup import is_loopback

    if not is_loopback(host):
        return None
    names = {*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host}
    return {f"{name}:{port}" for name in names} | ({*names} if port == 80 else set())


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

    hosts = allowed_hosts(settings.host, settings.port)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.headers.get("origin") is not None:  # the SDK sends none; every browser's request carries one
            return error("requests from web pages are refused (this service serves the tinker SDK)", 403)
        host = request.headers.get("host", "").lower()
        if hosts is not None and host not in hosts:  # DNS rebinding: a page's name pointed at this address
            return error(f"this service answers only to {settings.host}:{settings.port}", 421)
        if expected is not None and request.url.path not in UNGUARDED and not request.url.path.startswith(SIGNED):
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, expected):  # constant time; the key is never logged
                return error("a valid API key is required (X-API-Key)", 401)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:  # before reading it: a body is held in memory whole
            return error(f"the request body is {int(length):,} bytes; this service takes at most {MAX_BODY:,}", 413)
        has_body = (length.isdigit() and int(length) > 0) or "transfer-encoding" in request.headers
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and kind not in BODY_TYPES:  # a form or text/plain body is what a web page can send unasked
            return error(f"content type {kind or 'none'!r} is not accepted: send {' or '.join(BODY_TYPES)}", 415)
        service.count_request(request.url.path)
        return await call_next(request)

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return error(str(exc), exc.status)

    @app.exception_handler(EngineError)
    async def cannot(request: Request, exc: EngineError) -> JSONResponse:
        return error(str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return error(malformed(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(str(exc.detail), exc.status_code)

    for kind in (RequestValidationError, ValidationError, ValueError, RecursionError):  # bodies the SDK never sends
        app.add_exception_handler(kind, invalid)

    for module in (server, sessions, training, weights, runs, sampling, futures):
        app.include_router(module.router)
    return app
