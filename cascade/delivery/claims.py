"""The send claim protocol: at most one attempt calls the provider for an idempotency key.

Every send has one row in the delivery log (models.tables.Delivery), keyed by its
idempotency key. An attempt claims the row for a lease (`claimed_until`), renews the
lease while the provider call runs, and settles the row with the outcome: sent, failed,
`unknown` (the provider may have taken it and cannot be asked again), or released for
the next attempt when nothing went out. A lease that runs out without a result means the
attempt's worker was lost mid-send. The activities (activities/journey.py) call these
functions; the rules here know nothing of Temporal, so "another attempt holds the claim"
is the SendInProgress exception, which the activity turns into a retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Update, and_, or_, text
from sqlmodel import Session, col, delete, select, update

from cascade.infra.db import Database, as_utc, insert_ignoring_conflicts
from cascade.journeys.rules import cap_frees_at
from cascade.profiles.service import mark_contact_point
from models.activities import FailureCode, SendMessageInput, SendMessageResult, SettleDeliveryResult
from models.journey import FrequencyCap
from models.tables import ContactStatus, Delivery, DeliveryStatus, Topic, utcnow

ALREADY_SENT = {
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.OPENED,
    DeliveryStatus.CLICKED,
}
CRASHED = "an earlier attempt claimed the send and ended without a result (worker lost mid-send)"
UNKNOWN = SendMessageResult(status="unknown", reason=FailureCode.OUTCOME_UNKNOWN)


class SendInProgress(Exception):
    """Another live attempt holds the claim (or its outcome decides): try again after `retry_after`."""

    def __init__(self, reason: str, retry_after: timedelta | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def finished_result(row: Delivery) -> SendMessageResult | None:
    """The result an earlier attempt already reached for this delivery, if it finished."""
    if row.status in ALREADY_SENT:
        return SendMessageResult(status="sent", message_id=row.provider_message_id, cost=row.cost, duplicate=True)
    if row.status == DeliveryStatus.FAILED:
        return SendMessageResult(status="failed", reason=row.failure_code or FailureCode.PROVIDER_REJECTED)
    if row.status == DeliveryStatus.UNKNOWN:
        return UNKNOWN
    return None


async def claim_send(
    db: Database,
    input: SendMessageInput,
    customer_id: str,
    contact_point_id: int | None,
    content_hash: str,
    lease: timedelta,
    idempotent: bool,
    currency: str,
    also: Callable[[Session], None] | None = None,
) -> SendMessageResult | int:
    """Make this attempt the only one that may call the provider for this key.

    Returns the attempt number it claimed, or the result when there is nothing to
    send: an earlier attempt finished it, an earlier attempt vanished mid-send on a
    provider without idempotency keys (`unknown`), or the frequency cap is full
    (`postponed`). The cap is counted in the same transaction as the claim, under
    a per-customer lock, so two journeys of one customer cannot both take the last
    slot. Raises SendInProgress while another live attempt holds the claim. `also`
    writes what belongs with the claim (the tracking row, the run row) in the same
    transaction: on SQLite every write transaction waits for the one writer.
    """
    outcome = await db.transaction(
        _claim, db, input, customer_id, contact_point_id, content_hash, lease, idempotent, currency, also
    )
    if isinstance(outcome, SendInProgress):
        # Raised after the commit: what `also` wrote stays, as it did before.
        raise outcome
    return outcome


def _claim(
    session: Session,
    db: Database,
    input: SendMessageInput,
    customer_id: str,
    contact_point_id: int | None,
    content_hash: str,
    lease: timedelta,
    idempotent: bool,
    currency: str,
    also: Callable[[Session], None] | None,
) -> SendMessageResult | int | SendInProgress:
    now = utcnow()
    cap = input.frequency_cap if input.topic == Topic.MARKETING else None
    if cap is not None and not db.is_sqlite:
        # One customer's claims one after another; SQLite gets the same from the
        # insert below, which takes the database's single write lock first.
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(customer_id)})
    if also is not None:
        also(session)
    # Without a cap to count first, a new row is inserted already claimed by attempt
    # 1: the common case (a first attempt) is one statement, not an insert, two reads
    # and a claiming update. A row that exists (a retry, a repeat) inserts nothing
    # and is judged below as before.
    claim_now = cap is None
    inserted = session.connection().execute(
        insert_ignoring_conflicts(db, Delivery)
        .values(
            idempotency_key=input.idempotency_key,
            workflow_id=input.workflow_id,
            run_id=input.run_id,
            journey=input.journey,
            step=input.step,
            customer_id=customer_id,
            channel=input.channel.value,
            topic=input.topic.value,
            contact_point_id=contact_point_id,
            status=DeliveryStatus.QUEUED,
            content_hash=content_hash,
            currency=currency,
            variant=input.variant,
            claimed_until=now + lease if claim_now else None,
            attempts=1 if claim_now else 0,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    if claim_now and inserted.rowcount == 1:
        return 1
    row = delivery_row(session, input.idempotency_key)
    if (finished := finished_result(row)) is not None:
        return finished
    if dangling(row, now) and not idempotent and mark_unknown(session, row, CRASHED):
        return UNKNOWN
    if row.claimed_until is None or as_utc(row.claimed_until) < now:
        if cap is not None and (postponed := cap_full(session, input, customer_id, cap, now)):
            if row.attempts == 0:
                # Nothing was tried yet: no row until the send really starts.
                session.exec(
                    delete(Delivery)
                    .where(col(Delivery.id) == row.id, col(Delivery.attempts) == 0)
                    .execution_options(synchronize_session=False)
                )
            return postponed
        claimed = session.exec(
            update(Delivery)
            .where(
                col(Delivery.idempotency_key) == input.idempotency_key,
                col(Delivery.status) == DeliveryStatus.QUEUED,
                or_(col(Delivery.claimed_until).is_(None), col(Delivery.claimed_until) < now),
            )
            .values(claimed_until=now + lease, attempts=col(Delivery.attempts) + 1)
            # The row object is re-read below; SQLite's zone-less timestamps
            # cannot be compared in Python to keep it in step.
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:
            return delivery_row(session, input.idempotency_key).attempts
        row = delivery_row(session, input.idempotency_key)
        if (finished := finished_result(row)) is not None:
            return finished
    remaining = (as_utc(row.claimed_until) - now) if row.claimed_until is not None else lease
    return SendInProgress(
        "another attempt is sending this message; retrying after it finishes", max(remaining, timedelta(seconds=1))
    )


def cap_full(
    session: Session, input: SendMessageInput, customer_id: str, cap: FrequencyCap, now: datetime
) -> SendMessageResult | None:
    """None if one more marketing message fits the cap now, else `postponed` until it does.

    Counts the customer's marketing sends in the window over all journeys: sent ones,
    `unknown` ones (they may have arrived), and ones another attempt is sending right
    now. When only those in flight fill the cap, their outcome decides: SendInProgress.
    """
    at = max(input.at or now, now)
    since = at - cap.per
    rows = session.exec(
        select(Delivery.status, Delivery.sent_at, Delivery.created_at, Delivery.claimed_until).where(
            col(Delivery.customer_id) == customer_id,
            col(Delivery.topic) == Topic.MARKETING.value,
            col(Delivery.idempotency_key) != input.idempotency_key,
            or_(
                col(Delivery.sent_at) > since,
                and_(col(Delivery.status) == DeliveryStatus.UNKNOWN, col(Delivery.created_at) > since),
                and_(col(Delivery.status) == DeliveryStatus.QUEUED, col(Delivery.claimed_until) >= now),
            ),
        )
    ).all()
    settled = [sent_at or created_at for status, sent_at, created_at, _ in rows if status != DeliveryStatus.QUEUED]
    in_flight = [at for status, *_ in rows if status == DeliveryStatus.QUEUED]
    if (frees := cap_frees_at(cap, [*settled, *in_flight], at)) is None:
        return None
    if in_flight and cap_frees_at(cap, settled, at) is None:
        raise SendInProgress(
            "the frequency cap is full only with sends still in flight; retrying when they finish",
            timedelta(seconds=2),
        )
    return SendMessageResult(status="postponed", reason=f"frequency cap {cap.max} per {cap.per}", wake_at=frees)


def _held_claim(idempotency_key: str, attempt: int) -> Update:
    # Only the attempt that still holds the claim may touch it: a late attempt whose lease
    # ran out must not undo what the next one did.
    return update(Delivery).where(
        col(Delivery.idempotency_key) == idempotency_key,
        col(Delivery.status) == DeliveryStatus.QUEUED,
        col(Delivery.attempts) == attempt,
    )


async def renew_claim(db: Database, idempotency_key: str, attempt: int, lease: timedelta) -> None:
    """Extend the lease of the claim `attempt` holds (nothing if it no longer holds it)."""
    async with db.session() as session:
        await session.exec(_held_claim(idempotency_key, attempt).values(claimed_until=utcnow() + lease))


async def record_sent(db: Database, idempotency_key: str, provider_message_id: str, cost: float) -> None:
    """The provider took the message: settle the row as sent, with its id and cost."""
    await db.transaction(_record_sent, idempotency_key, provider_message_id, cost, utcnow())


def _record_sent(session: Session, idempotency_key: str, provider_message_id: str, cost: float, at: datetime) -> None:
    session.connection().execute(
        update(Delivery)
        .where(
            col(Delivery.idempotency_key) == idempotency_key,
            # An attempt whose claim ran out may have been settled `unknown` by
            # another; the provider's answer is the truth.
            col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.UNKNOWN]),
        )
        .values(
            status=DeliveryStatus.SENT,
            provider_message_id=provider_message_id,
            sent_at=at,
            cost=cost,
            claimed_until=None,
        )
        # No ORM objects in this session to keep in step: skips evaluating the WHERE
        # clause in Python against the identity map (measurable at a send per journey).
        .execution_options(synchronize_session=False)
    )


async def release_claim(db: Database, idempotency_key: str, attempt: int, code: str, reason: str) -> None:
    """Nothing reached the customer: let the next attempt claim at once.

    The last error stays on the row for whoever looks (the workflow gets only the code).
    """
    async with db.session() as session:
        await session.exec(
            _held_claim(idempotency_key, attempt).values(
                claimed_until=None, failure_code=code, failure_reason=reason[:1000]
            )
        )


async def set_status(
    db: Database,
    idempotency_key: str,
    status: DeliveryStatus,
    code: str,
    reason: str,
    *,
    attempt: int | None = None,
    failed: bool = False,
) -> None:
    """Settle a queued or unknown row as `status` (only `attempt`'s claim, when given)."""
    async with db.session() as session:
        await session.exec(_settle_row(idempotency_key, status, code, reason, attempt=attempt, failed=failed))


def _settle_row(
    idempotency_key: str,
    status: DeliveryStatus,
    code: str,
    reason: str,
    *,
    attempt: int | None = None,
    failed: bool = False,
) -> Update:
    conditions = [
        col(Delivery.idempotency_key) == idempotency_key,
        col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.UNKNOWN]),
    ]
    if attempt is not None:
        conditions.append(col(Delivery.attempts) == attempt)
    values: dict[str, object] = {
        "status": status,
        "failure_code": code,
        "failure_reason": reason[:1000],
        "claimed_until": None,
    }
    if failed:
        values["failed_at"] = utcnow()
    return update(Delivery).where(*conditions).values(**values)


async def record_permanent_failure(
    db: Database,
    idempotency_key: str,
    contact_point_id: int | None,
    code: str,
    reason: str,
    contact_status: ContactStatus | None,
) -> None:
    """The provider will never deliver it: settle the row failed and mark the contact point."""
    async with db.session() as session:
        # One transaction with the contact point's mark: a failed row always has it.
        await session.exec(_settle_row(idempotency_key, DeliveryStatus.FAILED, code, reason, failed=True))
        if contact_status is not None:
            # None: the provider refused this message, not the address (e.g. an
            # unknown WhatsApp template); the contact stays usable.
            await mark_contact_point(session, contact_point_id, contact_status, reason)


async def settle(db: Database, idempotency_key: str) -> tuple[SettleDeliveryResult, Delivery | None]:
    """What became of a send, from the delivery log; a claim that ended without a result becomes `unknown`.

    Returns the verdict and, when this call settled the row `unknown`, the row (for the
    caller's log). Raises SendInProgress while an attempt's claim is still live.
    """
    return await db.transaction(_settle, idempotency_key, utcnow())


def _settle(session: Session, idempotency_key: str, now: datetime) -> tuple[SettleDeliveryResult, Delivery | None]:
    row = session.exec(select(Delivery).where(Delivery.idempotency_key == idempotency_key)).one_or_none()
    if row is None:
        return SettleDeliveryResult(status="not_sent"), None
    if (finished := finished_result(row)) is not None:
        return (
            SettleDeliveryResult(status=finished.status, message_id=finished.message_id, reason=finished.reason),
            None,
        )
    if row.claimed_until is None:
        # Every attempt so far released its claim: none reached the provider.
        return SettleDeliveryResult(status="not_sent", reason=row.failure_code), None
    if as_utc(row.claimed_until) >= now:
        raise SendInProgress(
            "a send attempt is still running", max(as_utc(row.claimed_until) - now, timedelta(seconds=1))
        )
    if not mark_unknown(session, row, CRASHED):
        raise SendInProgress("the delivery changed while settling it")
    return SettleDeliveryResult(status="unknown", reason=FailureCode.OUTCOME_UNKNOWN), row


def dangling(row: Delivery, now: datetime) -> bool:
    """Claimed by an attempt that neither finished nor released it, and its lease is over."""
    return row.status == DeliveryStatus.QUEUED and row.claimed_until is not None and as_utc(row.claimed_until) < now


def mark_unknown(session: Session, row: Delivery, reason: str) -> bool:
    """Settle a dangling claim as `unknown`; False if another attempt changed the row first."""
    result = session.exec(
        update(Delivery)
        .where(
            col(Delivery.idempotency_key) == row.idempotency_key,
            col(Delivery.status) == DeliveryStatus.QUEUED,
            col(Delivery.attempts) == row.attempts,
            col(Delivery.claimed_until).is_not(None),
        )
        .values(
            status=DeliveryStatus.UNKNOWN,
            failure_code=FailureCode.OUTCOME_UNKNOWN,
            failure_reason=reason,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


def delivery_row(session: Session, idempotency_key: str) -> Delivery:
    """The delivery row of `idempotency_key`, read fresh from the database."""
    row = session.exec(select(Delivery).where(Delivery.idempotency_key == idempotency_key)).one()
    # A fresh read every time: the session must not answer from its identity map.
    session.refresh(row)
    return row


def lock_key(customer_id: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, one per customer."""
    return int.from_bytes(hashlib.sha256(f"cascade-cap:{customer_id}".encode()).digest()[:8], "big", signed=True)
