"""The webhooks service: `uvicorn webhooks.app:app`, or `create_app()` in tests.

Bad input gets a clear 4xx JSON body naming the field, and changes nothing;
an unexpected error is a bare 500 with no stack trace for the caller.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from cascade.audiences.refresher import SegmentRefresher
from cascade.events.group import EventGroupCommit
from cascade.events.outbox import EngineUnavailable, OutboxRelay
from cascade.infra.db import Database, migrate
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import connect
from cascade.tracking.tokens import warn_if_dev_secret
from models.ids import NestedValueError
from webhooks.api_events import document_api_keys
from webhooks.api_events import router as events_router
from webhooks.api_segments import router as segments_router
from webhooks.console import router as console_router
from webhooks.engagement import router as engagement_router
from webhooks.http import (
    BodyError,
    HttpGuard,
    allowed_methods,
    body_error_response,
    document_body_limit,
    json_error,
)
from webhooks.preferences import router as preferences_router
from webhooks.receipts import router as receipts_router
from webhooks.tracking import router as tracking_router

log = get_logger("webhooks")


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for err in exc.errors():
        loc: list[Any] = [p for p in err.get("loc", ()) if p != "body"]
        message = str(err.get("msg", "invalid"))
        cause = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset where the field would be; it is a place in
            # the body, told here as line and column.
            offset = loc[0] if loc and isinstance(loc[0], int) else 0
            doc = exc.body if isinstance(exc.body, str) else ""
            reason = str(cause or "invalid JSON")
            fields.append({"field": "body", "message": json_error(doc, offset, reason).message})
            continue
        if isinstance(cause, NestedValueError):
            # A validator that knows which part of the field is wrong (properties.amount).
            loc, message = [*loc, *cause.path], cause.message
        fields.append({"field": ".".join(map(str, loc)) or "body", "message": message.removeprefix("Value error, ")})
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
        app.state.client = client or await connect(settings, warn_dev_key=True)
        app.state.settings = settings
        warn_if_dev_secret(settings)
        if settings.webhooks_gc_freeze or (settings.webhooks_gc_freeze is None and client is None):
            gc.freeze()
        # Sends the signals events store (and whatever a crashed process left behind).
        async with (
            OutboxRelay(app.state.client, app.state.db, settings) as relay,
            # Segment refreshes after events: after the answer, coalesced per customer.
            SegmentRefresher(app.state.client, app.state.db, settings) as refresher,
        ):
            app.state.relay = relay
            app.state.segments = refresher
            lease = timedelta(seconds=settings.outbox_lease_seconds)
            app.state.events = EventGroupCommit(app.state.db, lease=lease)
            try:
                yield
            finally:
                await app.state.events.close()
        if own_db:
            await app.state.db.dispose()

    app = FastAPI(
        title="Cascade webhooks",
        version="0.1.0",
        description="Engagement events and provider receipts in, journey signals out.",
        lifespan=lifespan,
    )
    app.add_middleware(HttpGuard, limit=settings.webhooks_max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"error": f"invalid request: {summary}", "fields": fields}, status_code=422)

    @app.exception_handler(BodyError)
    async def _unreadable(request: Request, exc: BodyError) -> JSONResponse:
        return body_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Every method the path has, not only those of the first route that matched.
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=headers or None)

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
    app.include_router(preferences_router)
    app.include_router(receipts_router)
    app.include_router(console_router)  # the analytics console (issue 15), behind API-key login
    app.include_router(segments_router)
    document_api_keys(app)
    document_body_limit(app, settings.webhooks_max_body_bytes)
    return app
