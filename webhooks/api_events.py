"""POST /v1/events (and /v1/events/batch): application events from the shop, with an API key.

`Authorization: Bearer <key>` or `X-API-Key: <key>`; keys are per tenant and stored
hashed (see webhooks/keys.py). An event is stored on the profile together with the
signals it implies (a `cancel` to running journeys whose `exit_on` names it, a
`converted` to those whose `convert_on` does) in one transaction; the answer comes once
it is stored, and the process's outbox relay sends the signals (cascade/events/outbox.py). The
journeys the event triggers (cascade/journeys/triggers.py) are started before the answer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.service import RPCError

from cascade.events.ingest import RecordedEvent, mark_routed, pending_starts, record_app_events
from cascade.infra.logging import get_logger
from cascade.journeys.triggers import RouteResult, start_planned
from models.events import AppEvent, AppEventBatch, AppEventBatchResult, AppEventResult
from webhooks.keys import tenant_of_key

router = APIRouter(tags=["events"])
log = get_logger("webhooks.events")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key in X-API-Key")
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    404: {"description": "Unknown customer"},
    503: {"description": "Temporal unreachable, retry"},
}


# On every operation that takes a key (`openapi_extra`): either scheme will do.
API_KEY_SECURITY: dict[str, Any] = {"security": [{_bearer.scheme_name: []}, {_header.scheme_name: []}]}


def document_api_keys(app: FastAPI) -> None:
    """Name the two ways to send a key in the OpenAPI document's security schemes (what
    FastAPI writes for security dependencies, which `tenant_of` no longer declares)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemes = generate().setdefault("components", {}).setdefault("securitySchemes", {})
            for scheme in (_bearer, _header):
                schemes[scheme.scheme_name] = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


async def tenant_of(request: Request) -> str:
    """The tenant whose API key the request carries (`X-API-Key`, else `Authorization:
    Bearer`); 401 otherwise."""
    # The headers read here by FastAPI's own scheme classes, not declared as sub-dependencies:
    # FastAPI solved those two and this one for every event, about a tenth of the webhooks
    # service's CPU per event (py-spy, issue 17 B6). The operations document them instead
    # (API_KEY_SECURITY, document_api_keys).
    key = await _header(request)
    if not key:
        bearer: HTTPAuthorizationCredentials | None = await _bearer(request)
        key = bearer.credentials if bearer else None
    if not key:
        raise HTTPException(401, "authorization: API key required (Authorization: Bearer or X-API-Key)")
    state = request.app.state
    tenant = await tenant_of_key(state.db, key, state.settings.api_key_cache_seconds)
    if tenant is None:
        raise HTTPException(401, "authorization: unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant


@router.post(
    "/v1/events", status_code=202, response_model=AppEventResult, responses=_AUTH_ERRORS, openapi_extra=API_KEY_SECURITY
)
async def post_event(event: AppEvent, request: Request, tenant: Annotated[str, Depends(tenant_of)]) -> AppEventResult:
    """Store one application event and the signals it implies, start the journeys it triggers.

    `signalled` lists the running journeys the event converts or ends: their signals are
    stored with the event and sent by the relay right after (at least once; a journey
    ignores a repeat). `started` lists the journeys it started (or found running).
    """
    result = await _accept(request, tenant, event)
    if result.status == "unknown_customer":
        raise HTTPException(404, result.detail)
    return result


async def _accept(request: Request, tenant: str, event: AppEvent) -> AppEventResult:
    """Store the event with its signals, hand them to the relay, start triggered journeys."""
    state = request.app.state
    # Stored in a transaction shared with the events of concurrent requests (group commit).
    recorded = await state.events.record(tenant, event)
    results = await _route(request, tenant, [(event, recorded)])
    return results[0]


async def _route(request: Request, tenant: str, stored: list[tuple[AppEvent, RecordedEvent]]) -> list[AppEventResult]:
    """After the commit: hand the signals to the relay, start triggered journeys, queue the
    customers' segment refreshes.

    Starting is tracked on the event row: a sender's retry after a failed start (503)
    finds the event stored but not routed and starts its journeys then (its signals were
    stored the first time); a repeat of a routed event does nothing at all. Segments are
    refreshed in the background, once per customer for all of its events queued by then.
    """
    state = request.app.state
    results: list[AppEventResult] = []
    customers: dict[str, None] = {}
    for event, recorded in stored:
        result = recorded.result
        if result.status == "unknown_customer":
            results.append(result)
            continue
        if result.status == "duplicate":
            pending = await pending_starts(state.db, tenant, event)
            if pending is None:
                results.append(result)
                continue
            recorded = pending
        state.relay.submit(recorded.rows)
        if recorded.starts and recorded.customer_id is not None:
            routed = RouteResult()
            try:
                await start_planned(
                    state.client, state.db, state.settings, recorded.customer_id, recorded.starts, routed
                )
            except RPCError as exc:
                log.error("event.routing_failed", customer_id=event.customer_id, event_type=event.type, error=str(exc))
                raise HTTPException(
                    503, "event stored; starting its journeys failed (Temporal unavailable): retry"
                ) from exc
            await mark_routed(state.db, tenant, event.event_id)
            recorded.result.started = routed.started
        if recorded.customer_id is not None:
            customers[recorded.customer_id] = None
        results.append(recorded.result)
    # Audiences (#13): the events may move the customers into or out of segments. Nothing
    # in the answer depends on it, so it runs after, coalesced (cascade/audiences/refresher.py).
    state.segments.submit(customers)
    return results


@router.post(
    "/v1/events/batch",
    status_code=202,
    response_model=AppEventBatchResult,
    responses=_AUTH_ERRORS,
    openapi_extra=API_KEY_SECURITY,
)
async def post_events(
    batch: AppEventBatch, request: Request, tenant: Annotated[str, Depends(tenant_of)]
) -> AppEventBatchResult:
    """Up to 1000 events in order, stored in one transaction; each is idempotent, so a
    retried batch is safe."""
    state = request.app.state
    lease = timedelta(seconds=state.settings.outbox_lease_seconds)
    recorded = await record_app_events(state.db, tenant, batch.events, lease=lease)
    results = await _route(request, tenant, list(zip(batch.events, recorded, strict=True)))
    return AppEventBatchResult(
        accepted=sum(r.status == "accepted" for r in results),
        duplicates=sum(r.status == "duplicate" for r in results),
        unknown_customers=sum(r.status == "unknown_customer" for r in results),
        results=results,
    )
