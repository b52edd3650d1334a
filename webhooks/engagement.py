"""POST /v1/engagement: an event about a message or a journey becomes a signal to it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from sqlmodel import col, select, update
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.db import Database
from core.logging import get_logger
from core.profiles import mark_contact_point
from models.events import EngagementInput, EngagementRequest, EngagementResponse, EngagementType
from models.journey import REACTION_RANK
from models.tables import ContactStatus, Delivery, DeliveryStatus, EngagementEvent, utcnow
from workflows.cascade import CascadeJourney

router = APIRouter()
log = get_logger("webhooks.engagement")

_TIMELINE = {
    EngagementType.DELIVERED: "delivered_at",
    EngagementType.OPENED: "opened_at",
    EngagementType.CLICKED: "clicked_at",
    EngagementType.BOUNCED: "failed_at",
    EngagementType.FAILED: "failed_at",
}
# Delivery statuses that move forward with the reaction ladder.
_TRACKED = {DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED}
_CONTACT_STATUS = {
    EngagementType.BOUNCED: ContactStatus.BOUNCED,
    EngagementType.UNSUBSCRIBED: ContactStatus.UNSUBSCRIBED,
    EngagementType.COMPLAINED: ContactStatus.UNSUBSCRIBED,
}


async def _signal(client: Client, workflow_id: str, run_id: str | None, event: EngagementInput) -> tuple[bool, str]:
    """Signal the journey; (False, why) when it has finished or never existed."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        await handle.signal(CascadeJourney.engagement, event)
        return True, "signalled"
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.warning("engagement.signal_failed", workflow_id=workflow_id, error=str(exc))
            raise HTTPException(503, "journey engine unavailable, retry later") from exc
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False, "journey not found"
        raise HTTPException(503, "journey engine unavailable, retry later") from exc
    status = description.status.name.lower() if description.status else "finished"
    return False, f"journey already {status}; event recorded"


async def _record(
    db: Database,
    body: EngagementRequest,
    workflow_id: str,
    delivery: Delivery | None,
    customer_id: str | None,
) -> None:
    now = utcnow()
    occurred = body.occurred_at or now
    async with db.session() as session:
        session.add(
            EngagementEvent(
                delivery_id=delivery.id if delivery else None,
                workflow_id=workflow_id,
                customer_id=customer_id,
                type=body.event.value,
                occurred_at=occurred,
            )
        )
        if delivery is None:
            return
        values: dict[str, object] = {}
        if (column := _TIMELINE.get(body.event)) and getattr(delivery, column) is None:
            values[column] = occurred
        if body.event in (EngagementType.BOUNCED, EngagementType.FAILED):
            values["status"] = DeliveryStatus.FAILED
            values["failure_reason"] = f"{body.event.value} reported by provider"
        elif body.event.value in _TRACKED and REACTION_RANK[body.event.value] > REACTION_RANK.get(delivery.status, 0):
            values["status"] = body.event.value
        if values:
            await session.exec(update(Delivery).where(col(Delivery.id) == delivery.id).values(**values))
        if (status := _CONTACT_STATUS.get(body.event)) and delivery.contact_point_id is not None:
            await mark_contact_point(session, delivery.contact_point_id, status, f"{body.event.value} reported")


@router.post("/v1/engagement", status_code=202, response_model=EngagementResponse)
async def post_engagement(body: EngagementRequest, request: Request) -> EngagementResponse:
    """Route an engagement event to its journey: by provider message id or workflow id.

    404 when neither the message nor the journey is known (nothing is recorded);
    202 with `signalled: false` when the journey has already finished (recorded).
    """
    db: Database = request.app.state.db
    client: Client = request.app.state.client
    delivery: Delivery | None = None
    if body.message_id is not None:
        async with db.session() as session:
            delivery = (
                await session.exec(select(Delivery).where(Delivery.provider_message_id == body.message_id))
            ).first()
        if delivery is None:
            raise HTTPException(404, f"message_id {body.message_id!r}: no such message")
        workflow_id, step, customer_id = delivery.workflow_id, delivery.step, delivery.customer_id
        run_id: str | None = delivery.run_id
    else:
        assert body.workflow_id is not None
        workflow_id, step, customer_id, run_id = body.workflow_id, None, None, None

    event = EngagementInput(type=body.event, step=step, message_id=body.message_id, occurred_at=body.occurred_at)
    signalled, detail = await _signal(client, workflow_id, run_id, event)
    if not signalled and delivery is None and detail == "journey not found":
        raise HTTPException(404, f"workflow_id {workflow_id!r}: no such journey")
    await _record(db, body, workflow_id, delivery, customer_id)
    log.info(
        "engagement.received",
        workflow_id=workflow_id,
        event_type=body.event.value,
        step=step,
        signalled=signalled,
    )
    return EngagementResponse(workflow_id=workflow_id, step=step, signalled=signalled, detail=detail)
