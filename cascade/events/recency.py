"""`event_recency`: each customer's latest few events of a type, kept with the events.

A segment's "at least n purchases in 365 days" holds exactly when the customer's n-th
latest purchase happened within 365 days, and "no purchase in 90 days" when the latest
did not: with these rows a count reads one entry per customer who qualifies instead of
every event in the window (cascade/audiences/compiler.py). The rows are derived from
`engagement_events` only: every writer of events (insert_event, the events API's batch,
merges, erasure, the simulator's re-dating) rewrites the rows of the customers and types
it touched in its own transaction, from the events themselves, so an event arriving late
(older than the ones kept) or moved by a merge leaves them exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, Table, delete, func, insert, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

from models.tables import RECENCY_DEPTH, EngagementEvent, EventRecency

EVENTS: Table = SQLModel.metadata.tables[EngagementEvent.__tablename__]
RECENCY: Table = SQLModel.metadata.tables[EventRecency.__tablename__]
# Customers per statement: well under SQLite's bound-parameter limit.
_CHUNK = 500
COLUMNS = ["customer_id", "type", "channel", "rank", "occurred_at"]


def ladder(*where: ColumnElement[bool]) -> Select[Any]:
    """SELECT the event_recency rows the events matching `where` make (all channels, then each)."""

    def ranked(channel: ColumnElement[str] | None) -> Select[Any]:
        partition = [EVENTS.c.customer_id, EVENTS.c.type] + ([EVENTS.c.channel] if channel is None else [])
        rank = (
            func.row_number()
            .over(partition_by=partition, order_by=[EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc()])
            .label("rank")
        )
        tests = [EVENTS.c.customer_id.is_not(None), *where]
        if channel is None:
            tests.append(EVENTS.c.channel.is_not(None))
        return select(
            EVENTS.c.customer_id,
            EVENTS.c.type,
            (EVENTS.c.channel if channel is None else channel).label("channel"),
            rank,
            EVENTS.c.occurred_at,
        ).where(*tests)

    every = union_all(ranked(literal("")), ranked(None)).subquery()
    return select(*(every.c[name] for name in COLUMNS)).where(every.c.rank <= RECENCY_DEPTH)


async def refresh_event_recency(
    conn: AsyncConnection, customer_ids: Iterable[str | None], types: Iterable[str] | None = None
) -> None:
    """Rewrite the rows of these customers (and only these event types, when given) from their events.

    Call it in the transaction that wrote the events, after the write.
    """
    ids = sorted({c for c in customer_ids if c is not None})
    kinds = sorted(set(types)) if types is not None else None
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        mine: list[ColumnElement[bool]] = [RECENCY.c.customer_id.in_(chunk)]
        theirs: list[ColumnElement[bool]] = [EVENTS.c.customer_id.in_(chunk)]
        if kinds is not None:
            mine.append(RECENCY.c.type.in_(kinds))
            theirs.append(EVENTS.c.type.in_(kinds))
        await conn.execute(delete(RECENCY).where(*mine))
        await conn.execute(insert(RECENCY).from_select(COLUMNS, ladder(*theirs)))


async def rebuild_event_recency(conn: AsyncConnection) -> None:
    """Rewrite every row from the events (after a bulk rewrite of event times)."""
    await conn.execute(delete(RECENCY))
    await conn.execute(insert(RECENCY).from_select(COLUMNS, ladder()))


__all__ = ["RECENCY", "ladder", "rebuild_event_recency", "refresh_event_recency"]
