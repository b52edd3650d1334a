"""What the delivery log teaches the routing models: reaction counts, last reactions, reaction delays.

Every query reads `deliveries` only (SQLAlchemy Core, SQLite and PostgreSQL alike). A
message counts once it went out (sent, any receipt after it, or `unknown`: it may well
have arrived) within the history window; it counts as a reaction when the reaction the
step awaits (or a stronger one) is recorded on it. Receipts update the rows they belong
to, so the counts change as they arrive, across every journey of the customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cascade.routing.scoring import ReactionCounts, fit_prior_strength
from models.tables import Customer, Delivery, DeliveryStatus

_OUT = [
    DeliveryStatus.SENT.value,
    DeliveryStatus.DELIVERED.value,
    DeliveryStatus.OPENED.value,
    DeliveryStatus.CLICKED.value,
    DeliveryStatus.UNKNOWN.value,
]
_D = Delivery.__table__.c  # type: ignore[attr-defined]
_C = Customer.__table__.c  # type: ignore[attr-defined]
# Rows read at most when fitting a prior's strength or collecting delays: the models need
# a representative sample, not the whole log.
_MAX_CUSTOMER_ROWS = 20_000
_MAX_OWN_DELAYS = 200
_MAX_CHANNEL_DELAYS = 2_000


def reaction_time(reaction: str) -> ColumnElement[Any]:
    """When the message got `reaction` or a stronger one (NULL if it did not)."""
    if reaction == "delivered":
        return func.coalesce(_D.clicked_at, _D.opened_at, _D.delivered_at)
    if reaction == "opened":
        return func.coalesce(_D.clicked_at, _D.opened_at)
    if reaction == "clicked":
        return _D.clicked_at  # type: ignore[no-any-return]
    raise ValueError(f"reaction: {reaction!r} is not one the delivery log records (delivered, opened, clicked)")


def _hits(reaction: str) -> ColumnElement[Any]:
    return func.sum(case((reaction_time(reaction).is_not(None), 1), else_=0), type_=Integer)


@dataclass
class ChannelHistory:
    """Counts per channel for one customer, their segment and everyone, and when they last reacted."""

    own: dict[str, ReactionCounts] = field(default_factory=dict)
    segment: dict[str, ReactionCounts] = field(default_factory=dict)
    population: dict[str, ReactionCounts] = field(default_factory=dict)
    prior_strength: dict[str, float] = field(default_factory=dict)
    last_reaction_at: dict[str, datetime] = field(default_factory=dict)


def _counts(rows: Sequence[Any], reactions: dict[str, str]) -> dict[str, ReactionCounts]:
    levels = {"delivered": 2, "opened": 3, "clicked": 4}
    out: dict[str, ReactionCounts] = {}
    for row in rows:
        channel = str(row[0])
        hits = int(row[levels[reactions.get(channel, "opened")]] or 0)
        out[channel] = ReactionCounts(reactions=hits, messages=int(row[1]))
    return out


async def channel_history(
    conn: AsyncConnection,
    customer_id: str,
    reactions: dict[str, str],
    since: datetime,
    segment: tuple[str, str] | None = None,
) -> ChannelHistory:
    """Counts on the channels in `reactions` (channel -> awaited reaction) since `since`.

    `segment` is (attribute, value): customers whose `attributes[attribute]` equals value.
    The prior strength per channel is fitted over the segment's customers (everyone's
    without a segment).
    """
    channels = list(reactions)
    went_out = and_(
        _D.channel.in_(channels),
        _D.status.in_(_OUT),
        func.coalesce(_D.sent_at, _D.created_at) >= since,
    )
    sums = [func.count(), _hits("delivered"), _hits("opened"), _hits("clicked")]
    history = ChannelHistory()
    own = await conn.execute(
        select(_D.channel, *sums).where(went_out, _D.customer_id == customer_id).group_by(_D.channel)
    )
    history.own = _counts(own.all(), reactions)
    everyone = await conn.execute(select(_D.channel, *sums).where(went_out).group_by(_D.channel))
    history.population = _counts(everyone.all(), reactions)

    in_segment: ColumnElement[Any] | None = None
    if segment is not None:
        attribute, value = segment
        in_segment = _D.customer_id.in_(select(_C.id).where(_C.attributes[attribute].as_string() == value))
        seg = await conn.execute(select(_D.channel, *sums).where(went_out, in_segment).group_by(_D.channel))
        history.segment = _counts(seg.all(), reactions)

    per_customer = select(_D.channel, _D.customer_id, *sums).where(went_out)
    if in_segment is not None:
        per_customer = per_customer.where(in_segment)
    rows = (await conn.execute(per_customer.group_by(_D.channel, _D.customer_id).limit(_MAX_CUSTOMER_ROWS))).all()
    by_channel: dict[str, list[ReactionCounts]] = {}
    levels = {"delivered": 2, "opened": 3, "clicked": 4}
    for row in rows:
        channel = str(row[0])
        hits = int(row[1 + levels[reactions.get(channel, "opened")]] or 0)
        by_channel.setdefault(channel, []).append(ReactionCounts(reactions=hits, messages=int(row[2])))
    history.prior_strength = {ch: fit_prior_strength(counts) for ch, counts in by_channel.items()}

    reacted = func.coalesce(_D.clicked_at, _D.opened_at)
    last = await conn.execute(
        select(_D.channel, func.max(reacted))
        .where(_D.customer_id == customer_id, _D.channel.in_(channels), reacted.is_not(None))
        .group_by(_D.channel)
    )
    history.last_reaction_at = {str(ch): _aware(at) for ch, at in last.all() if at is not None}
    return history


def _aware(value: datetime | str) -> datetime:
    # SQLite hands back aggregates (max) as text, without the column's type processing.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    # Stored times are UTC; SQLite returns them without the zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def reaction_delays(
    conn: AsyncConnection, channel: str, reaction: str, customer_id: str | None, since: datetime
) -> list[timedelta]:
    """Send-to-reaction delays of the latest reacted messages on `channel` (one customer's, or everyone's)."""
    at = reaction_time(reaction)
    query = select(_D.sent_at, at).where(
        _D.channel == channel, _D.sent_at.is_not(None), at.is_not(None), _D.sent_at >= since
    )
    if customer_id is not None:
        query = query.where(_D.customer_id == customer_id)
    limit = _MAX_OWN_DELAYS if customer_id is not None else _MAX_CHANNEL_DELAYS
    rows = (await conn.execute(query.order_by(_D.sent_at.desc()).limit(limit))).all()
    delays = []
    for sent, reacted in rows:
        delay = _aware(reacted) - _aware(sent)
        # A receipt stamped before the send (clock skew between providers) is no delay.
        delays.append(max(delay, timedelta(0)))
    return delays
