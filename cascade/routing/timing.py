"""Send-time decisions from the delivery log: one customer's (the activity) or a segment's (the preview).

The model is cascade/routing/sendtime.py; this module feeds it the customer's reaction
times (opens and clicks on any channel: the hour someone reads is a trait of the person
more than of the channel) and their segment's, each in the reacting customer's own zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cascade.journeys.rules import customer_zone
from cascade.routing.sendtime import (
    HOURS_PER_WEEK,
    QuietWindow,
    SendTimeDecision,
    hour_of_week,
    hour_profile,
    next_send_time,
)
from models.tables import Customer, Delivery

_D = Delivery.__table__.c  # type: ignore[attr-defined]
_CUSTOMERS = Customer.__table__  # type: ignore[attr-defined]
_C = _CUSTOMERS.c
_REACTED = func.coalesce(_D.opened_at, _D.clicked_at)
# The latest reactions are what tells a habit; a few hundred per customer is plenty.
_OWN_LIMIT = 500
_SEGMENT_LIMIT = 20_000


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    # Stored times are UTC; SQLite returns them without the zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def own_reaction_times(conn: AsyncConnection, customer_id: str, since: datetime) -> list[datetime]:
    """When the customer opened or clicked a message (latest first)."""
    rows = await conn.execute(
        select(_REACTED)
        .where(_D.customer_id == customer_id, _REACTED.is_not(None), since <= _REACTED)
        .order_by(_REACTED.desc())
        .limit(_OWN_LIMIT)
    )
    return [_utc(at) for (at,) in rows.all()]


async def segment_hours(
    conn: AsyncConnection, segment: tuple[str, str] | None, since: datetime
) -> NDArray[np.float64] | None:
    """The segment's reactions per hour of week, each in its customer's own zone; None without a segment."""
    if segment is None:
        return None
    attribute, value = segment
    rows = await conn.execute(
        select(_REACTED, _C.timezone)
        .join(_CUSTOMERS, _C.id == _D.customer_id)
        .where(_C.attributes[attribute].as_string() == value, _REACTED.is_not(None), since <= _REACTED)
        .order_by(_REACTED.desc())
        .limit(_SEGMENT_LIMIT)
    )
    counts = np.zeros(HOURS_PER_WEEK, dtype=np.float64)
    for at, zone in rows.all():
        counts[hour_of_week(_utc(at), customer_zone(zone))] += 1
    return counts


def segment_of(customer: Any, attribute: str) -> tuple[str, str] | None:
    """(attribute, value) when the customer's attributes name a segment."""
    value = (customer.attributes or {}).get(attribute)
    return (attribute, value) if isinstance(value, str) and value else None


async def plan_send_time(
    conn: AsyncConnection,
    customer: Customer,
    *,
    segment_attribute: str,
    at: datetime,
    window: timedelta,
    quiet: Sequence[QuietWindow],
    history: timedelta,
    segment_counts: NDArray[np.float64] | None = None,
) -> SendTimeDecision:
    """The best moment in `[at, at + window]` for `customer`; `segment_counts` saves a query in a preview."""
    since = at - history
    zone = customer_zone(customer.timezone)
    own = await own_reaction_times(conn, customer.id, since)
    if segment_counts is None:
        segment_counts = await segment_hours(conn, segment_of(customer, segment_attribute), since)
    profile = hour_profile(own, zone, segment_counts)
    return next_send_time(at, profile, zone, window, quiet)


async def preview_send_times(
    conn: AsyncConnection,
    customers: Sequence[Customer],
    *,
    segment_attribute: str,
    at: datetime,
    window: timedelta,
    quiet: Sequence[QuietWindow],
    history: timedelta,
) -> list[SendTimeDecision]:
    """The send time each customer would get now (a segment's pattern read once per segment)."""
    cache: dict[tuple[str, str] | None, NDArray[np.float64] | None] = {}
    out = []
    for customer in customers:
        segment = segment_of(customer, segment_attribute)
        if segment not in cache:
            cache[segment] = await segment_hours(conn, segment, at - history)
        out.append(
            await plan_send_time(
                conn,
                customer,
                segment_attribute=segment_attribute,
                at=at,
                window=window,
                quiet=quiet,
                history=history,
                segment_counts=cache[segment],
            )
        )
    return out
