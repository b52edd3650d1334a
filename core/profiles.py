"""Writing customer profiles: one transaction per customer, nothing half-written."""

from __future__ import annotations

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db import Database
from models.profiles import CustomerProfile
from models.tables import ContactPoint, ContactStatus, Customer, utcnow


async def mark_contact_point(
    session: AsyncSession, contact_point_id: int | None, status: ContactStatus, reason: str
) -> None:
    """Record what a provider or the customer told us about a contact point (why and when)."""
    await session.exec(
        update(ContactPoint)
        .where(col(ContactPoint.id) == contact_point_id)
        .values(status=status, status_reason=reason[:500], status_changed_at=utcnow())
    )


async def upsert_customer(db: Database, profile: CustomerProfile) -> None:
    """Create or update a customer and add/refresh their contact points."""
    async with db.session() as session:
        customer = await session.get(Customer, profile.id)
        if customer is None:
            customer = Customer(id=profile.id)
        customer.name = profile.name
        customer.timezone = profile.timezone
        customer.attributes = {**(customer.attributes or {}), **profile.attributes}
        session.add(customer)
        await session.flush()
        existing = {
            (cp.channel, cp.address): cp
            for cp in (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == profile.id))).all()
        }
        now = utcnow()
        for contact in profile.contacts:
            cp = existing.get((contact.channel.value, contact.address)) or ContactPoint(
                customer_id=profile.id, channel=contact.channel.value, address=contact.address
            )
            if contact.status is not None and cp.status != contact.status:
                cp.status, cp.status_changed_at = contact.status, now
            consent = contact.consent if contact.consent is not None else cp.consent
            if cp.consent != consent or cp.consent_at is None:
                cp.consent, cp.consent_at = consent, now
            cp.consent_source = contact.consent_source or cp.consent_source
            session.add(cp)
