"""Writing customer profiles: one transaction per customer, nothing half-written.

A profile is applied field by field (what the shop left out stays as it was), its
contact points and consents are upserted, and any other profile that shares one of
its emails or phone numbers is merged into the older of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, tuple_
from sqlmodel import Session, col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.events.recency import refresh_event_recency
from cascade.infra.db import Database, in_sqlmodel_session, insert_ignoring_conflicts
from models.events import AppEvent
from models.ids import MAX_LOYALTY_POINTS, MAX_PURCHASE_COUNT
from models.journey import ChannelName
from models.profiles import PHONE_CHANNELS, ConsentIn, CustomerProfile
from models.tables import (
    Consent,
    ContactPoint,
    ContactStatus,
    Customer,
    CustomerMerge,
    Delivery,
    EngagementEvent,
    ExternalId,
    JourneyRun,
    Topic,
    utcnow,
)

# The source of a marketing opt-in that nobody stated: a contact added without a decision.
IMPLIED_CONSENT = "implied: contact added without a consent decision"
# Contact points that identify a person: two profiles sharing one are the same customer.
IDENTITY_CHANNELS = {ChannelName.EMAIL.value, *(c.value for c in PHONE_CHANNELS)}
TYPED_FIELDS = (
    "name",
    "gender",
    "birth_date",
    "timezone",
    "city",
    "language",
    "children_ages",
    "favourite_categories",
    "purchase_count",
    "last_purchase_at",
    "loyalty_points",
    "preferred_channel",
)


class ProfileError(ValueError):
    """A profile write that would break the single customer view (e.g. an erased customer)."""


@dataclass
class UpsertResult:
    """What a profile write did: created or updated, and which profiles were merged in."""

    customer_id: str
    created: bool
    merged: list[str] = field(default_factory=list)


async def mark_contact_point(
    session: AsyncSession, contact_point_id: int | None, status: ContactStatus, reason: str
) -> None:
    """Record what a provider or the customer told us about a contact point (why and when)."""
    await session.exec(
        update(ContactPoint)
        .where(col(ContactPoint.id) == contact_point_id)
        .values(status=status, status_reason=reason[:500], status_changed_at=utcnow())
    )


def template_fields(customer: Customer) -> dict[str, Any]:
    """What templates and segments see of a customer: typed fields, then custom attributes.

    Custom attributes are also reachable flat (`{{ shoe_size }}`) for short templates, but
    never shadow a typed field or the customer id.
    """
    typed = {name: getattr(customer, name) for name in TYPED_FIELDS}
    return {**customer.attributes, **typed, "customer_id": customer.id, "attributes": customer.attributes}


async def resolve_customer_id(session: AsyncSession, customer_id: str) -> str:
    """The surviving profile's id for `customer_id` (itself unless it was merged away)."""
    seen = {customer_id}
    current = customer_id
    while True:
        merged_into = (await session.exec(select(Customer.merged_into).where(Customer.id == current))).one_or_none()
        if merged_into is None or merged_into in seen:
            return current
        seen.add(merged_into)
        current = merged_into


async def surviving_customer(session: AsyncSession, customer_id: str) -> Customer | None:
    """The customer row of `customer_id`, or of the profile it was merged into; None if unknown.

    One query when the profile was never merged (the common case), where resolving the
    id and then loading the row took two.
    """
    return await session.run_sync(in_sqlmodel_session(survivor), customer_id)


def survivor(session: Session, customer_id: str) -> Customer | None:
    """`surviving_customer` in a synchronous session (Database.transaction)."""
    seen = {customer_id}
    customer = session.get(Customer, customer_id)
    while customer is not None and customer.merged_into is not None and customer.merged_into not in seen:
        seen.add(customer.merged_into)
        customer = session.get(Customer, customer.merged_into)
    return customer


async def set_consent(session: AsyncSession, customer_id: str, consent: ConsentIn, at: datetime | None = None) -> None:
    """Record a consent decision; the latest decision for a channel and topic wins."""
    at = at or utcnow()
    existing = (
        await session.exec(
            select(Consent).where(
                Consent.customer_id == customer_id,
                Consent.channel == consent.channel.value,
                Consent.topic == consent.topic.value,
            )
        )
    ).one_or_none()
    if existing is None:
        session.add(
            Consent(
                customer_id=customer_id,
                channel=consent.channel.value,
                topic=consent.topic.value,
                granted=consent.granted,
                source=consent.source,
                changed_at=at,
            )
        )
    elif existing.granted != consent.granted or consent.source:
        existing.granted, existing.source, existing.changed_at = consent.granted, consent.source, at
        session.add(existing)


async def set_consent_if_unset(session: AsyncSession, customer_id: str, channel: str, at: datetime) -> None:
    """Record the implied marketing opt-in of a newly added contact, unless a decision exists."""
    found = (
        await session.exec(
            select(Consent.id).where(
                Consent.customer_id == customer_id, Consent.channel == channel, Consent.topic == Topic.MARKETING.value
            )
        )
    ).first()
    if found is None:
        session.add(
            Consent(
                customer_id=customer_id,
                channel=channel,
                topic=Topic.MARKETING.value,
                granted=True,
                source=IMPLIED_CONSENT,
                changed_at=at,
            )
        )
        await session.flush()


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without a zone; everything we store is UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _decision_wins(theirs: Consent, mine: Consent) -> bool:
    """Whether the absorbed profile's consent decision replaces the survivor's in a merge.

    A withdrawal beats a yes that was only implied by adding a contact; otherwise the
    more recent decision wins.
    """
    if theirs.granted != mine.granted:
        grant = mine if mine.granted else theirs
        if grant.source == IMPLIED_CONSENT:
            return not theirs.granted
    return bool(_aware(theirs.changed_at) > _aware(mine.changed_at))  # type: ignore[operator]


async def upsert_customer(db: Database, profile: CustomerProfile) -> UpsertResult:
    """Create or update a customer with their contact points, consents and external ids.

    All of it happens in one transaction: a profile is never half-written. Profiles that
    share one of its emails or phone numbers are merged into one (the older survives).
    """
    async with db.session() as session:
        return await apply_profile(db, session, profile)


async def apply_profile(db: Database, session: AsyncSession, profile: CustomerProfile) -> UpsertResult:
    """`upsert_customer` inside a transaction the caller owns (imports batch many)."""
    customer_id = await resolve_customer_id(session, profile.id)
    # Insert-or-ignore first: two writers creating the same customer at once both succeed.
    inserted = await session.exec(
        insert_ignoring_conflicts(db, Customer)
        .values(id=customer_id, children_ages=[], favourite_categories=[], attributes={}, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    created = bool(inserted.rowcount)
    customer = await session.get(Customer, customer_id, with_for_update=not db.is_sqlite)
    assert customer is not None
    if customer.erased_at is not None:
        raise ProfileError(f"customer {customer_id!r} was erased; a new profile needs a new id")
    for name in TYPED_FIELDS:
        value = getattr(profile, name)
        if value is not None:
            setattr(customer, name, value.value if name == "preferred_channel" else value)
    if profile.attributes:
        customer.attributes = {**(customer.attributes or {}), **profile.attributes}
    customer.updated_at = utcnow()
    session.add(customer)

    for source, external_id in profile.external_ids.items():
        await session.exec(
            insert_ignoring_conflicts(db, ExternalId)
            .values(customer_id=customer_id, source=source, external_id=external_id, created_at=utcnow())
            .on_conflict_do_nothing()
        )

    existing = {
        (cp.channel, cp.address): cp
        for cp in (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == customer_id))).all()
    }
    now = utcnow()
    for contact in profile.contacts:
        key = (contact.channel.value, contact.address)
        cp = existing.get(key)
        if cp is None:
            cp = ContactPoint(customer_id=customer_id, channel=key[0], address=key[1], status_changed_at=now)
            existing[key] = cp
            if contact.consent is None:
                # The shop imports a contact it may message unless it says otherwise, but
                # an implied yes never overrides a decision the customer already made.
                await set_consent_if_unset(session, customer_id, contact.channel.value, now)
        if contact.status is not None and cp.status != contact.status:
            cp.status, cp.status_changed_at = contact.status, now
        session.add(cp)
        if contact.consent is not None:
            await set_consent(
                session,
                customer_id,
                ConsentIn(
                    channel=contact.channel,
                    topic=Topic.MARKETING,
                    granted=contact.consent,
                    source=contact.consent_source,
                ),
                now,
            )
    for consent_in in profile.consents:
        await set_consent(session, customer_id, consent_in, now)
    await session.flush()

    merged = []
    for other in await _profiles_sharing_identity(session, customer_id, profile):
        survivor, absorbed = await _older_first(session, customer_id, other)
        await merge_customers(session, survivor, absorbed, reason="share an email or phone number")
        merged.append(absorbed)
        customer_id = survivor
    return UpsertResult(customer_id=customer_id, created=created, merged=merged)


def identity_keys(profile: CustomerProfile) -> list[tuple[str, str]]:
    """The (channel, address) pairs that identify the person: emails and phones.

    A phone counts on every phone channel: the same number on SMS, WhatsApp and voice
    is the same person.
    """
    keys: set[tuple[str, str]] = {
        (c.channel.value, c.address) for c in profile.contacts if c.channel.value in IDENTITY_CHANNELS
    }
    phones = {address for channel, address in keys if channel != ChannelName.EMAIL.value}
    keys |= {(channel, phone) for phone in phones for channel in IDENTITY_CHANNELS - {ChannelName.EMAIL.value}}
    return sorted(keys)


async def _profiles_sharing_identity(session: AsyncSession, customer_id: str, profile: CustomerProfile) -> list[str]:
    keys = identity_keys(profile)
    ids: list[str] = []
    if keys:
        rows = await session.exec(
            select(ContactPoint.customer_id)
            .join(Customer, col(Customer.id) == col(ContactPoint.customer_id))
            .where(
                tuple_(col(ContactPoint.channel), col(ContactPoint.address)).in_(set(keys)),
                col(ContactPoint.customer_id) != customer_id,
                col(Customer.merged_into).is_(None),
                col(Customer.erased_at).is_(None),
            )
            .distinct()
        )
        ids = sorted(rows.all())
    external = list(profile.external_ids.items())
    if external:
        rows2 = await session.exec(
            select(ExternalId.customer_id).where(
                or_(*(and_source(s, e) for s, e in external)),
                col(ExternalId.customer_id) != customer_id,
            )
        )
        ids += [i for i in rows2.all() if i not in ids]
    return ids


def and_source(source: str, external_id: str) -> Any:
    """SQL condition: this external id of this source."""
    return (col(ExternalId.source) == source) & (col(ExternalId.external_id) == external_id)


async def _older_first(session: AsyncSession, a: str, b: str) -> tuple[str, str]:
    rows = (await session.exec(select(Customer.id, Customer.created_at).where(col(Customer.id).in_([a, b])))).all()
    created = dict(rows)
    return (a, b) if (created[a], a) <= (created[b], b) else (b, a)


def _snapshot(customer: Customer) -> dict[str, Any]:
    data = customer.model_dump(mode="json", include={*TYPED_FIELDS, "attributes", "created_at"})
    return {k: v for k, v in data.items() if v not in (None, [], {}, 0)}


async def merge_customers(session: AsyncSession, survivor_id: str, merged_id: str, reason: str) -> CustomerMerge:
    """Merge profile `merged_id` into `survivor_id`, keeping every contact point and history row.

    The survivor keeps its own values and takes the merged profile's where it has none;
    counts add up; the more recent consent decision and the worse contact status win
    (an unsubscribe or bounce is never lost). The merged profile stays as a pointer to
    the survivor, so journeys and events that know the old id still find the customer.
    """
    survivor = await session.get(Customer, survivor_id)
    merged = await session.get(Customer, merged_id)
    if survivor is None or merged is None:
        raise ProfileError(f"cannot merge {merged_id!r} into {survivor_id!r}: unknown customer")
    snapshot = _snapshot(merged)
    moved: dict[str, int] = {}

    for name in TYPED_FIELDS:
        mine, theirs = getattr(survivor, name), getattr(merged, name)
        if name in ("purchase_count", "loyalty_points"):
            setattr(survivor, name, (mine or 0) + (theirs or 0))
        elif name == "last_purchase_at":
            known = [d for d in (_aware(mine), _aware(theirs)) if d is not None]
            setattr(survivor, name, max(known, default=None))
        elif name in ("children_ages", "favourite_categories"):
            setattr(survivor, name, list(dict.fromkeys([*(mine or []), *(theirs or [])])))
        elif mine is None or (name == "timezone" and mine == "UTC"):
            setattr(survivor, name, theirs)
    survivor.attributes = {**(merged.attributes or {}), **(survivor.attributes or {})}
    survivor.updated_at = utcnow()

    ours = {
        (cp.channel, cp.address): cp
        for cp in (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == survivor_id))).all()
    }
    theirs_points = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == merged_id))).all()
    moved["contact_points"] = 0
    for cp in theirs_points:
        twin = ours.get((cp.channel, cp.address))
        if twin is None:
            cp.customer_id = survivor_id
            session.add(cp)
            moved["contact_points"] += 1
            continue
        if cp.status != ContactStatus.VALID and (twin.status == ContactStatus.VALID or _later(cp, twin)):
            twin.status, twin.status_reason, twin.status_changed_at = cp.status, cp.status_reason, cp.status_changed_at
            session.add(twin)
        await session.exec(
            update(Delivery).where(col(Delivery.contact_point_id) == cp.id).values(contact_point_id=twin.id)
        )
        await session.delete(cp)
    await session.flush()

    our_consents = {
        (c.channel, c.topic): c
        for c in (await session.exec(select(Consent).where(Consent.customer_id == survivor_id))).all()
    }
    moved["consents"] = 0
    for consent in (await session.exec(select(Consent).where(Consent.customer_id == merged_id))).all():
        mine_c = our_consents.get((consent.channel, consent.topic))
        if mine_c is None:
            consent.customer_id = survivor_id
            session.add(consent)
            moved["consents"] += 1
        else:
            if _decision_wins(consent, mine_c):
                mine_c.granted, mine_c.source, mine_c.changed_at = consent.granted, consent.source, consent.changed_at
                session.add(mine_c)
            await session.delete(consent)

    for table in (ExternalId, Delivery, EngagementEvent, JourneyRun):
        result = await session.exec(
            update(table).where(col(table.customer_id) == merged_id).values(customer_id=survivor_id)
        )
        moved[str(table.__tablename__)] = result.rowcount
    # The survivor's latest events now include the absorbed profile's.
    await refresh_event_recency(await session.connection(), [merged_id, survivor_id])
    # Profiles merged into the absorbed one earlier now point at the survivor directly.
    await session.exec(update(Customer).where(col(Customer.merged_into) == merged_id).values(merged_into=survivor_id))

    for name in TYPED_FIELDS:
        default = Customer.model_fields[name].get_default(call_default_factory=True)
        setattr(merged, name, default)
    merged.attributes = {}
    merged.merged_into = survivor_id
    merged.updated_at = utcnow()
    session.add_all([survivor, merged])
    record = CustomerMerge(
        survivor_id=survivor_id, merged_id=merged_id, reason=reason, details={"moved": moved, "profile": snapshot}
    )
    session.add(record)
    await session.flush()
    return record


def _later(a: ContactPoint, b: ContactPoint) -> bool:
    mine, theirs = _aware(a.status_changed_at), _aware(b.status_changed_at)
    if mine is None or theirs is None:
        return theirs is None
    return mine > theirs


async def delete_rows(session: AsyncSession, table: Any, *conditions: Any) -> int:
    """DELETE with conditions; returns the number of rows removed."""
    result = await session.exec(delete(table).where(*conditions))
    return int(result.rowcount)


def apply_app_event(customer: Customer, event: AppEvent, at: datetime) -> None:
    """Change the profile as an application event says (purchase totals, cart, last page); no I/O."""
    attributes = dict(customer.attributes or {})
    if event.type == "purchase":
        # Saturating: a total at its bound must never make every later purchase fail.
        customer.purchase_count = min(MAX_PURCHASE_COUNT, (customer.purchase_count or 0) + 1)
        last = _aware(customer.last_purchase_at)
        if last is None or last < at:
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
