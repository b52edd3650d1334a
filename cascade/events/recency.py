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

from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator
from contextlib import suppress
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Executable, Select, Table, delete, func, insert, literal, select, text, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

from cascade.infra.db import as_utc
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


def _lock_customers(dialect: str, ids: list[str]) -> Iterator[tuple[Executable, Any]]:
    """Serialise writers of the same customers' rows until this transaction ends.

    Two transactions adding events of one customer at once would each read the old rows
    and write their own three: on PostgreSQL the second insert then hits the first's
    primary keys, or the first's event is lost from the ladder. SQLite has one writer, so
    only PostgreSQL needs the lock (advisory, taken in key order so two batches never
    deadlock).
    """
    if dialect != "postgresql" or not ids:
        return
    yield (
        text(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(c, 7013) AS k"
            " FROM unnest(CAST(:ids AS text[])) AS c ORDER BY k) AS keys"
        ),
        {"ids": ids},
    )


def _recency_statements(
    dialect: str, events: Iterable[tuple[str | None, str, str | None, datetime]]
) -> Generator[tuple[Executable, Any], Any, None]:
    """The statements of `add_to_event_recency`, each sent the rows its SELECT read: one
    body for the async connection and the one-hop synchronous transaction alike."""
    new: defaultdict[tuple[str, str], list[tuple[str | None, datetime]]] = defaultdict(list)
    for customer_id, kind, channel, occurred_at in events:
        if customer_id is not None:
            new[(customer_id, kind)].append((channel, occurred_at))
    ids = sorted({customer for customer, _ in new})
    yield from _lock_customers(dialect, ids)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        members = set(chunk)
        kinds = sorted({kind for customer, kind in new if customer in members})
        where = [RECENCY.c.customer_id.in_(chunk), RECENCY.c.type.in_(kinds)]
        ladders: defaultdict[tuple[str, str, str], list[datetime]] = defaultdict(list)
        kept = yield (
            select(RECENCY.c.customer_id, RECENCY.c.type, RECENCY.c.channel, RECENCY.c.occurred_at).where(*where),
            None,
        )
        for customer_id, kind, channel, occurred_at in kept:
            ladders[(customer_id, kind, channel)].append(occurred_at)
        for (customer_id, kind), added in new.items():
            if customer_id not in members:
                continue
            for channel, occurred_at in added:
                ladders[(customer_id, kind, "")].append(occurred_at)
                if channel is not None:
                    ladders[(customer_id, kind, channel)].append(occurred_at)
        rows = [
            {"customer_id": customer_id, "type": kind, "channel": channel, "rank": rank, "occurred_at": at}
            for (customer_id, kind, channel), times in ladders.items()
            for rank, at in enumerate(sorted(times, key=as_utc, reverse=True)[:RECENCY_DEPTH], start=1)
        ]
        # Events are only added here, so a ladder's new rows cover every rank it had: an
        # upsert by key (customer, type, channel, rank) replaces each old row, with no
        # DELETE first (one statement fewer per event transaction). The pairs without new
        # events are written back as the SELECT read them.
        if rows:
            yield _upsert(dialect), rows


async def add_to_event_recency(
    conn: AsyncConnection, events: Iterable[tuple[str | None, str, str | None, datetime]]
) -> None:
    """Merge newly inserted events `(customer_id, type, channel, occurred_at)` into the ladder.

    The new three latest of a customer and type are the three latest of the rows kept and
    the new events, so an insert reads a few rows per customer, never their whole history
    (a shop's busiest customers have thousands of page views). Call it in the transaction
    that inserted the events, with only the events that were inserted (not duplicates).
    """
    steps = _recency_statements(conn.dialect.name, events)
    result: Any = None
    with suppress(StopIteration):
        while True:
            statement, params = steps.send(result)
            result = await conn.execute(statement, params)


def add_to_event_recency_sync(conn: Connection, events: Iterable[tuple[str | None, str, str | None, datetime]]) -> None:
    """`add_to_event_recency` in a synchronous transaction (`Database.transaction`)."""
    steps = _recency_statements(conn.dialect.name, events)
    result: Any = None
    with suppress(StopIteration):
        while True:
            statement, params = steps.send(result)
            result = conn.execute(statement, params)


_UPSERTS: dict[str, Any] = {}


def _upsert(name: str) -> Any:
    """INSERT into event_recency, a row of an existing key replacing its time (one
    statement object per dialect, so SQLAlchemy computes its cache key once)."""
    if name not in _UPSERTS:
        statement = (postgresql if name == "postgresql" else sqlite).insert(RECENCY)
        _UPSERTS[name] = statement.on_conflict_do_update(
            index_elements=[RECENCY.c.customer_id, RECENCY.c.type, RECENCY.c.channel, RECENCY.c.rank],
            set_={"occurred_at": statement.excluded.occurred_at},
        )
    return _UPSERTS[name]


async def refresh_event_recency(
    conn: AsyncConnection, customer_ids: Iterable[str | None], types: Iterable[str] | None = None
) -> None:
    """Rewrite the rows of these customers (and only these event types, when given) from their events.

    Call it in the transaction that wrote the events, after the write.
    """
    ids = sorted({c for c in customer_ids if c is not None})
    kinds = sorted(set(types)) if types is not None else None
    for statement, params in _lock_customers(conn.dialect.name, ids):
        await conn.execute(statement, params)
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


__all__ = [
    "RECENCY",
    "add_to_event_recency",
    "add_to_event_recency_sync",
    "ladder",
    "rebuild_event_recency",
    "refresh_event_recency",
]
