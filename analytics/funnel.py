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
* ``skipped`` / ``skipped_by_reason``: steps that sent nothing (no usable contact point, a
  condition not met, active on another channel, a cap still full, ...), from ``step_skips``,
  which a journey writes when it ends (so a running journey's skips are not counted yet);
  dated at the run's end.
* ``variant``: the experiment arm of the journey that sent the message (``deliveries.variant``).
* ``segment``: the segments the customer was a member of **when the message was created**
  (or the step skipped), from the recorded memberships (``segment_memberships``, kept by the
  event path and the refresh schedule). A customer in two segments counts in both groups.

The date range applies to the message's creation (runs: their start; conversions follow
their message, so a purchase the day after the range still counts for a message inside it).
Campaign comes from the run that sent the message. Every report filters through one
builder, :func:`filters`, over the columns of the table it reads (:class:`Source`).
Whole days older than ``ROLLUP_AFTER`` are read from a daily rollup (``funnel_daily``, see
"The daily rollup" below) with the same figures; the days since, from the same table's
provisional rows as of the last background refresh (:func:`refresh_recent`,
:mod:`analytics.recent`), and only what was created after that refresh from the log.
Everything runs on SQLite and PostgreSQL; the indexes and tables it relies on are in
migrations 0010, 0013, 0014 and 0016.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    Float,
    Integer,
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import SQLModel

from analytics.changes import CHANGE_MARGIN, first_changed_message, first_changed_run
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from models.tables import (
    OPEN_OR_LONG_PG,
    OPEN_OR_LONG_SQLITE,
    Delivery,
    DeliveryStatus,
    EngagementEvent,
    ExperimentAssignment,
    FunnelDaily,
    JourneyRun,
    ReactionDaily,
    RollupState,
    RunsDaily,
    SegmentMembership,
    StepSkip,
)

log = get_logger(__name__)

Dimension = Literal["journey", "step", "channel", "campaign", "day", "variant", "segment"]
DIMENSIONS: tuple[str, ...] = ("journey", "step", "channel", "campaign", "day", "variant", "segment")

deliveries: Table = SQLModel.metadata.tables[Delivery.__tablename__]
events: Table = SQLModel.metadata.tables[EngagementEvent.__tablename__]
runs: Table = SQLModel.metadata.tables[JourneyRun.__tablename__]
skips: Table = SQLModel.metadata.tables[StepSkip.__tablename__]
memberships: Table = SQLModel.metadata.tables[SegmentMembership.__tablename__]
assignments: Table = SQLModel.metadata.tables[ExperimentAssignment.__tablename__]

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
    variant: str | None = None
    segment: str | None = Field(default=None, description="members at the time (segment_memberships)")
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
    skipped: int = 0
    skipped_by_reason: dict[str, int] = Field(default_factory=dict)
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


@asynccontextmanager
async def reading(db: Database, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection for report queries: one read transaction, so one snapshot, on both
    databases (REPEATABLE READ on PostgreSQL, an explicit BEGIN on SQLite); with `write`,
    a transaction committed at the end.

    On PostgreSQL the plans are made for the actual values: asyncpg prepares every statement
    and after five runs PostgreSQL may switch to a generic plan, which for a range like
    "created after $1 and outside the closed days $2..$3" cannot know the range is empty
    and scans a million messages (seconds instead of a millisecond, measured).
    """
    if write:
        async with db.engine.begin() as conn:
            if not db.is_sqlite:
                await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
            yield conn
        return
    async with db.snapshot() as conn:
        # One snapshot for the whole report: how far a rollup reaches and its rows are read
        # together, so a refresh committing in between cannot make a part count twice
        # (rollup rows as of the refresh, log rows from before it).
        if not db.is_sqlite:
            # A report's statements are small by design (rollup rows and the log since the
            # last refresh); compiling one with JIT cost 115 ms of a 190 ms page query whose
            # row guess was high (measured). One statement for both settings: each is a
            # round trip, and a page runs a dozen reports.
            await conn.exec_driver_sql(
                "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true)"
            )
        yield conn


def _seconds_between(is_sqlite: bool, later: Any, earlier: Any) -> ColumnElement[float]:
    if is_sqlite:
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return cast(ColumnElement[float], func.extract("epoch", later - earlier))


def day_of(is_sqlite: bool, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column, on either database."""
    if is_sqlite:
        return cast(ColumnElement[Any], func.date(column))
    # The day in UTC, whatever the session's time zone.
    return sql_cast(func.timezone("UTC", column), Date)


@dataclass(frozen=True)
class Source:
    """The columns of one table a :class:`FunnelQuery` filters on.

    `time` is what the date range and segment membership are judged at. A campaign the
    table does not carry is looked up on the run (`workflow_id`, `run_id`); a filter the
    table cannot answer (None) is refused rather than ignored.
    """

    journey: Any
    time: Any
    customer: Any
    channel: Any | None = None
    campaign: Any | None = None
    variant: Any | None = None
    workflow_id: Any | None = None
    run_id: Any | None = None


DELIVERIES = Source(
    journey=deliveries.c.journey,
    time=deliveries.c.created_at,
    customer=deliveries.c.customer_id,
    channel=deliveries.c.channel,
    variant=deliveries.c.variant,
    workflow_id=deliveries.c.workflow_id,
    run_id=deliveries.c.run_id,
)
SKIPS = Source(
    journey=skips.c.journey,
    time=skips.c.skipped_at,
    customer=skips.c.customer_id,
    channel=skips.c.channel,
    campaign=skips.c.campaign,
    variant=skips.c.variant,
)
RUNS = Source(
    journey=runs.c.journey,
    time=runs.c.started_at,
    customer=runs.c.customer_id,
    campaign=runs.c.campaign,
    workflow_id=runs.c.workflow_id,
    run_id=runs.c.run_id,
)


def member_at(segment: str, customer: Any, at: Any) -> ColumnElement[bool]:
    """EXISTS a membership saying `customer` was in `segment` at time `at`."""
    # An alias of its own: the outer query may join the memberships to group by segment.
    m = memberships.alias("member_at").c
    return exists().where(
        m.segment == segment,
        m.customer_id == customer,
        m.entered_at <= at,
        or_(m.exited_at.is_(None), m.exited_at > at),
    )


def filters(query: FunnelQuery, source: Source) -> list[ColumnElement[bool]]:
    """The WHERE conditions of `query` over `source`: the one place every report filters."""
    where: list[ColumnElement[bool]] = []

    def need(column: Any, name: str) -> Any:
        if column is None:
            raise ValueError(f"{name}: this report cannot be filtered by {name}")
        return column

    if query.journey is not None:
        where.append(source.journey == query.journey)
    if query.channel is not None:
        where.append(need(source.channel, "channel") == query.channel)
    if query.variant is not None:
        if source.variant is not None:
            where.append(source.variant == query.variant)
        else:
            # A run's arm is its experiment assignment (a hold-out run that sent nothing has one too).
            a = assignments.alias("variant_assignment").c
            where.append(
                exists().where(
                    a.workflow_id == need(source.workflow_id, "variant"),
                    a.run_id == source.run_id,
                    a.variant == query.variant,
                )
            )
    if query.campaign is not None:
        if source.campaign is not None:
            where.append(source.campaign == query.campaign)
        else:
            # An alias of its own: the outer query may join the runs to group by campaign.
            r = runs.alias("campaign_run").c
            where.append(
                exists().where(
                    r.workflow_id == need(source.workflow_id, "campaign"),
                    r.run_id == source.run_id,
                    r.campaign == query.campaign,
                )
            )
    if query.segment is not None:
        where.append(member_at(query.segment, source.customer, source.time))
    if query.since is not None:
        where.append(source.time >= query.since)
    if query.until is not None:
        where.append(source.time < query.until)
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


def conversions_subquery(
    is_sqlite: bool, query: FunnelQuery, events_since: datetime | None = None, customers: Any | None = None
) -> Any:
    """(delivery_id, conversions, revenue) per message that got conversions attributed
    (plus one row of the events attributed to none, whose delivery_id is NULL and so
    joins no message).

    `events_since`: no message of interest was created before it, so earlier events cannot
    be attributed to one (a message is sent after it is created, an event follows its
    message): they are not looked at, which keeps a query over recent days from judging
    every purchase ever made. `customers`: a SELECT of the customers of the messages of
    interest; only their events can be attributed to one of those messages (last touch is
    the customer's own message), so only theirs are judged.
    """
    e = events.c
    where: list[ColumnElement[bool]] = [e.type.in_(query.conversion_events), e.customer_id.is_not(None)]
    if events_since is not None:
        where.append(e.occurred_at >= events_since)
    if customers is not None:
        where.append(e.customer_id.in_(customers))
    attributed = (
        select(
            _attributed_delivery(is_sqlite, query).label("delivery_id"),
            func.coalesce(e.properties["amount"].as_float(), 0.0).label("amount"),
        )
        .where(*where)
        .subquery("attributed")
    )
    # No "delivery_id IS NOT NULL" filter: PostgreSQL pushed it into the subquery and ran
    # the last-touch probe twice per event (measured: 2 x 6,875 probes, most of a 0.5 s
    # funnel). The NULL group it would drop joins no message anyway.
    return (
        select(
            attributed.c.delivery_id,
            func.count().label("conversions"),
            func.sum(attributed.c.amount).label("revenue"),
        )
        .group_by(attributed.c.delivery_id)
        .subquery("conversions")
    )


def _group_columns(is_sqlite: bool, by: Sequence[str], source: Source, step: Any) -> list[ColumnElement[Any]]:
    """The group columns of `by` over `source` (campaign from the run, segment from the membership join)."""
    columns: dict[str, Any] = {
        "journey": source.journey,
        "step": step,
        "channel": source.channel,
        "campaign": source.campaign if source.campaign is not None else runs.c.campaign,
        "day": day_of(is_sqlite, source.time),
        "variant": source.variant,
        "segment": memberships.c.segment,
    }
    return [columns[name].label(name) for name in by]


def _grouped_joins(stmt: Any, by: Sequence[str], source: Source) -> Any:
    """The joins `by` needs: the run for a campaign, the memberships (at the time) for a segment."""
    if "campaign" in by and source.campaign is None:
        stmt = stmt.outerjoin(runs, and_(runs.c.workflow_id == source.workflow_id, runs.c.run_id == source.run_id))
    if "segment" in by:
        m = memberships.c
        stmt = stmt.join(
            memberships,
            and_(
                m.customer_id == source.customer,
                m.entered_at <= source.time,
                or_(m.exited_at.is_(None), m.exited_at > source.time),
            ),
        )
    return stmt


def _key_value(value: Any) -> str | int | None:
    if value is None or isinstance(value, int | str):
        return value
    return str(value)


def _sort_key(key: dict[str, str | int | None]) -> tuple[tuple[bool, str | int], ...]:
    # Groups sort as SQL would order them, missing values last.
    return tuple((value is None, value if value is not None else "") for value in key.values())


FIGURES: tuple[str, ...] = (
    "messages",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "failed",
    "unknown",
    "unsubscribed",
    "converted",
    "revenue",
    "cost",
)


def _raw_select(
    is_sqlite: bool,
    query: FunnelQuery,
    *extra: ColumnElement[bool],
    events_since: datetime | None = None,
    few: bool = False,
) -> Any:
    """The funnel over the delivery log itself: one aggregate SELECT, grouped by `query.by`.

    `events_since`: the earliest creation time of the messages selected (see
    :func:`conversions_subquery`). `few`: the messages selected are a small part of the log
    (a report's log part next to a rollup): only their customers' purchases are judged,
    instead of every purchase since `events_since` (a month of them for a range starting
    inside its first day, measured 0.45 s of a 0.5 s funnel)."""
    d = deliveries.c
    customers = None
    if few:
        # Its own FROM (no correlation): the customers of the selected messages.
        customers = select(d.customer_id).where(*filters(query, DELIVERIES), *extra).correlate(None)
    conv = conversions_subquery(is_sqlite, query, events_since, customers)
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

    groups = _group_columns(is_sqlite, query.by, DELIVERIES, d.step)
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
    )
    stmt = _grouped_joins(stmt, query.by, DELIVERIES).where(*filters(query, DELIVERIES), *extra)
    if groups:
        stmt = stmt.group_by(*groups)
    return stmt


def _add(found: dict[tuple[Any, ...], FunnelRow], by: Sequence[str], rows: Sequence[Any]) -> None:
    """Add aggregate rows into `found` by group (the rollup's and the log's parts of one range)."""
    for row in rows:
        if not row["messages"]:
            continue
        values = {name: _key_value(row[name]) for name in by}
        item = found.setdefault(tuple(values.values()), FunnelRow(key=dict(values)))
        for name in FIGURES:
            setattr(item, name, getattr(item, name) + (row[name] or 0))


async def funnel(
    db: Database,
    query: FunnelQuery,
    *,
    now: datetime | None = None,
    rollup: bool = True,
    snap: Snapshot | None = None,
) -> list[FunnelRow]:
    """The funnel per group of `query.by`, ordered by the groups (one row when ungrouped).

    Whole days the daily rollup holds are read from it, the rest of the range from the
    delivery log (see :func:`refresh_rollup`); `rollup=False` reads everything from the log.
    The figures are the same either way (the tests hold them equal). With `snap`, read in
    that snapshot (a page's: see :class:`Snapshot`).
    """
    found: dict[tuple[Any, ...], FunnelRow] = {}
    raw_where: list[ColumnElement[bool]] = []
    use_rollup = rollup and _rollup_answers(query)
    if use_rollup and snap is None:
        await refresh_rollup(db, now=now)
    # One connection for every part: each one more is a few round trips on a loaded server.
    async with report_snapshot(db, snap) as reader:
        conn = reader.conn
        days = await reader.rolled_days(ROLLUP_NAME, query) if use_rollup else None
        parts = []
        log_query = query
        if days is not None:
            parts.append(_rollup_select(query, *days))
            log_query, in_log = log_part(query, deliveries.c.created_at, days)
            raw_where.append(in_log)
        start = log_part_start(query, days)
        parts.append(_raw_select(db.is_sqlite, log_query, *raw_where, events_since=start, few=days is not None))
        _add(found, query.by, (await conn.execute(together(parts))).mappings().all())
        skipped = await skipped_steps(db, query, conn)
    for group, reasons in skipped.items():
        item = found.setdefault(group, FunnelRow(key=dict(zip(query.by, group, strict=True))))
        item.skipped_by_reason = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        item.skipped = sum(reasons.values())
    return sorted(found.values(), key=lambda row: _sort_key(row.key))


def together(parts: Sequence[Any]) -> Any:
    """The parts of one report (rollup rows, the log since) as one statement: UNION ALL of
    SELECTs with the same columns, added up in Python by group. Each statement less is a
    round trip less, and a wait for a core less on a loaded machine."""
    return parts[0] if len(parts) == 1 else union_all(*parts)


def log_part_start(query: FunnelQuery, days: tuple[datetime | None, datetime] | None) -> datetime | None:
    """No message the log part of `query` counts was created before this (None: any may be),
    so purchases before it cannot be attributed to one (:func:`conversions_subquery`).

    The range's start when it has one (the log part is within it), else the rollup's end
    when the rollup holds everything before. Known from the range and the reach alone:
    asking the log for its first message took one or two more round trips per report.
    """
    if days is None:
        return query.since
    start, end = days
    if start is None or (query.since is not None and _utc(query.since) >= start):
        return end  # the log part is what was created after the rollup (see :func:`outside`)
    return query.since


def regroup(rows: Sequence[FunnelRow], by: Sequence[str]) -> list[FunnelRow]:
    """Funnel rows grouped by fewer dimensions (a subset of theirs), summed: every figure is a
    count or a sum, so one query by (journey, channel) answers by journey, by channel and
    the total too."""
    found: dict[tuple[Any, ...], FunnelRow] = {}
    for row in rows:
        key = {name: row.key[name] for name in by}
        item = found.setdefault(tuple(key.values()), FunnelRow(key=key))
        for name in (*FIGURES, "skipped"):
            setattr(item, name, getattr(item, name) + getattr(row, name))
        for reason, count in row.skipped_by_reason.items():
            item.skipped_by_reason[reason] = item.skipped_by_reason.get(reason, 0) + count
    for item in found.values():
        item.skipped_by_reason = dict(sorted(item.skipped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    return sorted(found.values(), key=lambda row: _sort_key(row.key))


# --- The daily rollup -------------------------------------------------------------------
#
# Scanning a million messages per question is what made the funnel take seconds. Days that
# are over (older than ROLLUP_AFTER: every step's wait, late reactions and the default
# attribution window are behind them) are aggregated once into funnel_daily; the funnel
# reads them from there and only the recent days from the log. The rollup is built
# incrementally by whoever asks first after a day closes (compare-and-set on rollup_state,
# so two readers never add a day twice); a reaction to a message older than ROLLUP_AFTER
# is not seen until `refresh_rollup(..., rebuild=True)`.

ROLLUP_AFTER = timedelta(days=35)
ROLLUP_WINDOW = timedelta(days=7)
ROLLUP_EVENTS = ["purchase"]
ROLLUP_DIMENSIONS = ("journey", "step", "channel", "campaign", "day", "variant")
ROLLUP_NAME = "funnel_daily"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
daily: Table = SQLModel.metadata.tables[FunnelDaily.__tablename__]
rollup_state: Table = SQLModel.metadata.tables[RollupState.__tablename__]
DAILY = Source(
    journey=daily.c.journey,
    time=daily.c.day,
    customer=None,
    channel=daily.c.channel,
    campaign=daily.c.campaign,
    variant=daily.c.variant,
)


def _rollup_answers(query: FunnelQuery) -> bool:
    """Whether the rollup holds what `query` asks (no segments, the default attribution)."""
    return (
        query.segment is None
        and all(name in ROLLUP_DIMENSIONS for name in query.by)
        and query.attribution_window == ROLLUP_WINDOW
        and query.conversion_events == ROLLUP_EVENTS
    )


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _midnight(at: datetime) -> datetime:
    """The start (UTC) of the day `at` falls in."""
    return _utc(at).replace(hour=0, minute=0, second=0, microsecond=0)


def _next_midnight(at: datetime) -> datetime:
    """`at` itself when it is a midnight (UTC), else the next one."""
    start = _midnight(at)
    return start if start == _utc(at) else start + timedelta(days=1)


def _rollup_select(query: FunnelQuery, start: datetime | None, end: datetime) -> Any:
    """The rollup's rows of whole days [start, end), grouped by `query.by`."""
    c = daily.c
    columns = {
        "journey": c.journey,
        "step": c.step,
        "channel": c.channel,
        "campaign": c.campaign,
        "day": c.day,
        "variant": c.variant,
    }
    groups = [columns[name].label(name) for name in query.by]
    sums = [sql_cast(func.coalesce(func.sum(c[name]), 0), c[name].type).label(name) for name in FIGURES]
    untimed = query.model_copy(update={"since": None, "until": None})
    where = [*filters(untimed, DAILY), days_before(c.day, end)]
    if start is not None:
        where.append(c.day >= start.date())
    stmt = select(*groups, *sums).where(*where)
    return stmt.group_by(*groups) if groups else stmt


Build = Callable[[AsyncConnection, datetime, datetime], Awaitable[None]]
# How far each rollup is known to be built, per engine (a database): rollups only move
# forward, so a page need not ask rollup_state again until the next day closes.
_BUILT: weakref.WeakKeyDictionary[AsyncEngine, dict[str, datetime]] = weakref.WeakKeyDictionary()


async def advance_rollup(
    db: Database, name: str, table: Table, build: Build, *, now: datetime | None = None, rebuild: bool = False
) -> datetime:
    """Move rollup `name` up to the last closed day: `build` adds the rows of [from, to) to
    `table` (whose `day` column says which day a row is). Returns the time it now reaches.

    Compare-and-set on rollup_state: of two readers that find the same days closed, one
    builds them and the other reads what was there. `rebuild` starts from nothing.
    """
    cutoff = _midnight((now or datetime.now(UTC)) - ROLLUP_AFTER)
    known = _BUILT.setdefault(db.engine, {})
    if not rebuild and name in known and known[name] >= cutoff:
        # Built that far already (by this process or another): a rollup only moves forward,
        # so this is still true, and the page need not ask the database again.
        return known[name]
    known.pop(name, None)
    s = rollup_state.c
    async with reading(db, write=True) as conn:
        if rebuild:
            await conn.execute(delete(table))
            await conn.execute(delete(rollup_state).where(s.name == name))
        row = (await conn.execute(select(s.until).where(s.name == name))).scalar_one_or_none()
        if row is None:
            await conn.execute(
                insert_ignoring_conflicts(db, RollupState).values(name=name, until=_EPOCH).on_conflict_do_nothing()
            )
            row = _EPOCH
        built = row if row.tzinfo else row.replace(tzinfo=UTC)
        if built >= cutoff:
            known[name] = built
            return built
        moved = await conn.execute(update(rollup_state).where(s.name == name, s.until == row).values(until=cutoff))
        if moved.rowcount != 1:
            return built
        await conn.execute(delete(table).where(table.c.day >= built.date(), table.c.day < cutoff.date()))
        await build(conn, built, cutoff)
    known[name] = cutoff
    return cutoff


# The earliest day of the recent days that changed since a time (analytics.changes), given
# the connection, the first recent day's midnight and that time; None: none before it.
Changed = Callable[[AsyncConnection, datetime, datetime], Awaitable[date | None]]


async def refresh_recent(
    db: Database,
    name: str,
    table: Table,
    build: Build,
    *,
    now: datetime | None = None,
    changed: Changed | None = None,
) -> bool:
    """Replace rollup `name`'s rows of the days after the closed ones (up to `now`) with what
    the log says now: provisional rows a report reads instead of scanning the recent log,
    which it then reads only from `now` on. Whether this call did it.

    With `changed`, only the days from the earliest one that changed since the previous
    refresh (:mod:`analytics.changes`, looked for from CHANGE_MARGIN before it) are built
    again; the others keep their rows, which are still the log as it is. Without it, or
    when there are no recent rows yet, every recent day is.

    Idempotent (the days' rows are deleted and built again, never added to) and a
    compare-and-set on rollup_state (`until` and `recent_until` as read): of two refreshers
    one builds and the other finds the row moved and does nothing; a day closing meanwhile
    (:func:`advance_rollup`) moves `until`, so a refresher that read the old one stops too.
    The closed days must be built first (:func:`advance_rollup`).
    """
    at = _utc(now or datetime.now(UTC))
    s = rollup_state.c
    async with reading(db, write=True) as conn:
        row = (await conn.execute(select(s.until, s.recent_until).where(s.name == name))).one_or_none()
        if row is None:
            raise LookupError(f"{name}: its closed days are not built yet (advance_rollup first)")
        closed = _utc(row.until)
        if closed >= at or (row.recent_until is not None and _utc(row.recent_until) >= at):
            return False
        same = s.recent_until.is_(None) if row.recent_until is None else s.recent_until == row.recent_until
        moved = await conn.execute(
            update(rollup_state).where(s.name == name, s.until == row.until, same).values(recent_until=at)
        )
        if moved.rowcount != 1:
            return False
        start = closed
        if changed is not None and row.recent_until is not None and _utc(row.recent_until) > closed:
            since = max(closed, _utc(row.recent_until) - CHANGE_MARGIN)
            first = min(filter(None, (since.date(), await changed(conn, closed, since))))
            start = max(closed, datetime.combine(first, datetime.min.time(), UTC))
        log.info("analytics.refresh_recent", rollup=name, rebuilt_from=start.date().isoformat(), as_of=at.isoformat())
        await conn.execute(delete(table).where(table.c.day >= start.date()))
        await build(conn, start, at)
    return True


@dataclass(frozen=True)
class Reach:
    """How far a rollup holds the log: whole closed days before `closed` (final), then the
    recent days' provisional rows, which hold the messages created before `until` as the log
    was at `until` (`until == closed`: no recent rows)."""

    closed: datetime
    until: datetime


async def rollup_reach(conn: AsyncConnection, name: str) -> Reach | None:
    """How far rollup `name` reaches, read on `conn` (the report's snapshot); None: not built."""
    s = rollup_state.c
    row = (await conn.execute(select(s.until, s.recent_until).where(s.name == name))).one_or_none()
    return _reach_of(row.until, row.recent_until) if row is not None else None


def _reach_of(until: datetime, recent_until: datetime | None) -> Reach:
    closed = _utc(until)
    recent = _utc(recent_until) if recent_until is not None else closed
    return Reach(closed=closed, until=max(closed, recent))


class Snapshot:
    """One connection and one snapshot for several reports (a console page).

    Every report of a page reads the same rollup state and the same log, and the page pays
    one pool checkout, one transaction and one read of ``rollup_state`` instead of one of
    each per report (each a few round trips, each a wait for a core on a loaded machine).
    A report given a snapshot does not move the closed days itself: whoever opens the
    snapshot does that first (:func:`analytics.recent.page_snapshot`).
    """

    def __init__(self, conn: AsyncConnection, reaches: dict[str, Reach | None] | None = None) -> None:
        self.conn = conn
        self._reaches: dict[str, Reach | None] = dict(reaches or {})

    async def reach(self, name: str) -> Reach | None:
        """How far rollup `name` reaches in this snapshot (read once, then remembered)."""
        if name not in self._reaches:
            self._reaches[name] = await rollup_reach(self.conn, name)
        return self._reaches[name]

    async def rolled_days(self, name: str, query: FunnelQuery) -> tuple[datetime | None, datetime] | None:
        """The part [start, end) of `query`'s range rollup `name` holds (see :func:`rollup_range`)."""
        reach = await self.reach(name)
        return rollup_range(query, reach.until) if reach is not None else None

    def as_of(self) -> datetime | None:
        """The oldest time the read rollups' recent rows are as of; None when none has recent
        rows (the reports read the recent days from the log: live)."""
        return min((r.until for r in self._reaches.values() if r is not None and r.until > r.closed), default=None)


@asynccontextmanager
async def snapshot(db: Database, names: Sequence[str] = ()) -> AsyncIterator[Snapshot]:
    """A :class:`Snapshot` on a connection of its own, with the reach of rollups `names`
    read in one statement (the others are read when a report asks)."""
    s = rollup_state.c
    async with reading(db) as conn:
        reaches: dict[str, Reach | None] = dict.fromkeys(names)
        if names:
            for row in await conn.execute(select(s.name, s.until, s.recent_until).where(s.name.in_(names))):
                reaches[row.name] = _reach_of(row.until, row.recent_until)
        yield Snapshot(conn, reaches)


@asynccontextmanager
async def report_snapshot(db: Database, snap: Snapshot | None) -> AsyncIterator[Snapshot]:
    """What a report reads in: `snap`, or a snapshot of its own when it was given none."""
    if snap is not None:
        yield snap
    else:
        async with snapshot(db) as own:
            yield own


def days_before(day: Any, end: datetime) -> ColumnElement[bool]:
    """Rollup rows of the days before `end`; when `end` falls inside a day, that day's rows
    too (recent rows: they hold exactly its messages before `end`)."""
    return cast(ColumnElement[bool], day < end.date() if end == _midnight(end) else day <= end.date())


def _funnel_build(db: Database) -> Build:
    async def build(conn: AsyncConnection, since: datetime, until: datetime) -> None:
        day_query = FunnelQuery(since=since, until=until, by=list(ROLLUP_DIMENSIONS))
        aggregate = _raw_select(db.is_sqlite, day_query, events_since=since).subquery("day_rows")
        columns = ["day", "journey", "step", "channel", "campaign", "variant", *FIGURES]
        await conn.execute(insert(daily).from_select(columns, select(*(aggregate.c[name] for name in columns))))

    return build


async def refresh_rollup(db: Database, *, now: datetime | None = None, rebuild: bool = False) -> datetime:
    """Roll the funnel of the days that closed since the last call into funnel_daily; the time it reaches.

    `rebuild` starts again from nothing (after a late change to old messages).
    """
    return await advance_rollup(db, ROLLUP_NAME, daily, _funnel_build(db), now=now, rebuild=rebuild)


async def refresh_recent_funnel(db: Database, *, now: datetime | None = None) -> bool:
    """funnel_daily's recent days as the log is now (:func:`refresh_recent`)."""
    await refresh_rollup(db, now=now)
    return await refresh_recent(db, ROLLUP_NAME, daily, _funnel_build(db), now=now, changed=_messages_changed(db))


def rollup_attribution(is_sqlite: bool) -> Any:
    """The last-touch subquery (correlated to the events) with the rollups' attribution window."""
    return _attributed_delivery(is_sqlite, FunnelQuery(attribution_window=ROLLUP_WINDOW))


def _messages_changed(db: Database) -> Changed:
    """The funnel's and time to react's changed days: those of the messages that changed."""

    async def changed(conn: AsyncConnection, closed: datetime, since: datetime) -> date | None:
        return await first_changed_message(
            conn, closed, since, attributed=rollup_attribution(db.is_sqlite), conversion_events=ROLLUP_EVENTS
        )

    return changed


def rollup_range(query: FunnelQuery, frozen_until: datetime) -> tuple[datetime | None, datetime] | None:
    """The whole days [start, end) of `query`'s range a rollup built up to `frozen_until` holds (None: none)."""
    start = _next_midnight(query.since) if query.since is not None else None
    end = min(_midnight(query.until), frozen_until) if query.until is not None else frozen_until
    return (start, end) if start is None or start < end else None


def log_part(
    query: FunnelQuery, column: Any, days: tuple[datetime | None, datetime]
) -> tuple[FunnelQuery, ColumnElement[bool]]:
    """What of `query`'s range the log answers next to the rolled-up `days` [start, end):
    `query` without its range, and the range's pieces outside those days as conditions on
    `column` -- the tail of a first day that starts inside it ([since, start)), and what
    came after the rollup ([end, until)).

    Each piece is one range (both bounds in one AND), and the range is not repeated outside
    them: PostgreSQL estimates such a piece from the column's histogram, but "since <= t AND
    (t < start OR t >= end)" as independent factors (measured: 156,825 runs guessed for
    6,739), which made it hash-join every message and every consent for a day's tail. A
    first piece that is empty (the range starts at the first rolled-up midnight) is left
    out: "before start OR ..." with nothing before makes it guess a third of the table."""
    start, end = days
    pieces: list[ColumnElement[bool]] = []
    since = _utc(query.since) if query.since is not None else None
    if start is not None and (since is None or since < start):
        pieces.append(and_(*((column >= since,) if since is not None else ()), column < start))
    pieces.append(and_(column >= end, *((column < query.until,) if query.until is not None else ())))
    untimed = query.model_copy(update={"since": None, "until": None})
    return untimed, pieces[0] if len(pieces) == 1 else or_(*pieces)


async def skipped_steps(
    db: Database, query: FunnelQuery, conn: AsyncConnection | None = None
) -> dict[tuple[Any, ...], dict[str, int]]:
    """Skipped steps per group of `query.by` (key values in its order): reason -> count
    (on `conn` when given)."""
    s = skips.c
    groups = _group_columns(db.is_sqlite, query.by, SKIPS, s.step)
    stmt = select(*groups, s.reason, func.count().label("n")).select_from(skips)
    stmt = _grouped_joins(stmt, query.by, SKIPS).where(*filters(query, SKIPS))
    stmt = stmt.group_by(*groups, s.reason)
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    if conn is None:
        async with reading(db) as own:
            rows = (await own.execute(stmt)).mappings().all()
    else:
        rows = (await conn.execute(stmt)).mappings().all()
    for row in rows:
        key = tuple(_key_value(row[name]) for name in query.by)
        out.setdefault(key, {})[row["reason"]] = int(row["n"])
    return out


LONG_RUN = timedelta(days=34)
RUNS_ROLLUP = "runs_daily"
runs_daily: Table = SQLModel.metadata.tables[RunsDaily.__tablename__]
RUNS_DAYS = Source(journey=runs_daily.c.journey, time=runs_daily.c.day, customer=None, campaign=runs_daily.c.campaign)


def open_or_long(is_sqlite: bool) -> ColumnElement[bool]:
    """Runs a closed day's rollup does not hold: no outcome yet, or ended LONG_RUN or more after
    their start. The same text as the partial index ix_journey_runs_open_or_long, so PostgreSQL
    reads them from it (a few rows) instead of scanning every run of the range."""
    # Unqualified column names: only ever used on queries over journey_runs alone.
    return literal_column(f"({OPEN_OR_LONG_SQLITE if is_sqlite else OPEN_OR_LONG_PG})", Boolean)


async def refresh_runs_rollup(db: Database, *, now: datetime | None = None, rebuild: bool = False) -> datetime:
    """Roll the runs of the days that closed since the last call, by outcome, into runs_daily.

    Only runs that ended within LONG_RUN of their start: when a day closes (ROLLUP_AFTER
    after it) those are all known and never change again; the rest are counted live.
    """

    return await advance_rollup(db, RUNS_ROLLUP, runs_daily, _runs_build(db, recent=False), now=now, rebuild=rebuild)


def _runs_build(db: Database, *, recent: bool) -> Build:
    """Closed days: the runs that ended within LONG_RUN. Recent days: every run, the ones
    not over yet as ``running`` (as they were at the refresh)."""

    async def build(conn: AsyncConnection, since: datetime, until: datetime) -> None:
        r = runs.c
        day = day_of(db.is_sqlite, r.started_at).label("day")
        outcome = func.coalesce(r.outcome, "running").label("outcome")
        where = [r.started_at >= since, r.started_at < until]
        if not recent:
            where.append(~open_or_long(db.is_sqlite))
        stmt = (
            select(day, r.journey, r.campaign, outcome, func.count().label("runs"))
            .where(*where)
            .group_by(day, r.journey, r.campaign, outcome)
        )
        await conn.execute(insert(runs_daily).from_select(["day", "journey", "campaign", "outcome", "runs"], stmt))

    return build


async def refresh_recent_runs(db: Database, *, now: datetime | None = None) -> bool:
    """runs_daily's recent days as journey_runs is now (:func:`refresh_recent`)."""
    await refresh_runs_rollup(db, now=now)
    build = _runs_build(db, recent=True)
    return await refresh_recent(db, RUNS_ROLLUP, runs_daily, build, now=now, changed=first_changed_run)


async def entries(
    db: Database,
    query: FunnelQuery,
    *,
    now: datetime | None = None,
    rollup: bool = True,
    snap: Snapshot | None = None,
) -> list[EntryRow]:
    """Journey runs started in the range, per journey/campaign/day of `query.by` (others ignored).

    Closed days come from runs_daily (:func:`refresh_runs_rollup`) plus, live, their runs
    still open or longer than LONG_RUN; the other days from journey_runs. `rollup=False`
    reads only journey_runs; the figures are the same either way (the tests hold them equal).
    With `snap`, read in that snapshot (:class:`Snapshot`).
    """
    r = runs.c
    by = [name for name in query.by if name in ("journey", "campaign", "day")]
    columns = {"journey": r.journey, "campaign": r.campaign, "day": day_of(db.is_sqlite, r.started_at)}
    groups = [columns[name].label(name) for name in by]
    outcome = func.coalesce(r.outcome, "running").label("outcome")

    def live(*extra: ColumnElement[bool], of: FunnelQuery = query) -> Any:
        stmt = select(*groups, outcome, func.count().label("runs")).select_from(runs)
        stmt = stmt.where(*filters(of, RUNS), *extra)
        return stmt.group_by(*groups, outcome)

    use_rollup = rollup and query.segment is None and query.variant is None
    if use_rollup and snap is None:
        await refresh_runs_rollup(db, now=now)
    grouped: dict[tuple[Any, ...], EntryRow] = {}
    async with report_snapshot(db, snap) as reader:
        conn = reader.conn
        statements = []
        reach = await reader.reach(RUNS_ROLLUP) if use_rollup else None
        days = rollup_range(query, reach.until) if reach is not None else None
        if reach is not None and days is not None:
            c = runs_daily.c
            untimed = query.model_copy(update={"since": None, "until": None})
            where = [*filters(untimed, RUNS_DAYS), days_before(c.day, days[1])]
            if days[0] is not None:
                where.append(c.day >= days[0].date())
            rolled = {"journey": c.journey, "campaign": c.campaign, "day": c.day}
            keys = [rolled[name].label(name) for name in by]
            statements.append(
                select(*keys, c.outcome.label("outcome"), func.sum(c.runs).label("runs"))
                .where(*where)
                .group_by(*keys, c.outcome)
            )
            # Closed days hold only the runs that were over within LONG_RUN: the rest live.
            # (Recent days' rows hold every run, as it was at the refresh.)
            closed_end = min(days[1], reach.closed)
            if days[0] is None or days[0] < closed_end:
                inside = and_(r.started_at < closed_end, *((r.started_at >= days[0],) if days[0] is not None else ()))
                statements.append(live(inside, open_or_long(db.is_sqlite)))
            log_query, in_log = log_part(query, r.started_at, days)
            statements.append(live(in_log, of=log_query))
        if not statements:
            statements.append(live())
        for row in (await conn.execute(together(statements))).mappings().all():
            key = tuple(_key_value(row[name]) for name in by)
            entry = grouped.setdefault(
                key, EntryRow(key=dict(zip(by, key, strict=True)), entered=0, running=0, outcomes={})
            )
            count = int(row["runs"] or 0)
            entry.entered += count
            if row["outcome"] == "running":
                entry.running += count
            else:
                entry.outcomes[row["outcome"]] = entry.outcomes.get(row["outcome"], 0) + count
    for entry in grouped.values():
        entry.outcomes = dict(sorted(entry.outcomes.items()))
    return sorted((e for e in grouped.values() if e.entered), key=lambda e: _sort_key(e.key))


def _reaction_select(is_sqlite: bool, query: FunnelQuery, by: Sequence[str], *extra: ColumnElement[bool]) -> Any:
    """Per group of `by` (delivery columns and/or ``day``) and bucket: reactions and summed delay, from the log."""
    d = deliveries.c
    reacted_at = func.coalesce(d.opened_at, d.clicked_at)
    delay = _seconds_between(is_sqlite, reacted_at, d.sent_at)
    whens: list[tuple[ColumnElement[bool], str]] = []
    for upper, label in REACT_BUCKETS:
        if upper is not None:
            whens.append((delay < upper, label))
    bucket = case(*whens, else_=REACT_BUCKETS[-1][1]).label("bucket")
    groups = _group_columns(is_sqlite, by, DELIVERIES, d.step)
    inner = (
        select(*groups, delay.label("delay"), bucket)
        .select_from(deliveries)
        .where(d.sent_at.is_not(None), reacted_at.is_not(None), *filters(query, DELIVERIES), *extra)
    )
    inner = _grouped_joins(inner, by, DELIVERIES).subquery("reacted")
    keys = [inner.c[name] for name in by]
    return select(
        *keys,
        inner.c.bucket,
        func.count().label("n"),
        sql_cast(func.coalesce(func.sum(inner.c.delay), 0.0), Float).label("total"),
    ).group_by(*keys, inner.c.bucket)


REACTION_ROLLUP = "reaction_daily"
REACTION_DIMENSIONS = ("day", "journey", "channel", "campaign", "variant")
reactions_daily: Table = SQLModel.metadata.tables[ReactionDaily.__tablename__]
REACTION_DAYS = Source(
    journey=reactions_daily.c.journey,
    time=reactions_daily.c.day,
    customer=None,
    channel=reactions_daily.c.channel,
    campaign=reactions_daily.c.campaign,
    variant=reactions_daily.c.variant,
)


async def refresh_reaction_rollup(db: Database, *, now: datetime | None = None, rebuild: bool = False) -> datetime:
    """Roll the time-to-react histogram of the days that closed since the last call into reaction_daily."""

    return await advance_rollup(db, REACTION_ROLLUP, reactions_daily, _reaction_build(db), now=now, rebuild=rebuild)


def _reaction_build(db: Database) -> Build:
    async def build(conn: AsyncConnection, since: datetime, until: datetime) -> None:
        day_query = FunnelQuery(since=since, until=until)
        rows = _reaction_select(db.is_sqlite, day_query, REACTION_DIMENSIONS).subquery("day_rows")
        columns = [*REACTION_DIMENSIONS, "bucket"]
        stmt = select(*(rows.c[name] for name in columns), rows.c.n, rows.c.total)
        await conn.execute(insert(reactions_daily).from_select([*columns, "reactions", "seconds"], stmt))

    return build


async def refresh_recent_reactions(db: Database, *, now: datetime | None = None) -> bool:
    """reaction_daily's recent days as the log is now (:func:`refresh_recent`)."""
    await refresh_reaction_rollup(db, now=now)
    build = _reaction_build(db)
    return await refresh_recent(db, REACTION_ROLLUP, reactions_daily, build, now=now, changed=_messages_changed(db))


async def reaction_times(
    db: Database,
    query: FunnelQuery,
    *,
    now: datetime | None = None,
    rollup: bool = True,
    snap: Snapshot | None = None,
) -> list[ReactionTimes]:
    """Per channel: how many messages got a reaction, the mean delay and a histogram of delays.

    Closed days come from the reaction_daily histogram (:func:`refresh_reaction_rollup`),
    the recent ones from the log (indexed by creation time); `rollup=False` reads only the
    log. The figures are the same either way (the tests hold them equal). With `snap`, read
    in that snapshot (:class:`Snapshot`).
    """
    extra: list[ColumnElement[bool]] = []
    use_rollup = rollup and query.segment is None
    if use_rollup and snap is None:
        await refresh_reaction_rollup(db, now=now)
    async with report_snapshot(db, snap) as reader:
        conn = reader.conn
        days = await reader.rolled_days(REACTION_ROLLUP, query) if use_rollup else None
        parts = []
        if days is not None:
            c = reactions_daily.c
            untimed = query.model_copy(update={"since": None, "until": None})
            where = [*filters(untimed, REACTION_DAYS), days_before(c.day, days[1])]
            if days[0] is not None:
                where.append(c.day >= days[0].date())
            stmt = (
                select(
                    c.channel,
                    c.bucket,
                    func.sum(c.reactions).label("n"),
                    func.sum(c.seconds).label("total"),
                )
                .where(*where)
                .group_by(c.channel, c.bucket)
            )
            parts.append(stmt)
            log_query, in_log = log_part(query, deliveries.c.created_at, days)
            extra.append(in_log)
        else:
            log_query = query
        parts.append(_reaction_select(db.is_sqlite, log_query, ["channel"], *extra))
        rows = list((await conn.execute(together(parts))).mappings().all())
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
        item.reactions += int(row["n"])
        item.buckets[row["bucket"]] += int(row["n"])
        totals[row["channel"]] = totals.get(row["channel"], 0.0) + float(row["total"] or 0.0)
    for channel, item in out.items():
        # A clock skew between provider and us can make a delay negative; it is shown, not hidden.
        item.mean_seconds = totals[channel] / item.reactions if item.reactions else None
    return sorted(out.values(), key=lambda item: item.channel)
