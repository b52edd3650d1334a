"""Events in, signals out: record an event and signal the journeys it concerns.

Used by every webhook (engagement API, tracking links, provider receipts, application
events). Finding a journey is a database look-up (the delivery log for a message, the
journey runs for a customer), never a scan of Temporal. No transaction is held while
Temporal is called: an event, what it changes and the signals it implies are stored
together in one short transaction (the signals as outbox rows, cascade/events/outbox.py), and the
signals are sent after the commit. A message event (a receipt, an open) sends its one
signal right away and reports whether the journey took it; an application event
(POST /v1/events) hands its signals to the webhooks process's relay.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from cascade.events.outbox import (
    EngineUnavailable,
    PlannedSignal,
    SignalResult,
    deliver,
    enqueue,
    mark_run_finished,
    signal_run,
    writer,
)
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.journeys.files import load_all_journeys
from cascade.journeys.triggers import PlannedStart, plan_event, running_journeys
from cascade.profiles.service import mark_contact_point, resolve_customer_id, set_consent
from models.events import AppEvent, AppEventResult, EngagementInput, EngagementType
from models.ids import MAX_LOYALTY_POINTS, MAX_PURCHASE_COUNT
from models.journey import REACTION_RANK, ChannelName, JourneySpec
from models.profiles import ConsentIn
from models.tables import (
    ContactPoint,
    ContactStatus,
    Customer,
    Delivery,
    DeliveryStatus,
    EngagementEvent,
    OutboxSignal,
    Topic,
    utcnow,
)

__all__ = [
    "EngineUnavailable",
    "SignalResult",
    "mark_run_finished",
    "running_journeys",
    "signal_run",
]

log = get_logger(__name__)

# How long this process holds the outbox rows it is about to send before any relay may
# take them over (POST /v1/events passes the `outbox_lease_seconds` setting).
DEFAULT_LEASE = timedelta(seconds=30)

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


async def insert_event(
    db: Database,
    session: AsyncSession,
    *,
    type: str,
    occurred_at: datetime,
    event_id: str | None = None,
    customer_id: str | None = None,
    workflow_id: str | None = None,
    delivery_id: int | None = None,
    channel: str | None = None,
    source: str = "api",
    properties: dict[str, Any] | None = None,
) -> bool:
    """Insert one engagement event; False when an event with the same `event_id` exists."""
    result = await session.exec(
        insert_ignoring_conflicts(db, EngagementEvent)
        .values(
            event_id=event_id,
            type=type,
            occurred_at=occurred_at,
            customer_id=customer_id,
            workflow_id=workflow_id,
            delivery_id=delivery_id,
            channel=channel,
            source=source[:64],
            properties=properties or {},
            received_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)


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


def _signal_event_id(event_id: str | None) -> str:
    # Journeys drop an event id they have seen: the sender's own id where there is one,
    # else a fresh one (stored with the outbox row, so every retry carries the same).
    return event_id if event_id else f"ev:{uuid.uuid4().hex}"


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
            signal_id = _signal_event_id(event_id)
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


@dataclass(frozen=True)
class UnsubscribeResult:
    """What an unsubscribe did: whether anything changed, and the journeys signalled."""

    changed: bool
    signals: list[SignalResult]


async def unsubscribe_contact(
    client: Client,
    db: Database,
    *,
    customer_id: str,
    channel: str,
    contact_point_id: int | None,
    source: str,
    delivery: Delivery | None = None,
    reason: str = "unsubscribed",
    status: ContactStatus = ContactStatus.UNSUBSCRIBED,
    lease: timedelta = DEFAULT_LEASE,
) -> UnsubscribeResult:
    """The customer opted out of marketing on a channel: contact point unsubscribed, consent
    withdrawn, an event recorded and their running marketing journeys signalled.

    `status=BLOCKED` for a customer who blocked the sender (a Telegram bot): then not
    even receipts can reach that address.

    Idempotent: a second unsubscribe of the same contact point changes and signals nothing.
    The opt-out and its signals are stored together; the signals go out after the commit
    (and, if Temporal is down, later through the relay): the contact point is already
    unsubscribed, so no further message goes out on this channel meanwhile.
    """
    signal_id = _signal_event_id(None)
    async with writer(db), db.session() as session:
        point = await session.get(ContactPoint, contact_point_id) if contact_point_id is not None else None
        customer_id = await resolve_customer_id(session, point.customer_id if point else customer_id)
        already = point is not None and point.status == status
        if already:
            return UnsubscribeResult(False, [])
        if point is not None:
            await mark_contact_point(session, point.id, status, reason)
        customer = await session.get(Customer, customer_id)
        # After an erasure the delivery names a pseudonym: no profile to record consent on.
        if channel in ChannelName.__members__.values() and customer is not None and customer.erased_at is None:
            await set_consent(
                session,
                customer_id,
                ConsentIn(channel=ChannelName(channel), topic=Topic.MARKETING, granted=False, source=source[:200]),
            )
        await insert_event(
            db,
            session,
            type=EngagementType.UNSUBSCRIBED.value,
            occurred_at=utcnow(),
            customer_id=customer_id,
            workflow_id=delivery.workflow_id if delivery else None,
            delivery_id=delivery.id if delivery else None,
            channel=channel,
            source=source,
        )
        event = EngagementInput(
            type=EngagementType.UNSUBSCRIBED,
            message_id=delivery.provider_message_id if delivery else None,
            occurred_at=utcnow(),
            event_id=signal_id,
        )
        # The run that sent the message being unsubscribed from, even if it was started
        # without a journey_runs row, and every running marketing journey of the customer.
        targets: list[tuple[str, str | None]] = [(delivery.workflow_id, delivery.run_id)] if delivery else []
        for run in await running_journeys(session, customer_id, marketing_only=True):
            targets.append((run.workflow_id, None if run.workflow_type == "LoyaltyLoop" else run.run_id))
        planned = [PlannedSignal(wf, run_id, "engagement", event) for wf, run_id in dict.fromkeys(targets)]
        rows = enqueue(session, planned, signal_id, lease)
    signals = await deliver(client, db, rows)
    if any(s.retry for s in signals):
        log.warning("unsubscribe.signal_deferred", customer_id=customer_id, channel=channel)
    log.info(
        "signal.customer_journeys",
        customer_id=customer_id,
        event_type=EngagementType.UNSUBSCRIBED.value,
        workflow_ids=[r.workflow_id for r in signals if r.signalled],
    )
    return UnsubscribeResult(True, signals)


async def _update_profile(customer: Customer, event: AppEvent, at: datetime) -> None:
    attributes = dict(customer.attributes or {})
    if event.type == "purchase":
        # Saturating: a total at its bound must never make every later purchase fail.
        customer.purchase_count = min(MAX_PURCHASE_COUNT, (customer.purchase_count or 0) + 1)
        if customer.last_purchase_at is None or _aware(customer.last_purchase_at) < at:
            customer.last_purchase_at = at
        points = (customer.loyalty_points or 0) + int(event.properties.get("loyalty_points") or 0)
        customer.loyalty_points = min(MAX_LOYALTY_POINTS, points)
    elif event.type == "registered":
        attributes.setdefault("registered_at", at.isoformat())
    elif event.type == "cart_updated":
        attributes["cart"] = event.properties
        attributes["cart_updated_at"] = at.isoformat()
    elif event.type == "page_viewed":
        attributes["last_page_viewed_at"] = at.isoformat()
        if isinstance(url := event.properties.get("url"), str):
            attributes["last_page_viewed_url"] = url[:2048]
    else:
        return
    customer.attributes = attributes
    customer.updated_at = utcnow()


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass
class RecordedEvent:
    """An application event as stored: the answer, its signals (stored, to be sent) and the
    journeys it starts (to be started by the caller: `cascade.journeys.triggers.start_planned`)."""

    result: AppEventResult
    customer_id: str | None = None
    rows: list[OutboxSignal] = field(default_factory=list)
    starts: list[PlannedStart] = field(default_factory=list)
    not_entered: dict[str, str] = field(default_factory=dict)


async def record_app_event(
    db: Database,
    tenant: str,
    event: AppEvent,
    *,
    journeys: Sequence[JourneySpec] | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> RecordedEvent:
    """Store an application event on the profile, with the signals it implies.

    One transaction, no network call inside: the event row, the profile change and one
    outbox row per signal (a `cancel` to each running journey whose `exit_on` names the
    event, a `converted` to each whose `convert_on` does, unless the event says
    `conversion: false`). The caller hands `rows` to the relay and starts `starts`.
    Idempotent by (tenant, event_id): a repeat is neither stored nor signalled again.
    The journeys to start are planned on the profile as this event leaves it (a purchase
    counts before `purchase_count` conditions are judged).
    """
    at = event.occurred_at or utcnow()
    specs = list(journeys) if journeys is not None else load_all_journeys()
    stored_id = f"{tenant}:{event.event_id}"
    async with writer(db), db.session() as session:
        customer_id = await resolve_customer_id(session, event.customer_id)
        customer = await session.get(Customer, customer_id, with_for_update=not db.is_sqlite)
        if customer is None and event.type == "registered":
            # A registration may be the first the engine hears of a customer.
            await session.exec(
                insert_ignoring_conflicts(db, Customer)
                .values(id=customer_id, children_ages=[], favourite_categories=[], attributes={}, created_at=utcnow())
                .on_conflict_do_nothing()
            )
            customer = await session.get(Customer, customer_id)
        if customer is None or customer.erased_at is not None:
            # An erased customer's events would write personal data back: refused alike.
            return RecordedEvent(
                AppEventResult(
                    event_id=event.event_id,
                    status="unknown_customer",
                    detail=f"customer_id {event.customer_id!r}: no such customer",
                )
            )
        inserted = await insert_event(
            db,
            session,
            type=event.type,
            occurred_at=at,
            event_id=stored_id,
            customer_id=customer_id,
            source=f"api:{tenant}",
            properties=event.properties,
        )
        if not inserted:
            return RecordedEvent(
                AppEventResult(event_id=event.event_id, status="duplicate", detail="already received; nothing done"),
                customer_id=customer_id,
            )
        await _update_profile(customer, event, at)
        session.add(customer)
        plan = await plan_event(
            session,
            customer,
            event.type,
            event.properties,
            specs=specs,
            now=at,
            event_id=stored_id,
            conversion=event.conversion is not False,
        )
        rows = enqueue(session, plan.signals, stored_id, lease)
        if not plan.starts:
            await _mark_routed(session, stored_id)
    result = AppEventResult(
        event_id=event.event_id, status="accepted", signalled=sorted({*plan.converted, *plan.exited})
    )
    log.info(
        "event.app",
        tenant=tenant,
        customer_id=customer_id,
        event_type=event.type,
        workflow_ids=result.signalled,
        starts=[s.spec.name for s in plan.starts],
    )
    return RecordedEvent(result, customer_id, rows, plan.starts, plan.not_entered)


async def pending_starts(
    db: Database, tenant: str, event: AppEvent, *, journeys: Sequence[JourneySpec] | None = None
) -> RecordedEvent | None:
    """For a stored event whose journeys did not all start (Temporal was down): plan the
    starts again (its signals were stored with it the first time). None when it was routed."""
    stored_id = f"{tenant}:{event.event_id}"
    async with db.session() as session:
        row = (await session.exec(select(EngagementEvent).where(EngagementEvent.event_id == stored_id))).first()
        if row is None or row.routed_at is not None or row.customer_id is None:
            return None
        customer = await session.get(Customer, row.customer_id)
        if customer is None:
            return None
        plan = await plan_event(
            session,
            customer,
            event.type,
            row.properties,
            specs=list(journeys) if journeys is not None else load_all_journeys(),
            now=_aware(row.occurred_at),
            event_id=stored_id,
            signals=False,
        )
    return RecordedEvent(
        AppEventResult(
            event_id=event.event_id, status="duplicate", detail="already received; its journeys started now"
        ),
        customer.id,
        starts=plan.starts,
        not_entered=plan.not_entered,
    )


async def _mark_routed(session: AsyncSession, stored_id: str) -> None:
    await session.exec(
        update(EngagementEvent).where(col(EngagementEvent.event_id) == stored_id).values(routed_at=utcnow())
    )


async def mark_routed(db: Database, tenant: str, event_id: str) -> None:
    """Remember that an application event started the journeys it triggers."""
    async with db.session() as session:
        await _mark_routed(session, f"{tenant}:{event_id}")
