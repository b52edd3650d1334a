"""Events in, signals out: record an event and signal the journeys it concerns.

Used by every webhook (engagement API, tracking links, provider receipts, application
events). Finding a journey is a database look-up (the delivery log for a message, the
journey runs for a customer), never a scan of Temporal. Trigger routing (starting new
journeys from events) belongs next to `signal_customer_journeys`.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.db import Database, insert_ignoring_conflicts
from core.logging import get_logger
from core.profiles import mark_contact_point, resolve_customer_id, set_consent
from models.events import AppEvent, AppEventResult, EngagementInput, EngagementType
from models.ids import MAX_LOYALTY_POINTS, MAX_PURCHASE_COUNT
from models.journey import REACTION_RANK, ChannelName
from models.profiles import ConsentIn
from models.tables import (
    ContactPoint,
    ContactStatus,
    Customer,
    Delivery,
    DeliveryStatus,
    EngagementEvent,
    JourneyRun,
    Topic,
    utcnow,
)
from workflows.cascade import CascadeJourney

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


def _writer(db: Database) -> AbstractAsyncContextManager[Any]:
    """Serialise this process's event transactions on SQLite.

    They hold the write lock across a signal; SQLite has one writer, and waiters left to its
    busy handler back off in sleeps of up to 100 ms, so queueing here is far faster.
    """
    return _SQLITE_WRITER if db.is_sqlite else nullcontext()


_SQLITE_WRITER = asyncio.Lock()


class EngineUnavailable(RuntimeError):
    """Temporal could not be reached: the caller should answer 503 so the sender retries."""


@dataclass(frozen=True)
class SignalResult:
    """Whether a signal reached a running journey, and if not, why."""

    workflow_id: str
    run_id: str | None
    signalled: bool
    detail: str
    finished: bool = False


@dataclass(frozen=True)
class DeliveryEventResult:
    """What an event about one message did."""

    delivery: Delivery
    recorded: bool
    signal: SignalResult | None
    detail: str


async def signal_run(client: Client, workflow_id: str, run_id: str | None, event: EngagementInput) -> SignalResult:
    """Signal one journey run; a finished or unknown run is reported, not raised.

    Raises EngineUnavailable when Temporal cannot be reached.
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        await handle.signal(CascadeJourney.engagement, event)
        return SignalResult(workflow_id, run_id, True, "signalled")
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            # Not a workflow id Temporal accepts: no such journey, not an outage.
            return SignalResult(workflow_id, run_id, False, "journey not found", finished=False)
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.warning("signal.failed", workflow_id=workflow_id, run_id=run_id, error=str(exc))
            raise EngineUnavailable("journey engine unavailable, retry later") from exc
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return SignalResult(workflow_id, run_id, False, "journey not found", finished=True)
        raise EngineUnavailable("journey engine unavailable, retry later") from exc
    status = description.status.name.lower() if description.status else "finished"
    return SignalResult(workflow_id, run_id, False, f"journey already {status}; event recorded", finished=True)


async def mark_run_finished(session: AsyncSession, workflow_id: str, run_id: str) -> None:
    """Note a run a signal found finished, so later events skip it without asking Temporal."""
    await session.exec(
        update(JourneyRun)
        .where(col(JourneyRun.workflow_id) == workflow_id, col(JourneyRun.run_id) == run_id)
        .values(finished_at=utcnow())
    )


async def _customer_ids(session: AsyncSession, customer_id: str) -> list[str]:
    # Runs started before a merge carry the old id; the survivor's runs carry the new one.
    survivor = await resolve_customer_id(session, customer_id)
    return list(dict.fromkeys([customer_id, survivor]))


async def running_journeys(
    session: AsyncSession, customer_id: str, *, marketing_only: bool = False
) -> list[JourneyRun]:
    """The customer's journey runs not yet known to be finished (journey_runs look-up).

    `marketing_only` leaves out runs that sent a transactional message: an unsubscribe
    from marketing must not stop an order-status journey.
    """
    ids = await _customer_ids(session, customer_id)
    runs = list(
        (
            await session.exec(
                select(JourneyRun)
                .where(col(JourneyRun.customer_id).in_(ids), col(JourneyRun.finished_at).is_(None))
                .order_by(col(JourneyRun.id))
            )
        ).all()
    )
    if marketing_only and runs:
        transactional = set(
            (
                await session.exec(
                    select(Delivery.run_id).where(
                        col(Delivery.run_id).in_([r.run_id for r in runs]), Delivery.topic == Topic.TRANSACTIONAL
                    )
                )
            ).all()
        )
        runs = [r for r in runs if r.run_id not in transactional]
    return runs


async def signal_customer_journeys(
    client: Client,
    db: Database,
    customer_id: str,
    event: EngagementInput,
    *,
    marketing_only: bool = False,
    extra_runs: list[tuple[str, str | None]] | None = None,
    session: AsyncSession | None = None,
) -> list[SignalResult]:
    """Signal every running journey of a customer (run-exact); mark the ones found finished.

    `extra_runs` are (workflow id, run id) pairs to signal as well (e.g. the run that sent
    the message being unsubscribed from, even if it was started without a journey_runs row).
    Pass `session` to do it inside the caller's transaction (SQLite has one writer).
    """
    if session is None:
        async with db.session() as own:
            return await signal_customer_journeys(
                client, db, customer_id, event, marketing_only=marketing_only, extra_runs=extra_runs, session=own
            )
    runs = await running_journeys(session, customer_id, marketing_only=marketing_only)
    targets = list(dict.fromkeys([*(extra_runs or []), *((r.workflow_id, r.run_id) for r in runs)]))
    results = [await signal_run(client, wf, run, event) for wf, run in targets]
    for result in results:
        if result.finished and result.run_id is not None:
            await mark_run_finished(session, result.workflow_id, result.run_id)
    log.info(
        "signal.customer_journeys",
        customer_id=customer_id,
        event_type=event.type.value,
        workflow_ids=[r.workflow_id for r in results if r.signalled],
    )
    return results


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
) -> DeliveryEventResult:
    """Record an event about a message and signal the run that sent it.

    The event row, the delivery's timeline and the contact point change in one
    transaction that stays open across the signal: if Temporal is unreachable nothing is
    written (EngineUnavailable -> 503, the sender retries), and a duplicate `event_id`
    (a provider retrying) is neither stored nor signalled twice. With `signal_repeats`
    False, an event the delivery's timeline already has (the tenth pixel load) is recorded
    but not signalled again, so no journey history fills up with repeats.
    """
    at = occurred_at or utcnow()
    bound = log.bind(workflow_id=delivery.workflow_id, delivery_id=delivery.id, event_type=event.value, source=source)
    async with _writer(db), db.session() as session:
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
        signal = None
        if signal_repeats or not repeat:
            signal_input = EngagementInput(
                type=event, step=delivery.step, message_id=delivery.provider_message_id, occurred_at=at
            )
            signal = await signal_run(client, delivery.workflow_id, delivery.run_id, signal_input)
            if signal.finished:
                await session.exec(
                    update(JourneyRun)
                    .where(
                        col(JourneyRun.workflow_id) == delivery.workflow_id, col(JourneyRun.run_id) == delivery.run_id
                    )
                    .values(finished_at=utcnow())
                )
    detail = signal.detail if signal else f"{event.value} already recorded for this message"
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
) -> UnsubscribeResult:
    """The customer opted out of marketing on a channel: contact point unsubscribed, consent
    withdrawn, an event recorded and their running marketing journeys signalled.

    `status=BLOCKED` for a customer who blocked the sender (a Telegram bot): then not
    even receipts can reach that address.

    Idempotent: a second unsubscribe of the same contact point changes and signals nothing.
    """
    async with db.session() as session:
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
    )
    extra: list[tuple[str, str | None]] = [(delivery.workflow_id, delivery.run_id)] if delivery else []
    # Recorded first: the opt-out must stick even if Temporal is down right now (the
    # contact point is unsubscribed, so no further message goes out on this channel).
    try:
        signals = await signal_customer_journeys(client, db, customer_id, event, marketing_only=True, extra_runs=extra)
    except EngineUnavailable:
        log.warning("unsubscribe.signal_deferred", customer_id=customer_id, channel=channel)
        signals = []
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


async def record_app_event(client: Client, db: Database, tenant: str, event: AppEvent) -> AppEventResult:
    """Store an application event on the profile and signal the customer's running journeys.

    Idempotent by (tenant, event_id): a repeat is neither stored nor signalled again. The
    event, the profile change and the signals share one transaction: if Temporal is
    unreachable nothing is kept (EngineUnavailable) and the sender's retry starts afresh.
    """
    at = event.occurred_at or utcnow()
    async with _writer(db), db.session() as session:
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
            return AppEventResult(
                event_id=event.event_id,
                status="unknown_customer",
                detail=f"customer_id {event.customer_id!r}: no such customer",
            )
        inserted = await insert_event(
            db,
            session,
            type=event.type,
            occurred_at=at,
            event_id=f"{tenant}:{event.event_id}",
            customer_id=customer_id,
            source=f"api:{tenant}",
            properties=event.properties,
        )
        if not inserted:
            return AppEventResult(event_id=event.event_id, status="duplicate", detail="already received; nothing done")
        await _update_profile(customer, event, at)
        session.add(customer)
        signalled: list[str] = []
        if event.is_conversion:
            results = await signal_customer_journeys(
                client,
                db,
                customer_id,
                EngagementInput(type=EngagementType.CONVERTED, occurred_at=at),
                session=session,
            )
            signalled = [r.workflow_id for r in results if r.signalled]
    log.info("event.app", tenant=tenant, customer_id=customer_id, event_type=event.type, workflow_ids=signalled)
    return AppEventResult(event_id=event.event_id, status="accepted", signalled=signalled)


async def routing_pending(db: Database, tenant: str, event_id: str) -> bool:
    """True when a stored application event has not been routed to its journeys yet."""
    async with db.session() as session:
        found = await session.exec(
            select(EngagementEvent.routed_at).where(EngagementEvent.event_id == f"{tenant}:{event_id}")
        )
        rows = found.all()
    return bool(rows) and rows[0] is None


async def mark_routed(db: Database, tenant: str, event_id: str) -> None:
    """Remember that an application event reached the journeys it triggers or ends."""
    async with db.session() as session:
        await session.exec(
            update(EngagementEvent)
            .where(col(EngagementEvent.event_id) == f"{tenant}:{event_id}")
            .values(routed_at=utcnow())
        )
