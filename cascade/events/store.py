"""Storing engagement events: one row per event, idempotent by the sender's event id.

Every way an event comes in (receipts, tracking, the engagement and events APIs, the
loyalty activity) writes through `insert_event`, so a provider retrying is stored once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.events.recency import add_to_event_recency
from cascade.infra.db import Database, insert_ignoring_conflicts
from models.tables import EngagementEvent, utcnow

# How long this process holds the outbox rows it is about to send before any relay may
# take them over (POST /v1/events passes the `outbox_lease_seconds` setting).
DEFAULT_LEASE = timedelta(seconds=30)


async def insert_event(
    db: Database,
    session: AsyncSession,
    *,
    type: str,
    occurred_at: datetime,
    event_id: str | None = None,
    customer_id: str | None = None,
    workflow_id: str | None = None,
    delivery_id: int | None = None,
    channel: str | None = None,
    source: str = "api",
    properties: dict[str, Any] | None = None,
) -> bool:
    """Insert one engagement event; False when an event with the same `event_id` exists.

    The customer's `event_recency` rows of this type are rewritten in the same transaction.
    """
    result = await session.exec(
        insert_ignoring_conflicts(db, EngagementEvent)
        .values(
            event_id=event_id,
            type=type,
            occurred_at=occurred_at,
            customer_id=customer_id,
            workflow_id=workflow_id,
            delivery_id=delivery_id,
            channel=channel,
            source=source[:64],
            properties=properties or {},
            received_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    if result.rowcount and customer_id is not None:
        await add_to_event_recency(await session.connection(), [(customer_id, type, channel, occurred_at)])
    return bool(result.rowcount)


def signal_event_id(event_id: str | None) -> str:
    """The id a signal carries, so a journey drops one it has already seen."""
    # The sender's own id where there is one, else a fresh one (stored with the outbox
    # row, so every retry carries the same).
    return event_id if event_id else f"ev:{uuid.uuid4().hex}"
