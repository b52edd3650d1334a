"""Reading a customer's reachability on one channel: one query per check."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import ContactPoint, ContactStatus, Customer


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


def _rank(cp: ContactPoint) -> tuple[int, int, int]:
    # Prefer a usable point, then a consented one, then the newest.
    return (cp.status == ContactStatus.VALID and cp.consent, cp.consent, cp.id or 0)


async def load_reachability(session: AsyncSession, customer_id: str, channel: str) -> Reachability:
    """The customer and the contact point to use on `channel`, in a single query."""
    stmt = (
        select(Customer, ContactPoint)
        .outerjoin(
            ContactPoint,
            and_(ContactPoint.customer_id == Customer.id, ContactPoint.channel == channel),  # type: ignore[arg-type]
        )
        .where(Customer.id == customer_id)
    )
    rows = (await session.exec(stmt)).all()
    if not rows:
        return Reachability(None, None, "unknown customer")
    customer = rows[0][0]
    points = [cp for _, cp in rows if cp is not None]
    if not points:
        return Reachability(customer, None, f"no {channel} contact")
    best = max(points, key=_rank)
    if best.status != ContactStatus.VALID:
        return Reachability(customer, best, f"contact {best.status}")
    if not best.consent:
        return Reachability(customer, best, "no consent")
    return Reachability(customer, best, None)
