"""Reading a customer's reachability on one channel: one query per check."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_
from sqlmodel import Session, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.infra.db import in_sqlmodel_session
from models.tables import Consent, ContactPoint, ContactStatus, Customer, Topic

# Statuses that rule out every message; an unsubscribe rules out marketing only, since
# receipts and order updates are part of the service the customer asked for.
_DEAD = {ContactStatus.INVALID, ContactStatus.BOUNCED, ContactStatus.BLOCKED}


@dataclass(frozen=True)
class Reachability:
    """A customer and their best contact point on one channel, or why there is none."""

    customer: Customer | None
    contact: ContactPoint | None
    reason: str | None

    @property
    def usable(self) -> bool:
        """True when a message may be sent to `contact` now."""
        return self.contact is not None and self.reason is None


def _rank(cp: ContactPoint) -> tuple[bool, bool, int]:
    # Prefer a valid point, then one that is at least alive, then the newest.
    return (cp.status == ContactStatus.VALID, cp.status not in _DEAD, cp.id or 0)


def _why_not(cp: ContactPoint, consent: Consent | None, topic: Topic) -> str | None:
    if cp.status in _DEAD or (cp.status == ContactStatus.UNSUBSCRIBED and topic == Topic.MARKETING):
        return f"contact {cp.status}"
    if consent is not None and not consent.granted:
        return "no consent"
    if consent is None and topic == Topic.MARKETING:
        # Marketing needs a recorded opt-in; nobody is marketed to by default.
        return "no consent"
    return None


async def load_reachability(
    session: AsyncSession, customer_id: str, channel: str, topic: Topic = Topic.MARKETING
) -> Reachability:
    """The customer and the contact point to use on `channel` for `topic`, in a single query.

    A customer merged into another profile is followed to the survivor (a second query,
    only in that rare case).
    """
    return await session.run_sync(in_sqlmodel_session(reachability), customer_id, channel, topic)


def reachability(session: Session, customer_id: str, channel: str, topic: Topic = Topic.MARKETING) -> Reachability:
    """`load_reachability` in a synchronous session (Database.transaction)."""
    for _ in range(5):
        stmt = (
            select(Customer, ContactPoint, Consent)
            .outerjoin(
                ContactPoint,
                and_(col(ContactPoint.customer_id) == col(Customer.id), col(ContactPoint.channel) == channel),
            )
            .outerjoin(
                Consent,
                and_(
                    col(Consent.customer_id) == col(Customer.id),
                    col(Consent.channel) == channel,
                    col(Consent.topic) == topic.value,
                ),
            )
            .where(Customer.id == customer_id)
        )
        rows = session.exec(stmt).all()
        if not rows:
            return Reachability(None, None, "unknown customer")
        customer, _, consent = rows[0]
        if customer.merged_into is None:
            break
        customer_id = customer.merged_into
    if customer.erased_at is not None:
        return Reachability(customer, None, "customer erased")
    points = [cp for _, cp, _ in rows if cp is not None]
    if not points:
        return Reachability(customer, None, f"no {channel} contact")
    best = max(points, key=_rank)
    return Reachability(customer, best, _why_not(best, consent, topic))
