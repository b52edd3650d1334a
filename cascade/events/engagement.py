"""Events about one message (a receipt, an open, a click, a bounce): the delivery timeline.

The event row, the delivery's timeline and status, the contact point and the signal to
the run that sent the message are stored in one transaction; the signal is sent after
the commit (cascade/events/outbox.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from cascade.events.outbox import PlannedSignal, SignalResult, deliver, enqueue, writer
from cascade.events.store import DEFAULT_LEASE, insert_event, signal_event_id
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.profiles.service import mark_contact_point
from models.events import EngagementInput, EngagementType
from models.journey import REACTION_RANK
from models.tables import ContactStatus, Delivery, DeliveryStatus, OutboxSignal, utcnow

log = get_logger(__name__)

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


@dataclass(frozen=True)
class DeliveryEventResult:
    """What an event about one message did."""

    delivery: Delivery
    recorded: bool
    signal: SignalResult | None
    detail: str


async def delivery_by_message_id(db: Database, message_id: str) -> Delivery | None:
    """The delivery whose provider message id is `message_id` (indexed look-up)."""
    async with db.session() as session:
        return (await session.exec(select(Delivery).where(Delivery.provider_message_id == message_id))).first()


async def _apply_to_delivery(session: AsyncSession, delivery: Delivery, event: EngagementType, at: datetime) -> None:
    values: dict[str, object] = {}
    if (column := _TIMELINE.get(event)) and getattr(delivery, column) is None:
        values[column] = at
    if event in (EngagementType.BOUNCED, EngagementType.FAILED):
        values["status"] = DeliveryStatus.FAILED
        values["failure_reason"] = f"{event.value} reported by provider"
    elif event.value in _TRACKED and REACTION_RANK[event.value] > REACTION_RANK.get(delivery.status, 0):
        values["status"] = event.value
    if values:
        await session.exec(update(Delivery).where(col(Delivery.id) == delivery.id).values(**values))
    if (status := _CONTACT_STATUS.get(event)) and delivery.contact_point_id is not None:
        await mark_contact_point(session, delivery.contact_point_id, status, f"{event.value} reported")


def _unsent(rows: Sequence[OutboxSignal]) -> list[SignalResult]:
    return [SignalResult(r.workflow_id, r.run_id, False, "queued", retry=True) for r in rows]


async def apply_delivery_event(
    client: Client,
    db: Database,
    delivery: Delivery,
    event: EngagementType,
    *,
    occurred_at: datetime | None = None,
    source: str = "api",
    event_id: str | None = None,
    properties: dict[str, Any] | None = None,
    signal_repeats: bool = True,
    lease: timedelta = DEFAULT_LEASE,
) -> DeliveryEventResult:
    """Record an event about a message and signal the run that sent it.

    The event row, the delivery's timeline, the contact point and the signal (an outbox
    row) are written in one transaction; the signal is sent after the commit. If Temporal
    is unreachable the event stays recorded and its signal queued: the relay sends it
    later (`signalled` False, `detail` says so). A duplicate `event_id` (a provider
    retrying) is neither stored nor signalled twice. With `signal_repeats` False, an event
    the delivery's timeline already has (the tenth pixel load) is recorded but not
    signalled again, so no journey history fills up with repeats.
    """
    at = occurred_at or utcnow()
    bound = log.bind(workflow_id=delivery.workflow_id, delivery_id=delivery.id, event_type=event.value, source=source)
    rows: list[OutboxSignal] = []
    async with writer(db), db.session() as session:
        inserted = await insert_event(
            db,
            session,
            type=event.value,
            occurred_at=at,
            event_id=event_id,
            customer_id=delivery.customer_id,
            workflow_id=delivery.workflow_id,
            delivery_id=delivery.id,
            channel=delivery.channel,
            source=source,
            properties=properties,
        )
        if not inserted:
            bound.info("event.duplicate", event_id=event_id)
            return DeliveryEventResult(delivery, False, None, "duplicate event; already recorded")
        column = _TIMELINE.get(event)
        repeat = column is not None and getattr(delivery, column) is not None
        await _apply_to_delivery(session, delivery, event, at)
        if signal_repeats or not repeat:
            signal_id = signal_event_id(event_id)
            signal_input = EngagementInput(
                type=event,
                step=delivery.step,
                message_id=delivery.provider_message_id,
                occurred_at=at,
                event_id=signal_id,
            )
            planned = PlannedSignal(delivery.workflow_id, delivery.run_id, "engagement", signal_input)
            rows = enqueue(session, [planned], signal_id, lease)
    signal = (await deliver(client, db, rows))[0] if rows else None
    if signal is None:
        detail = f"{event.value} already recorded for this message"
    elif signal.retry:
        detail = "event recorded; the journey engine is unavailable, the signal is queued and will be retried"
    else:
        detail = signal.detail
    bound.info("event.delivery", signalled=bool(signal and signal.signalled), detail=detail)
    return DeliveryEventResult(delivery, True, signal, detail)
