"""The webhooks service: `uvicorn webhooks.app:app`, or `create_app()` in tests.

Bad input gets a clear 4xx JSON body naming the field, and changes nothing;
an unexpected error is a bare 500 with no stack trace for the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from core.db import Database, migrate
from core.events import EngineUnavailable
from core.logging import get_logger
from core.outbox import OutboxRelay
from core.settings import Settings, get_settings
from core.temporal import connect
from core.tracking import warn_if_dev_secret
from webhooks.api_events import router as events_router
from webhooks.engagement import router as engagement_router
from webhooks.receipts import router as receipts_router
from webhooks.tracking import router as tracking_router

log = get_logger("webhooks")


class BodyTooLarge(Exception):
    """The request body exceeded the configured limit."""


class BodySizeLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body larger than {limit} bytes"}, status_code=413)


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        fields.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid"))})
    return fields


def create_app(
    settings: Settings | None = None,
    *,
    client: Client | None = None,
    db: Database | None = None,
) -> FastAPI:
    """The webhooks app; connects to Temporal and the database at start-up unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        app.state.db = db or Database.from_settings(settings)
        if own_db:
            await migrate(app.state.db.engine)
        app.state.client = client or await connect(settings)
        app.state.settings = settings
        warn_if_dev_secret(settings)
        # Sends the signals events store (and whatever a crashed process left behind).
        async with OutboxRelay(app.state.client, app.state.db, settings) as relay:
            app.state.relay = relay
            yield
        if own_db:
            await app.state.db.dispose()

    app = FastAPI(
        title="Cascade webhooks",
        version="0.1.0",
        description="Engagement events and provider receipts in, journey signals out.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, limit=settings.webhooks_max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"error": f"invalid request: {summary}", "fields": fields}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(EngineUnavailable)
    async def _engine_down(request: Request, exc: EngineUnavailable) -> JSONResponse:
        # 503 makes providers and the shop retry later; nothing was written.
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("webhooks.unhandled", path=request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    app.include_router(engagement_router)
    app.include_router(events_router)
    app.include_router(tracking_router)
    app.include_router(receipts_router)
    return app
