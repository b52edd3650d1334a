"""POST /v1/events (and /v1/events/batch): application events from the shop, with an API key.

`Authorization: Bearer <key>` or `X-API-Key: <key>`; keys are per tenant and stored
hashed (see webhooks/keys.py). Events are stored on the profile, a conversion (a
purchase) is signalled to the customer's running journeys, and then the event is routed
(core/triggers.py): journeys whose trigger and entry conditions match start, and those
whose `exit_on`/`convert_on` name the event end.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.service import RPCError

from core.events import mark_routed, record_app_event, routing_pending
from core.logging import get_logger
from core.triggers import route_event
from models.events import AppEvent, AppEventBatch, AppEventBatchResult, AppEventResult
from webhooks.keys import authenticate

router = APIRouter(tags=["events"])
log = get_logger("webhooks.events")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key in X-API-Key")
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    404: {"description": "Unknown customer"},
    503: {"description": "Temporal unreachable, retry"},
}


async def tenant_of(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> str:
    """The tenant whose API key the request carries; 401 otherwise."""
    key = header or (bearer.credentials if bearer else None)
    if not key:
        raise HTTPException(401, "authorization: API key required (Authorization: Bearer or X-API-Key)")
    row = await authenticate(request.app.state.db, key)
    if row is None:
        raise HTTPException(401, "authorization: unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return row.tenant


@router.post("/v1/events", status_code=202, response_model=AppEventResult, responses=_AUTH_ERRORS)
async def post_event(event: AppEvent, request: Request, tenant: Annotated[str, Depends(tenant_of)]) -> AppEventResult:
    """Store one application event, signal the customer's running journeys, start triggered ones."""
    result = await _accept(request, tenant, event)
    if result.status == "unknown_customer":
        raise HTTPException(404, result.detail)
    return result


async def _accept(request: Request, tenant: str, event: AppEvent) -> AppEventResult:
    """Record the event, then route it to the journeys it starts or ends.

    Routing happens after the event is stored, so it is tracked on the event row: a
    sender's retry after a failed routing (503) finds the event stored but not routed
    and routes it then; a repeat of a routed event does nothing at all.
    """
    state = request.app.state
    result = await record_app_event(state.client, state.db, tenant, event)
    if result.status == "unknown_customer":
        return result
    if result.status == "duplicate" and not await routing_pending(state.db, tenant, event.event_id):
        return result
    try:
        routed = await route_event(
            state.client, state.db, event.customer_id, event.type, event.properties, settings=state.settings
        )
    except RPCError as exc:
        log.error("event.routing_failed", customer_id=event.customer_id, event_type=event.type, error=str(exc))
        raise HTTPException(503, "event stored; starting its journeys failed (Temporal unavailable): retry") from exc
    await mark_routed(state.db, tenant, event.event_id)
    result.started = routed.started
    result.signalled = sorted({*result.signalled, *routed.converted, *routed.exited})
    return result


@router.post("/v1/events/batch", status_code=202, response_model=AppEventBatchResult, responses=_AUTH_ERRORS)
async def post_events(
    batch: AppEventBatch, request: Request, tenant: Annotated[str, Depends(tenant_of)]
) -> AppEventBatchResult:
    """Up to 1000 events in order; each is idempotent, so a retried batch is safe."""
    results = [await _accept(request, tenant, e) for e in batch.events]
    return AppEventBatchResult(
        accepted=sum(r.status == "accepted" for r in results),
        duplicates=sum(r.status == "duplicate" for r in results),
        unknown_customers=sum(r.status == "unknown_customer" for r in results),
        results=results,
    )
