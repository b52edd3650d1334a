"""Unsubscribe: a customer opts out of marketing on a channel, and their journeys hear of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client

from cascade.events.outbox import PlannedSignal, SignalResult, deliver, enqueue, writer
from cascade.events.store import DEFAULT_LEASE, insert_event, signal_event_id
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.journeys.triggers import running_journeys
from cascade.profiles.service import mark_contact_point, resolve_customer_id, set_consent
from models.events import EngagementInput, EngagementType
from models.journey import ChannelName
from models.profiles import ConsentIn
from models.tables import ContactPoint, ContactStatus, Customer, Delivery, Topic, utcnow
from models.workflow_types import LOYALTY_LOOP

log = get_logger(__name__)


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
    signal_id = signal_event_id(None)
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
            targets.append((run.workflow_id, None if run.workflow_type == LOYALTY_LOOP else run.run_id))
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
