"""An exact segment count now, from the last refresh's memberships corrected for what changed.

The refresh of everyone (the `SegmentRefresh` Schedule) recorded each segment's members at
`refreshed_at`; since then a customer's verdict can only have changed if

* an event of a type the segment reads was received for them (late ones included: it is
  the time received that counts, whatever time the event says it happened),
* an event of theirs left one of the segment's windows (`within: 365d`: it occurred in
  [refreshed_at - 365 d, now - 365 d); the windows have no upper end, so none can enter
  one without being received),
* a profile time the segment tests crossed its edge (`created_at within 30d`),
* their profile was updated (erasure stamps `updated_at` too), created or merged (either
  side), or, for a segment
  that tests reachability, a contact point or consent of theirs changed.

Every other customer's open membership is still right. So the count now is the stored
count, minus the touched customers' open memberships, plus the touched customers who
match the segment's query now (that query run for them only: their index ranges). Each
part is an index range: `ix_engagement_events_received_at` (0019), the (type, occurred_at)
events index (0012), and the timestamps of migration 0020.

Writers stamp those times in Python shortly before committing, so a row stamped just
before the refresh may have become visible only after the refresh read it: changes are
looked for from `refreshed_at - CHANGE_MARGIN`. A segment testing a column written
without a stamp (`UNSTAMPED_COLUMNS`), a refresh older than
`segment_exact_max_age_hours`, or more than `segment_exact_max_touched` touched customers
fall back to the segment's full query: the answer is exact either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, and_, case, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from cascade.audiences.compiler import (
    CONSENTS,
    CONTACTS,
    CUSTOMERS,
    EVENTS,
    Edges,
    segment_condition,
    time_cutoff,
)
from models.tables import CustomerMerge, SegmentMembership

MEMBERSHIPS: Table = SQLModel.metadata.tables[SegmentMembership.__tablename__]
MERGES: Table = SQLModel.metadata.tables[CustomerMerge.__tablename__]

# Longer than any writer's transaction (the stamp is taken before commit), short enough
# that a refresh's own minute of events stays a small touched set.
CHANGE_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True)
class Correction:
    """A corrected count: the stored members, the touched customers, and the count now."""

    stored: int
    touched: int
    members: int


def touched_customers(edges: Edges, refreshed_at: datetime, now: datetime) -> Select[Any]:
    """SELECT (UNION, no duplicates) the ids of the customers whose verdict may have changed
    between `refreshed_at` and `now` (see the module docstring)."""
    since = refreshed_at - CHANGE_MARGIN
    e, c = EVENTS.c, CUSTOMERS.c
    parts: list[Select[Any]] = [
        select(c.id.label("id")).where(c.updated_at >= since),
        select(c.id.label("id")).where(c.created_at >= since),
        select(MERGES.c.survivor_id.label("id")).where(MERGES.c.merged_at >= since),
        select(MERGES.c.merged_id.label("id")).where(MERGES.c.merged_at >= since),
    ]
    if edges.events:
        # One range of the received_at index, filtered by what any rule reads: an event of
        # its type and channel, and (for a window) not older than the window now. An older
        # one counts neither now nor, unless it left the window since (the edges below),
        # at the refresh.
        reads = []
        for edge in edges.events:
            tests = edge.filters()
            if edge.within is not None:
                tests.append(e.occurred_at >= now - edge.within)
            reads.append(and_(*tests))
        received = and_(e.received_at >= since, e.customer_id.is_not(None), or_(*reads))
        parts.append(select(e.customer_id.label("id")).where(received))
    for edge in edges.events:
        if edge.within is None:
            continue
        left = [e.occurred_at >= refreshed_at - edge.within, e.occurred_at < now - edge.within]
        parts.append(select(e.customer_id.label("id")).where(*edge.filters(), *left, e.customer_id.is_not(None)))
    for col in edges.columns:
        column = CUSTOMERS.c[col.column]
        lower = time_cutoff(refreshed_at, col.seconds, col.is_date)
        upper = time_cutoff(now, col.seconds, col.is_date)
        parts.append(select(c.id.label("id")).where(column >= lower, column < upper))
    if edges.reachable:
        cp, co = CONTACTS.c, CONSENTS.c
        changed = or_(cp.created_at >= since, cp.status_changed_at >= since)
        parts.append(select(cp.customer_id.label("id")).where(changed))
        parts.append(select(co.customer_id.label("id")).where(co.changed_at >= since))
    return union(*parts)  # type: ignore[return-value]


async def correct_count(
    conn: AsyncConnection,
    catalog: Any,
    name: str,
    edges: Edges,
    *,
    refreshed_at: datetime,
    now: datetime,
    max_touched: int,
) -> Correction | None:
    """Segment `name`'s count at `now` from its open memberships (recorded at `refreshed_at`)
    corrected for the touched customers; None when more than `max_touched` are touched.

    One statement (the touched set is gathered once); run it in the snapshot that read
    `refreshed_at` (REPEATABLE READ on PostgreSQL), so the memberships, the refresh record
    and the touched rows are of one moment.
    """
    touched = touched_customers(edges, refreshed_at, now).cte("touched")
    ids = select(touched.c.id)
    n_touched = select(func.count()).select_from(touched).scalar_subquery()
    open_rows = and_(MEMBERSHIPS.c.segment == name, MEMBERSHIPS.c.exited_at.is_(None))
    stored = select(func.count()).select_from(MEMBERSHIPS).where(open_rows).scalar_subquery()
    open_touched = (
        select(func.count()).select_from(MEMBERSHIPS).where(open_rows, MEMBERSHIPS.c.customer_id.in_(ids))
    ).scalar_subquery()
    condition = segment_condition(catalog, name, dialect=conn.dialect.name, now=now, scope=ids)
    matching = (select(func.count()).select_from(CUSTOMERS).where(CUSTOMERS.c.id.in_(ids), condition)).scalar_subquery()
    # Both databases evaluate a CASE's branch (and the subqueries in it) only when taken: a
    # touched set near the whole base is counted, not judged customer by customer.
    small = n_touched <= max_touched
    statement = select(
        n_touched,
        stored,
        case((small, open_touched), else_=None),
        case((small, matching), else_=None),
    )
    row = (await conn.execute(statement)).one()
    if row[2] is None or row[3] is None:
        return None
    n, stored_n, open_n, matching_n = (int(v) for v in row)
    return Correction(stored=stored_n, touched=n, members=stored_n - open_n + matching_n)


__all__ = ["CHANGE_MARGIN", "Correction", "correct_count", "touched_customers"]
