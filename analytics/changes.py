"""Which recent days changed since the last refresh: the refresh rebuilds only those.

A refresh of the recent days (:func:`analytics.funnel.refresh_recent`) used to rebuild all
35 of them every time (18-86 s of database time every 10 minutes, measured). A day's rows
change only when a row they are computed from was written since the previous refresh; each
function here answers, for one rollup, the earliest time a row of the recent days that
changed since `since` belongs to (a message's creation, a run's start), or None when
nothing before `since` changed. The refresh rebuilds from that day on (and always from the
day of `since`: what was created after it).

`since` is the previous refresh's time minus :data:`CHANGE_MARGIN`: a row's timestamp is
taken in Python just before its transaction commits, so a row stamped shortly before a
refresh may become visible only after that refresh read the log.

What counts as a change, from the columns each writer sets (see the writers in
``cascade/delivery/claims.py``, ``cascade/events/engagement.py``, ``cascade/profiles``):

* a message: sent, delivered, opened, clicked or failed at or after `since`; an event
  received since that names it (a receipt, open, click, bounce or unsubscribe arriving
  late, whatever time it says it happened); a purchase received since is attributed to
  it; its customer's profile updated, erased or merged since. A message still
  queued at the previous refresh (the funnel rollup's messages that were neither sent nor
  failed) may have been settled ``unknown`` without a timestamp: its day is rebuilt too.
* a run (``runs_daily``): ended since.
* a run's savings: a message of it created, sent or failed since (a late step of a long
  run, a retry that went through), bounced (an event received since), not settled yet
  (``queued``/``unknown``), or its customer's contact points, consents or profile changed
  since (usability is judged as it is now). Receipts, opens, clicks and purchases do not
  change what a run cost or could have cost.

Prices and journey files enter the savings too; they are not in the database, so the
refresh rebuilds every recent day when they differ from the last refresh's in this process
(and on the first refresh of a process) -- see :mod:`analytics.money`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from cascade.infra.db import as_utc
from models.tables import (
    Consent,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryStatus,
    EngagementEvent,
    FunnelDaily,
    JourneyRun,
)

# How long before the previous refresh's time a change is looked for (see the docstring):
# far longer than any transaction of the writers, short enough to stay within a day or two.
CHANGE_MARGIN = timedelta(hours=1)

_deliveries: Table = SQLModel.metadata.tables[Delivery.__tablename__]
_events: Table = SQLModel.metadata.tables[EngagementEvent.__tablename__]
_runs: Table = SQLModel.metadata.tables[JourneyRun.__tablename__]
_customers: Table = SQLModel.metadata.tables[Customer.__tablename__]
_contacts: Table = SQLModel.metadata.tables[ContactPoint.__tablename__]
_consents: Table = SQLModel.metadata.tables[Consent.__tablename__]
_funnel_daily: Table = SQLModel.metadata.tables[FunnelDaily.__tablename__]


def _changed_customers(since: datetime) -> Any:
    """Customers whose profile was updated, erased or merged since (merging updates the survivor)."""
    c = _customers.c
    return select(c.id).where(or_(c.updated_at >= since, c.erased_at >= since))


def _reachability_changed(since: datetime) -> Any:
    """Customers whose usable channels may have changed since: contact points, consents, profile."""
    cp, co = _contacts.c, _consents.c
    return union_all(
        select(cp.customer_id.label("id")).where(or_(cp.created_at >= since, cp.status_changed_at >= since)),
        select(co.customer_id.label("id")).where(co.changed_at >= since),
        _changed_customers(since),
    )


def _changed_messages(closed: datetime, since: datetime, attributed: Any, conversion_events: list[str]) -> list[Any]:
    """SELECTs of (id of) messages of the recent days created before `since` that changed
    since; `attributed` is the funnel's last-touch subquery (correlated to the events)."""
    d, e = _deliveries.c, _events.c
    recent = and_(d.created_at >= closed, d.created_at < since)
    timeline = or_(*(column >= since for column in (d.sent_at, d.delivered_at, d.opened_at, d.clicked_at, d.failed_at)))
    by_event = select(e.delivery_id).where(e.received_at >= since, e.delivery_id.is_not(None))
    purchases = select(attributed).where(e.received_at >= since, e.type.in_(conversion_events))
    return [
        select(d.id).where(recent, timeline),
        select(d.id).where(recent, d.id.in_(by_event)),
        select(d.id).where(recent, d.id.in_(purchases)),
        select(d.id).where(recent, d.customer_id.in_(_changed_customers(since))),
    ]


async def first_changed_message(
    conn: AsyncConnection, closed: datetime, since: datetime, *, attributed: Any, conversion_events: list[str]
) -> date | None:
    """The earliest day (of creation) of a recent message whose figures changed since
    `since` (the funnel and time-to-react rollups, by the message's day)."""
    d, f = _deliveries.c, _funnel_daily.c
    earliest: list[Any] = []
    for part in _changed_messages(closed, since, attributed, conversion_events):
        ids = part.subquery("changed")
        found = (await conn.execute(select(func.min(d.created_at)).where(d.id.in_(select(ids.c.id))))).scalar()
        earliest.append(found)
    # Queued at the previous refresh (counted, neither sent nor failed): settled since,
    # perhaps as `unknown`, which no timestamp records.
    pending = select(func.min(f.day)).where(f.day >= closed.date(), f.messages > f.sent + f.failed)
    earliest.append((await conn.execute(pending)).scalar())
    return _earliest(earliest)


async def first_changed_run(conn: AsyncConnection, closed: datetime, since: datetime) -> date | None:
    """The earliest day (of start) of a recent run that ended since `since` (the runs rollup)."""
    r = _runs.c
    stmt = select(func.min(r.started_at)).where(r.started_at >= closed, r.started_at < since, r.finished_at >= since)
    return _earliest([(await conn.execute(stmt)).scalar()])


async def first_changed_savings(conn: AsyncConnection, closed: datetime, since: datetime) -> date | None:
    """The earliest day (of start) of a recent run whose savings may have changed since `since`."""
    d, e, r = _deliveries.c, _events.c, _runs.c
    unsettled = (DeliveryStatus.QUEUED.value, DeliveryStatus.UNKNOWN.value)
    # A run's savings see its messages' channel, cost and whether they were sent: a message
    # created, sent or failed since, or bounced (an event received since), changes them;
    # receipts, opens, clicks and purchases do not.
    failures = select(e.delivery_id).where(
        e.received_at >= since, e.delivery_id.is_not(None), e.type.in_(("bounced", "failed"))
    )
    messages = [
        select(d.id).where(d.created_at >= since),
        select(d.id).where(d.created_at >= closed, or_(d.sent_at >= since, d.failed_at >= since)),
        select(d.id).where(d.created_at >= closed, d.id.in_(failures)),
        select(d.id).where(d.created_at >= closed, d.status.in_(unsettled)),
    ]
    earliest: list[Any] = []
    for part in messages:
        ids = part.subquery("changed")
        stmt = (
            select(func.min(r.started_at))
            .select_from(_deliveries)
            .join(_runs, and_(r.workflow_id == d.workflow_id, r.run_id == d.run_id))
            .where(d.id.in_(select(ids.c.id)), r.started_at >= closed, r.started_at < since)
        )
        earliest.append((await conn.execute(stmt)).scalar())
    reach = _reachability_changed(since).subquery("changed_customers")
    stmt = select(func.min(r.started_at)).where(
        r.started_at >= closed, r.started_at < since, r.customer_id.in_(select(reach.c.id))
    )
    earliest.append((await conn.execute(stmt)).scalar())
    return _earliest(earliest)


def _earliest(values: list[Any]) -> date | None:
    """The earliest UTC day of times and days (None: there were none)."""
    days = [as_utc(v).astimezone(UTC).date() if isinstance(v, datetime) else v for v in values if v is not None]
    return min(days, default=None)
