"""What the step rules read from the delivery log and the engagement events.

The rules themselves are pure (cascade/journeys/rules.py); these are the two queries the
contact check runs for them: a customer's reactions per channel (stay-where-active) and
when their marketing messages went out (the frequency cap).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_
from sqlmodel import col, select

from cascade.infra.db import Database
from models.tables import Delivery, DeliveryStatus, EngagementEvent, Topic


async def customer_reactions(db: Database, customer_id: str) -> list[tuple[str, datetime]]:
    """(channel, when) of every open/click of the customer, from deliveries and events."""
    reacted = func.coalesce(col(Delivery.clicked_at), col(Delivery.opened_at))
    async with db.session() as session:
        connection = await session.connection()
        rows = (
            await connection.execute(
                select(Delivery.channel, reacted)
                .where(Delivery.customer_id == customer_id, reacted.is_not(None))
                .union_all(
                    select(col(EngagementEvent.channel), col(EngagementEvent.occurred_at)).where(
                        EngagementEvent.customer_id == customer_id,
                        col(EngagementEvent.channel).is_not(None),
                        col(EngagementEvent.type).in_(["opened", "clicked"]),
                    )
                )
            )
        ).all()
    return [(str(channel), at) for channel, at in rows if at is not None]


async def marketing_sends(db: Database, customer_id: str, since: datetime) -> list[datetime]:
    """When the customer's marketing messages went out since `since`, over all journeys.

    A message whose outcome is `unknown` counts (it may well have arrived), at the
    time it was attempted.
    """
    async with db.session() as session:
        rows = (
            await session.exec(
                select(func.coalesce(col(Delivery.sent_at), col(Delivery.created_at))).where(
                    Delivery.customer_id == customer_id,
                    Delivery.topic == Topic.MARKETING.value,
                    or_(
                        col(Delivery.sent_at) > since,
                        and_(col(Delivery.status) == DeliveryStatus.UNKNOWN, col(Delivery.created_at) > since),
                    ),
                )
            )
        ).all()
    return [t for t in rows if t is not None]
