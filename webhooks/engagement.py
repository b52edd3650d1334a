"""POST /v1/engagement: an event about a message or a journey becomes a signal to it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from temporalio.client import Client

from cascade.events.engagement import apply_delivery_event, delivery_by_message_id
from cascade.events.outbox import signal_run
from cascade.events.store import insert_event
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from models.events import EngagementInput, EngagementRequest, EngagementResponse
from models.tables import utcnow

router = APIRouter(tags=["engagement"])
log = get_logger("webhooks.engagement")


@router.post(
    "/v1/engagement",
    status_code=202,
    response_model=EngagementResponse,
    responses={404: {"description": "Unknown message or journey"}, 503: {"description": "Temporal unreachable"}},
)
async def post_engagement(body: EngagementRequest, request: Request) -> EngagementResponse:
    """Route an engagement event to its journey: by provider message id or workflow id.

    404 when neither the message nor the journey is known (nothing is recorded);
    202 with `signalled: false` when the journey has already finished (recorded).
    """
    db: Database = request.app.state.db
    client: Client = request.app.state.client
    if body.message_id is not None:
        delivery = await delivery_by_message_id(db, body.message_id)
        if delivery is None:
            raise HTTPException(404, f"message_id {body.message_id!r}: no such message")
        outcome = await apply_delivery_event(
            client, db, delivery, body.event, occurred_at=body.occurred_at, source="api"
        )
        signalled = bool(outcome.signal and outcome.signal.signalled)
        return EngagementResponse(
            workflow_id=delivery.workflow_id, step=delivery.step, signalled=signalled, detail=outcome.detail
        )

    assert body.workflow_id is not None
    workflow_id = body.workflow_id
    signal = await signal_run(client, workflow_id, None, EngagementInput(type=body.event, occurred_at=body.occurred_at))
    if not signal.signalled and signal.detail == "journey not found":
        raise HTTPException(404, f"workflow_id {workflow_id!r}: no such journey")
    async with db.session() as session:
        await insert_event(
            db, session, type=body.event.value, occurred_at=body.occurred_at or utcnow(), workflow_id=workflow_id
        )
    log.info("engagement.received", workflow_id=workflow_id, event_type=body.event.value, signalled=signal.signalled)
    return EngagementResponse(workflow_id=workflow_id, step=None, signalled=signal.signalled, detail=signal.detail)
