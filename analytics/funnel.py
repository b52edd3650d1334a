"""The funnel of journeys, computed in SQL over the delivery log, events and journey runs.

Definitions (one delivery row is one message; every figure counts messages unless said):

* ``sent``: the provider took the message (status sent, delivered, opened, clicked) or may
  have it (``unknown``: billed as sent, never repeated).
* ``delivered`` / ``opened`` / ``clicked``: the message has that timestamp *or a later one*
  (Cascade's rule that each reaction implies the ones before it: a click is an open).
* ``failed``: status failed.
* ``unsubscribed``: an ``unsubscribed`` event names the message.
* ``converted`` / ``revenue``: a conversion event (``purchase`` by default) is attributed
  to the customer's **last message sent before it within the attribution window** (7 days by
  default), last touch; revenue is the event's ``properties.amount``. A purchase with no
  message in its window is not in the funnel (it was not the journeys' doing).
* ``entered``: journey runs started in the range; ``outcomes``: how the finished ones ended.

The date range applies to the message's creation (runs: their start; conversions follow
their message, so a purchase the day after the range still counts for a message inside it).
Campaign comes from the run that sent the message. Everything runs on SQLite and PostgreSQL;
the indexes it relies on are in migration 0010.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy import (
    ColumnElement,
    Date,
    Float,
    Integer,
    Table,
    and_,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlmodel import SQLModel

from cascade.infra.db import Database
from models.tables import Delivery, DeliveryStatus, EngagementEvent, JourneyRun

Dimension = Literal["journey", "step", "channel", "campaign", "day"]
DIMENSIONS: tuple[str, ...] = ("journey", "step", "channel", "campaign", "day")

deliveries: Table = SQLModel.metadata.tables[Delivery.__tablename__]
events: Table = SQLModel.metadata.tables[EngagementEvent.__tablename__]
runs: Table = SQLModel.metadata.tables[JourneyRun.__tablename__]

SENT_STATUSES = (
    DeliveryStatus.SENT.value,
    DeliveryStatus.DELIVERED.value,
    DeliveryStatus.OPENED.value,
    DeliveryStatus.CLICKED.value,
    DeliveryStatus.UNKNOWN.value,
)

# Upper bounds (seconds) of the time-to-react buckets, and their labels.
REACT_BUCKETS: tuple[tuple[float | None, str], ...] = (
    (60.0, "< 1 min"),
    (600.0, "1-10 min"),
    (3600.0, "10-60 min"),
    (6 * 3600.0, "1-6 h"),
    (24 * 3600.0, "6-24 h"),
    (72 * 3600.0, "1-3 days"),
    (None, "3+ days"),
)


class FunnelQuery(BaseModel):
    """Which messages to count and how to group them."""

    journey: str | None = None
    channel: str | None = None
    campaign: str | None = None
    since: datetime | None = None
    until: datetime | None = Field(default=None, description="exclusive")
    by: list[Dimension] = Field(default_factory=list)
    attribution_window: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    conversion_events: list[str] = Field(default_factory=lambda: ["purchase"], min_length=1)


class FunnelRow(BaseModel):
    """One group of the funnel (the whole range when the query groups by nothing)."""

    key: dict[str, str | int | None]
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    converted: int = 0
    unsubscribed: int = 0
    failed: int = 0
    unknown: int = 0
    messages: int = 0
    cost: float = 0.0
    revenue: float = 0.0


class EntryRow(BaseModel):
    """Journey runs started in the range: how many, and how the finished ones ended."""

    key: dict[str, str | int | None]
    entered: int
    running: int
    outcomes: dict[str, int]


class ReactionTimes(BaseModel):
    """Time from sending to the first reaction (open, or click when no open was seen)."""

    channel: str
    reactions: int
    mean_seconds: float | None
    buckets: dict[str, int]


def _seconds_between(is_sqlite: bool, later: Any, earlier: Any) -> ColumnElement[float]:
    if is_sqlite:
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return cast(ColumnElement[float], func.extract("epoch", later - earlier))


def _day(is_sqlite: bool, column: Any) -> ColumnElement[Any]:
    if is_sqlite:
        return cast(ColumnElement[Any], func.date(column))
    # The day in UTC, whatever the session's time zone.
    return sql_cast(func.timezone("UTC", column), Date)


def _delivery_filters(query: FunnelQuery) -> list[ColumnElement[bool]]:
    d = deliveries.c
    where: list[ColumnElement[bool]] = []
    if query.journey is not None:
        where.append(d.journey == query.journey)
    if query.channel is not None:
        where.append(d.channel == query.channel)
    if query.since is not None:
        where.append(d.created_at >= query.since)
    if query.until is not None:
        where.append(d.created_at < query.until)
    return where


def _attributed_delivery(is_sqlite: bool, query: FunnelQuery) -> Any:
    """Correlated subquery: the id of the last message sent to the event's customer in its window."""
    d, e = deliveries.c, events.c
    window = query.attribution_window
    if is_sqlite:
        in_window = func.julianday(d.sent_at) > func.julianday(e.occurred_at) - window.total_seconds() / 86400.0
    else:
        in_window = d.sent_at > e.occurred_at - literal(window)
    return (
        select(d.id)
        .where(d.customer_id == e.customer_id, d.sent_at.is_not(None), d.sent_at <= e.occurred_at, in_window)
        .order_by(d.sent_at.desc(), d.id.desc())
        .limit(1)
        .correlate(events)
        .scalar_subquery()
    )


def conversions_subquery(is_sqlite: bool, query: FunnelQuery) -> Any:
    """(delivery_id, conversions, revenue) per message that got conversions attributed."""
    e = events.c
    attributed = (
        select(
            _attributed_delivery(is_sqlite, query).label("delivery_id"),
            func.coalesce(e.properties["amount"].as_float(), 0.0).label("amount"),
        )
        .where(e.type.in_(query.conversion_events), e.customer_id.is_not(None))
        .subquery("attributed")
    )
    return (
        select(
            attributed.c.delivery_id,
            func.count().label("conversions"),
            func.sum(attributed.c.amount).label("revenue"),
        )
        .where(attributed.c.delivery_id.is_not(None))
        .group_by(attributed.c.delivery_id)
        .subquery("conversions")
    )


def _group_columns(is_sqlite: bool, by: Sequence[str]) -> list[ColumnElement[Any]]:
    d = deliveries.c
    columns: dict[str, ColumnElement[Any]] = {
        "journey": d.journey,
        "step": d.step,
        "channel": d.channel,
        "campaign": runs.c.campaign,
        "day": _day(is_sqlite, d.created_at),
    }
    return [columns[name].label(name) for name in by]


def _key_value(value: Any) -> str | int | None:
    if value is None or isinstance(value, int | str):
        return value
    return str(value)


async def funnel(db: Database, query: FunnelQuery) -> list[FunnelRow]:
    """The funnel per group of `query.by`, ordered by the groups (one row when ungrouped)."""
    d = deliveries.c
    conv = conversions_subquery(db.is_sqlite, query)
    status = d.status
    sent = status.in_(SENT_STATUSES)
    clicked = d.clicked_at.is_not(None)
    opened = or_(d.opened_at.is_not(None), clicked)
    delivered = or_(d.delivered_at.is_not(None), opened)
    # One row per unsubscribed message, hash-joined: a correlated EXISTS per message would
    # probe the events once for each of a million deliveries.
    unsubs = (
        select(events.c.delivery_id.label("delivery_id"))
        .where(events.c.type == "unsubscribed", events.c.delivery_id.is_not(None))
        .group_by(events.c.delivery_id)
        .subquery("unsubs")
    )
    unsubscribed = unsubs.c.delivery_id.is_not(None)

    def count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    groups = _group_columns(db.is_sqlite, query.by)
    stmt = (
        select(
            *groups,
            func.count().label("messages"),
            count_if(sent).label("sent"),
            count_if(delivered).label("delivered"),
            count_if(opened).label("opened"),
            count_if(clicked).label("clicked"),
            count_if(status == DeliveryStatus.FAILED.value).label("failed"),
            count_if(status == DeliveryStatus.UNKNOWN.value).label("unknown"),
            count_if(unsubscribed).label("unsubscribed"),
            sql_cast(func.coalesce(func.sum(conv.c.conversions), 0), Integer).label("converted"),
            sql_cast(func.coalesce(func.sum(conv.c.revenue), 0.0), Float).label("revenue"),
            sql_cast(func.coalesce(func.sum(d.cost), 0.0), Float).label("cost"),
        )
        .select_from(deliveries)
        .outerjoin(conv, conv.c.delivery_id == d.id)
        .outerjoin(unsubs, unsubs.c.delivery_id == d.id)
        .where(*_delivery_filters(query))
    )
    if query.campaign is not None or "campaign" in query.by:
        stmt = stmt.outerjoin(runs, and_(runs.c.workflow_id == d.workflow_id, runs.c.run_id == d.run_id))
        if query.campaign is not None:
            stmt = stmt.where(runs.c.campaign == query.campaign)
    if groups:
        stmt = stmt.group_by(*groups).order_by(*groups)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    result = []
    for row in rows:
        if not groups and not row["messages"]:
            continue
        figures = {k: v for k, v in row.items() if k not in query.by}
        result.append(FunnelRow(key={name: _key_value(row[name]) for name in query.by}, **figures))
    return result


async def entries(db: Database, query: FunnelQuery) -> list[EntryRow]:
    """Journey runs started in the range, per journey/campaign/day of `query.by` (others ignored)."""
    r = runs.c
    by = [name for name in query.by if name in ("journey", "campaign", "day")]
    columns = {"journey": r.journey, "campaign": r.campaign, "day": _day(db.is_sqlite, r.started_at)}
    groups = [columns[name].label(name) for name in by]
    outcome = func.coalesce(r.outcome, "running").label("outcome")
    stmt = select(*groups, outcome, func.count().label("runs")).select_from(runs)
    if query.journey is not None:
        stmt = stmt.where(r.journey == query.journey)
    if query.campaign is not None:
        stmt = stmt.where(r.campaign == query.campaign)
    if query.since is not None:
        stmt = stmt.where(r.started_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(r.started_at < query.until)
    stmt = stmt.group_by(*groups, outcome).order_by(*groups, outcome)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    grouped: dict[tuple[Any, ...], EntryRow] = {}
    for row in rows:
        key = tuple(_key_value(row[name]) for name in by)
        entry = grouped.setdefault(
            key, EntryRow(key=dict(zip(by, key, strict=True)), entered=0, running=0, outcomes={})
        )
        entry.entered += row["runs"]
        if row["outcome"] == "running":
            entry.running += row["runs"]
        else:
            entry.outcomes[row["outcome"]] = row["runs"]
    return list(grouped.values())


async def reaction_times(db: Database, query: FunnelQuery) -> list[ReactionTimes]:
    """Per channel: how many messages got a reaction, the mean delay and a histogram of delays."""
    d = deliveries.c
    reacted_at = func.coalesce(d.opened_at, d.clicked_at)
    delay = _seconds_between(db.is_sqlite, reacted_at, d.sent_at)
    whens: list[tuple[ColumnElement[bool], str]] = []
    for upper, label in REACT_BUCKETS:
        if upper is not None:
            whens.append((delay < upper, label))
    bucket = case(*whens, else_=REACT_BUCKETS[-1][1]).label("bucket")
    inner = (
        select(d.channel.label("channel"), delay.label("delay"), bucket)
        .where(d.sent_at.is_not(None), reacted_at.is_not(None), *_delivery_filters(query))
        .subquery("reacted")
    )
    stmt = (
        select(inner.c.channel, inner.c.bucket, func.count().label("n"), func.sum(inner.c.delay).label("total"))
        .group_by(inner.c.channel, inner.c.bucket)
        .order_by(inner.c.channel)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    out: dict[str, ReactionTimes] = {}
    totals: dict[str, float] = {}
    for row in rows:
        item = out.setdefault(
            row["channel"],
            ReactionTimes(
                channel=row["channel"],
                reactions=0,
                mean_seconds=None,
                buckets={label: 0 for _, label in REACT_BUCKETS},
            ),
        )
        item.reactions += row["n"]
        item.buckets[row["bucket"]] = row["n"]
        totals[row["channel"]] = totals.get(row["channel"], 0.0) + float(row["total"] or 0.0)
    for channel, item in out.items():
        # A clock skew between provider and us can make a delay negative; it is shown, not hidden.
        item.mean_seconds = totals[channel] / item.reactions if item.reactions else None
    return list(out.values())
