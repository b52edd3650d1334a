"""The customer's own choices: which channels and topics they accept, and the channel they prefer.

Read and written by the preference centre (webhooks/preferences.py). Consents go to
`consents` (source and time on the row), the preferred channel to the profile, which
routing reads (activities/routing.py), with each change kept in `preference_changes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.profiles.service import mark_contact_point, resolve_customer_id, set_consent
from models.journey import ChannelName
from models.profiles import ConsentIn
from models.tables import Consent, ContactPoint, ContactStatus, Customer, PreferenceChange, Topic

# Contact points the customer can switch back on themselves; a bounced or invalid address
# needs a new address, not a tick.
_REVIVABLE = {ContactStatus.VALID, ContactStatus.UNSUBSCRIBED}


class PreferenceError(ValueError):
    """A submitted choice that does not fit this customer (names the field)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass
class Preferences:
    """What the preference centre shows and saves for one customer."""

    customer_id: str
    channels: list[str]
    accepted: dict[tuple[str, str], bool] = field(default_factory=dict)
    preferred_channel: str | None = None

    def is_accepted(self, channel: str, topic: str) -> bool:
        """The current decision; no row means marketing off, transactional on."""
        return self.accepted.get((channel, topic), topic == Topic.TRANSACTIONAL.value)


async def load_preferences(session: AsyncSession, customer_id: str) -> Preferences:
    """The channels the customer has an address on (in channel order) and their decisions."""
    customer_id = await resolve_customer_id(session, customer_id)
    customer = await session.get(Customer, customer_id)
    points = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == customer_id))).all()
    have = {p.channel for p in points if p.status in _REVIVABLE}
    consents = (await session.exec(select(Consent).where(Consent.customer_id == customer_id))).all()
    prefs = Preferences(
        customer_id=customer_id,
        channels=[c.value for c in ChannelName if c.value in have],
        preferred_channel=customer.preferred_channel if customer else None,
    )
    for consent in consents:
        prefs.accepted[(consent.channel, consent.topic)] = consent.granted
    # An unsubscribed address receives no marketing whatever its consent row says.
    for point in points:
        if point.status == ContactStatus.UNSUBSCRIBED:
            prefs.accepted[(point.channel, Topic.MARKETING.value)] = False
    return prefs


async def save_preferences(
    session: AsyncSession,
    customer_id: str,
    accepted: set[tuple[str, str]],
    preferred_channel: str | None,
    source: str,
    at: datetime,
) -> list[str]:
    """Store the customer's choices; returns what changed ("sms/marketing: off", "preferred: sms").

    `accepted` holds the (channel, topic) pairs ticked; every other pair of the customer's
    channels is declined. Checks everything before writing anything (PreferenceError).
    """
    current = await load_preferences(session, customer_id)
    topics = [t.value for t in Topic]
    for channel, topic in accepted:
        if channel not in current.channels:
            raise PreferenceError(f"accept.{channel}", "no address on this channel")
        if topic not in topics:
            raise PreferenceError(f"accept.{channel}", f"unknown topic {topic!r}")
    if preferred_channel is not None and preferred_channel not in current.channels:
        raise PreferenceError("preferred_channel", f"{preferred_channel!r} is not one of your channels")
    if preferred_channel is not None and (preferred_channel, Topic.MARKETING.value) not in accepted:
        raise PreferenceError("preferred_channel", "a preferred channel must accept messages")

    changes: list[str] = []
    for channel in current.channels:
        for topic in topics:
            want = (channel, topic) in accepted
            if want == current.is_accepted(channel, topic):
                continue
            changes.append(f"{channel}/{topic}: {'on' if want else 'off'}")
            await set_consent(
                session,
                current.customer_id,
                ConsentIn(channel=ChannelName(channel), topic=Topic(topic), granted=want, source=source),
                at=at,
            )
            if want and topic == Topic.MARKETING.value:
                # A customer who ticks a channel again means it: the address was
                # unsubscribed by them, not by a provider.
                points = await session.exec(
                    select(ContactPoint.id).where(
                        ContactPoint.customer_id == current.customer_id,
                        ContactPoint.channel == channel,
                        col(ContactPoint.status) == ContactStatus.UNSUBSCRIBED,
                    )
                )
                for point_id in points.all():
                    await mark_contact_point(session, point_id, ContactStatus.VALID, f"re-subscribed: {source}")
    if preferred_channel != current.preferred_channel:
        customer = await session.get(Customer, current.customer_id)
        if customer is not None:
            customer.preferred_channel = preferred_channel
            session.add(customer)
        session.add(
            PreferenceChange(
                customer_id=current.customer_id,
                name="preferred_channel",
                value=preferred_channel,
                source=source,
                changed_at=at,
            )
        )
        changes.append(f"preferred: {preferred_channel or 'none'}")
    return changes
