"""GDPR access and erasure: everything we hold about a customer, and its removal.

Erasure removes personal data (names, addresses, attributes, message bodies) but keeps
the aggregates the business needs (which channel, when, what it cost, whether it was
opened), re-keyed to a pseudonym so funnels and cost reports stay correct.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select, update

from cascade.events.recency import refresh_event_recency
from cascade.infra.db import Database
from cascade.profiles.service import TYPED_FIELDS, ProfileError, delete_rows, resolve_customer_id
from models.tables import (
    Consent,
    ContactPoint,
    Customer,
    CustomerMerge,
    Delivery,
    EngagementEvent,
    ExternalId,
    JourneyRun,
    SandboxMessage,
    utcnow,
)


class UnknownCustomer(LookupError):
    """No profile has this id."""


class AlreadyErased(ProfileError):
    """The customer was erased before; nothing personal is left in the database."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"customer {customer_id!r} was already erased")
        self.customer_id = customer_id


def _rows(items: Any, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    return [item.model_dump(mode="json", exclude=exclude) for item in items]


async def export_profile(db: Database, customer_id: str) -> dict[str, Any]:
    """Everything stored about a customer (GDPR right of access), as JSON-ready data.

    A merged-away id exports the surviving profile, which holds the merged data.
    """
    async with db.session() as session:
        customer_id = await resolve_customer_id(session, customer_id)
        customer = await session.get(Customer, customer_id)
        if customer is None:
            raise UnknownCustomer(f"customer {customer_id!r} is not in the profile database")

        async def all_of(table: Any, *where: Any) -> list[Any]:
            return list((await session.exec(select(table).where(*where))).all())

        return {
            "profile": customer.model_dump(mode="json"),
            "merged_profiles": [c.id for c in await all_of(Customer, col(Customer.merged_into) == customer_id)],
            "external_ids": _rows(await all_of(ExternalId, ExternalId.customer_id == customer_id)),
            "contact_points": _rows(await all_of(ContactPoint, ContactPoint.customer_id == customer_id)),
            "consents": _rows(await all_of(Consent, Consent.customer_id == customer_id)),
            "merges": _rows(await all_of(CustomerMerge, CustomerMerge.survivor_id == customer_id)),
            "journeys": _rows(await all_of(JourneyRun, JourneyRun.customer_id == customer_id)),
            "messages": _rows(await all_of(Delivery, Delivery.customer_id == customer_id), exclude={"claimed_until"}),
            "events": _rows(await all_of(EngagementEvent, EngagementEvent.customer_id == customer_id)),
        }


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed and the pseudonym the kept aggregates now carry."""

    customer_id: str
    pseudonym: str
    removed: dict[str, int]
    kept: dict[str, int]


def pseudonym(customer_id: str) -> str:
    """A stable id that stands in for an erased customer in kept aggregates."""
    return "erased-" + hashlib.sha256(customer_id.encode()).hexdigest()[:20]


async def erase_customer(db: Database, customer_id: str) -> ErasureReport:
    """Erase a customer's personal data (GDPR right to erasure), in one transaction.

    Removed: profile fields and custom attributes, contact points (emails, phones,
    tokens), consents, external ids, message copies in the sandbox outbox, event
    properties, and the same for every profile merged into this one. Kept, under a
    pseudonym: the delivery log (channel, step, status times, cost) and event types
    and times, so reports do not change. Running journeys stop sending on their own:
    the next eligibility check finds the customer erased.
    """
    async with db.session() as session:
        customer_id = await resolve_customer_id(session, customer_id)
        customer = await session.get(Customer, customer_id)
        if customer is None:
            raise UnknownCustomer(f"customer {customer_id!r} is not in the profile database")
        if customer.erased_at is not None:
            raise AlreadyErased(customer_id)
        merged = list((await session.exec(select(Customer.id).where(col(Customer.merged_into) == customer_id))).all())
        ids = [customer_id, *merged]
        alias = pseudonym(customer_id)
        addresses = list(
            (await session.exec(select(ContactPoint.address).where(col(ContactPoint.customer_id).in_(ids)))).all()
        )
        removed = {
            "outbox_messages": await delete_rows(session, SandboxMessage, col(SandboxMessage.to_address).in_(addresses))
            if addresses
            else 0,
            "contact_points": await delete_rows(session, ContactPoint, col(ContactPoint.customer_id).in_(ids)),
            "consents": await delete_rows(session, Consent, col(Consent.customer_id).in_(ids)),
            "external_ids": await delete_rows(session, ExternalId, col(ExternalId.customer_id).in_(ids)),
            "merged_profiles": len(merged),
        }
        kept = {}
        for table in (Delivery, EngagementEvent, JourneyRun):
            values: dict[str, Any] = {"customer_id": alias}
            if table is EngagementEvent:
                values["properties"] = {}
            if table is Delivery:
                # Provider texts quote the address ("550 ann@example.com: no such user").
                values["failure_reason"] = None
            result = await session.exec(update(table).where(col(table.customer_id).in_(ids)).values(**values))
            kept[str(table.__tablename__)] = int(result.rowcount)
        # The erased ids' event times go with their events, to the alias.
        await refresh_event_recency(await session.connection(), [*ids, alias])
        await session.exec(
            update(CustomerMerge).where(col(CustomerMerge.survivor_id).in_(ids)).values(details={}, survivor_id=alias)
        )
        await session.exec(update(CustomerMerge).where(col(CustomerMerge.merged_id).in_(ids)).values(merged_id=alias))
        blank: dict[str, Any] = {
            name: Customer.model_fields[name].get_default(call_default_factory=True) for name in TYPED_FIELDS
        }
        now = utcnow()
        await session.exec(
            update(Customer)
            .where(col(Customer.id).in_(ids))
            .values(**blank, attributes={}, erased_at=now, updated_at=now)
        )
    return ErasureReport(customer_id=customer_id, pseudonym=alias, removed=removed, kept=kept)
