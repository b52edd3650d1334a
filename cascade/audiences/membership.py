"""Segment membership over time: who entered and left each segment, and when.

`refresh_memberships` compares each segment's query with the open memberships and
records the difference in two statements per segment (an INSERT ... SELECT of new
members, an UPDATE closing the memberships of those who left): customers never pass
through Python. The event path refreshes the one customer an event is about; a Temporal
Schedule refreshes everyone, for changes time alone causes (becoming dormant). Each
transition is routed like an event, `segment_entered:<name>` / `segment_exited:<name>`,
so a journey's trigger can be `segment_entered: dormant`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Select, Table, bindparam, case, exists, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
)
from temporalio.service import RPCError, RPCStatusCode

from cascade.audiences.compiler import CUSTOMERS, definition_digest, segment_condition
from cascade.audiences.definition import SegmentCatalog
from cascade.events.outbox import writer
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.infra.temporal import delete_schedule, interval_schedule, upsert_schedule
from cascade.journeys.files import load_all_journeys
from cascade.journeys.inputs import UnknownCustomerError
from cascade.journeys.triggers import route_event
from models.audiences import RefreshMembershipsInput
from models.journey import JourneySpec
from models.tables import SegmentMembership, SegmentRefresh
from models.workflow_types import SEGMENT_REFRESH

log = get_logger("audiences.membership")
MEMBERSHIPS: Table = SQLModel.metadata.tables[SegmentMembership.__tablename__]
REFRESH_WORKFLOW = SEGMENT_REFRESH
REFRESH_SCHEDULE_ID = "cascade-segment-refresh"


@dataclass
class Transitions:
    """Who entered and who left each segment in one refresh."""

    entered: dict[str, list[str]] = field(default_factory=dict)
    exited: dict[str, list[str]] = field(default_factory=dict)

    def events(self) -> list[tuple[str, str]]:
        """(customer id, event type) for every transition, e.g. ("c1", "segment_entered:dormant")."""
        found = [(c, f"segment_entered:{s}") for s, ids in self.entered.items() for c in ids]
        return found + [(c, f"segment_exited:{s}") for s, ids in self.exited.items() for c in ids]


async def _refresh_one(
    conn: AsyncConnection, catalog: SegmentCatalog, segment: str, now: datetime, customer_id: str | None
) -> tuple[list[str], list[str]]:
    condition = segment_condition(catalog, segment, dialect=conn.dialect.name, now=now, customer_id=customer_id)
    open_now = (MEMBERSHIPS.c.segment == segment) & MEMBERSHIPS.c.exited_at.is_(None)
    already = exists(select(literal(1)).where(open_now, MEMBERSHIPS.c.customer_id == CUSTOMERS.c.id))
    joining = select(literal(segment), CUSTOMERS.c.id, literal(now, DateTime(timezone=True))).where(condition, ~already)
    still = exists(
        select(literal(1)).select_from(CUSTOMERS).where(CUSTOMERS.c.id == MEMBERSHIPS.c.customer_id, condition)
    )
    leaving = update(MEMBERSHIPS).where(open_now, ~still).values(exited_at=now)
    if customer_id is not None:
        joining = joining.where(CUSTOMERS.c.id == customer_id)
        leaving = leaving.where(MEMBERSHIPS.c.customer_id == customer_id)
    # Leavers first: the UPDATE then reads only the open rows earlier refreshes wrote, which
    # the planner's statistics know about. After the INSERT it would also read the rows this
    # transaction just added, estimated at none, and test each of them with a nested loop
    # that reruns the segment's grouped subquery per row (measured: `big_spenders`' first
    # refresh, 9,577 joiners, still running after minutes). The outcome is the same either
    # way: a leaver no longer matches, a joiner had no open row.
    await conn.execute(leaving)
    await conn.execute(insert(MEMBERSHIPS).from_select(["segment", "customer_id", "entered_at"], joining))
    # `now` marks this refresh's rows exactly (one refresh per segment at a time: the schedule skips overlaps).
    mine = MEMBERSHIPS.c.segment == segment
    if customer_id is not None:
        mine = mine & (MEMBERSHIPS.c.customer_id == customer_id)
    entered = [
        str(r[0])
        for r in await conn.execute(select(MEMBERSHIPS.c.customer_id).where(mine, MEMBERSHIPS.c.entered_at == now))
    ]
    exited = [
        str(r[0])
        for r in await conn.execute(select(MEMBERSHIPS.c.customer_id).where(mine, MEMBERSHIPS.c.exited_at == now))
    ]
    return entered, exited


async def refresh_memberships(
    db: Database,
    catalog: SegmentCatalog,
    *,
    now: datetime | None = None,
    customer_id: str | None = None,
    segments: list[str] | None = None,
) -> Transitions:
    """Bring the memberships of `segments` (default: all) up to date, for one customer or everyone."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    names = segments if segments is not None else catalog.names()
    if customer_id is not None:
        return await _refresh_customer_memberships(db, catalog, names, now, customer_id)
    result = Transitions()
    if db.engine.dialect.name == "postgresql":
        # Fresh statistics first: after a refresh that opened or closed many memberships
        # (the first one over a big base, a threshold change), PostgreSQL still believes a
        # segment has a handful of open rows and plans the "already a member" test as a
        # nested loop over all of them for every customer (measured: an `active` refresh
        # of 95,763 customers ran for minutes instead of 7 s). ANALYZE samples the table:
        # well under a second, once per refresh of everyone.
        async with db.engine.begin() as conn:
            await conn.execute(text(f"ANALYZE {MEMBERSHIPS.name}"))
    for name in names:
        digest = definition_digest(catalog, name, dialect=db.engine.dialect)
        async with db.engine.begin() as conn:
            entered, exited = await _refresh_one(conn, catalog, name, now, customer_id)
            # In the refresh's transaction: a count never reads this moment without its memberships.
            record = insert_ignoring_conflicts(db, SegmentRefresh).values(
                segment=name, definition=digest, refreshed_at=now
            )
            await conn.execute(
                record.on_conflict_do_update(
                    index_elements=["segment"], set_={"definition": digest, "refreshed_at": now}
                )
            )
        if entered:
            result.entered[name] = entered
        if exited:
            result.exited[name] = exited
    return result


# Building the segments' SQL costs milliseconds per segment, more than running it, and
# so does SQLAlchemy's cache key of a new statement object (a walk of the whole tree on
# every execution; a reused object keeps its key). The judgement is built once per
# `JUDGEMENT_SECONDS` of `now`, customer ids bound at execution, and reused by every
# refresh in that span: the webhooks' refresher runs a round a second, so one statement
# per second rebuilt the tree and its key on every round (about a tenth of the service's
# CPU at 150 events/s, py-spy). Windows thus end up to that many seconds off when deciding
# *whether* to write; the write itself uses the exact time, and the scheduled refresh
# catches what time alone changes.
JUDGEMENT_SECONDS = 10
_JUDGEMENTS: dict[tuple[int, tuple[str, ...], str, datetime], tuple[SegmentCatalog, Select[Any]]] = {}


def _judgement(catalog: SegmentCatalog, names: tuple[str, ...], dialect: str, now: datetime) -> Select[Any]:
    """SELECT, per segment, whether each customer of the bound `customer_ids` matches it and
    whether a membership is open, the customer's id last; windows measured from `now`
    rounded down to `JUDGEMENT_SECONDS`."""
    seconds = int(now.timestamp())
    now = datetime.fromtimestamp(seconds - seconds % JUDGEMENT_SECONDS, UTC)
    key = (id(catalog), names, dialect, now)
    cached = _JUDGEMENTS.get(key)
    if cached is not None and cached[0] is catalog:
        return cached[1]
    columns: list[Any] = []
    for i, name in enumerate(names):
        condition = segment_condition(catalog, name, dialect=dialect, now=now)
        is_open = exists(
            select(literal(1)).where(
                MEMBERSHIPS.c.segment == name,
                MEMBERSHIPS.c.exited_at.is_(None),
                MEMBERSHIPS.c.customer_id == CUSTOMERS.c.id,
            )
        )
        columns += [case((condition, True), else_=False).label(f"in_{i}"), is_open.label(f"open_{i}")]
    statement = select(*columns, CUSTOMERS.c.id).where(CUSTOMERS.c.id.in_(bindparam("customer_ids", expanding=True)))
    _JUDGEMENTS.clear()  # one span's statement at a time
    _JUDGEMENTS[key] = (catalog, statement)
    return statement


async def _refresh_customer_memberships(
    db: Database, catalog: SegmentCatalog, names: list[str], now: datetime, customer_id: str
) -> Transitions:
    """One customer's refresh: every segment judged in one read, written only where it changed.

    The event path runs this for every event, and most events move nobody: one SELECT
    (each segment's condition and open membership, as columns of the customer's row)
    settles it without a write, where the per-segment statements cost four statements and
    a write transaction per segment. A change is written with the same guarded statements
    as the full refresh, in one transaction, so a concurrent refresh never doubles a row.
    """
    return await refresh_customers_memberships(db, catalog, [customer_id], now=now, segments=names)


async def refresh_customers_memberships(
    db: Database,
    catalog: SegmentCatalog,
    customer_ids: list[str],
    *,
    now: datetime | None = None,
    segments: list[str] | None = None,
) -> Transitions:
    """Several customers' refresh (those events were about): one SELECT judges every segment
    for all of them, and only the changed (customer, segment) pairs are written, in one
    transaction with the full refresh's guarded statements."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    names = segments if segments is not None else catalog.names()
    result = Transitions()
    if not names or not customer_ids:
        return result
    judged = _judgement(catalog, tuple(names), db.engine.dialect.name, now)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(judged, {"customer_ids": list(customer_ids)})).all()
    found = {str(row[-1]): row for row in rows}
    changes: list[tuple[str, str]] = []
    for customer_id in dict.fromkeys(customer_ids):
        row = found.get(customer_id)
        # No such customer: only open memberships could need closing (the full statements do it).
        changes += [
            (customer_id, name)
            for i, name in enumerate(names)
            if row is None or bool(row[2 * i]) != bool(row[2 * i + 1])
        ]
    if not changes:
        return result
    async with writer(db), db.engine.begin() as conn:
        for customer_id, name in changes:
            entered, exited = await _refresh_one(conn, catalog, name, now, customer_id)
            if entered:
                result.entered.setdefault(name, []).extend(entered)
            if exited:
                result.exited.setdefault(name, []).extend(exited)
    return result


async def current_segments(db: Database, customer_id: str) -> list[str]:
    """The segments the customer is a member of now (by the recorded memberships)."""
    query = select(MEMBERSHIPS.c.segment).where(
        MEMBERSHIPS.c.customer_id == customer_id, MEMBERSHIPS.c.exited_at.is_(None)
    )
    async with db.engine.connect() as conn:
        return sorted(str(r[0]) for r in await conn.execute(query))


async def route_transitions(
    client: Client,
    db: Database,
    settings: Settings,
    transitions: Transitions,
    journeys: list[JourneySpec],
    now: datetime,
) -> list[str]:
    """Start the journeys whose trigger is a segment transition that happened; their workflow ids."""
    wanted = {e for spec in journeys if spec.trigger for e in spec.trigger.events if e.startswith("segment_")}
    started: list[str] = []
    for customer_id, event_type in transitions.events():
        if event_type not in wanted:
            continue
        try:
            routed = await route_event(
                client,
                db,
                customer_id,
                event_type,
                journeys=journeys,
                settings=settings,
                now=now,
                event_id=f"{event_type}:{customer_id}:{now.isoformat()}",
            )
        except UnknownCustomerError:
            continue
        started += routed.started
    return started


def refresh_schedule(settings: Settings, every: timedelta) -> Schedule:
    """The Schedule that refreshes every segment's memberships `every` so often."""
    return interval_schedule(
        REFRESH_WORKFLOW, RefreshMembershipsInput(), REFRESH_SCHEDULE_ID, settings.task_queue, every, timedelta(hours=1)
    )


async def apply_refresh_schedule(client: Client, settings: Settings, every: timedelta | None = None) -> str:
    """Create the refresh schedule, or update it, to run every `every` (default: the settings)."""
    every = every if every is not None else timedelta(minutes=settings.segment_refresh_minutes)
    created = await upsert_schedule(client, REFRESH_SCHEDULE_ID, refresh_schedule(settings, every))
    verb = "created" if created else "updated"
    return f"{verb} {REFRESH_SCHEDULE_ID}: SegmentRefresh every {_span(every)} on {settings.task_queue}"


async def show_refresh_schedule(client: Client) -> list[str]:
    """The refresh schedule as lines: interval, queue, paused or not, next and recent runs.

    Raises LookupError when there is none.
    """
    try:
        described = await client.get_schedule_handle(REFRESH_SCHEDULE_ID).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise LookupError(f"no {REFRESH_SCHEDULE_ID} schedule (create it: cascade segments schedule)") from None
        raise
    schedule, info = described.schedule, described.info
    every = ", ".join(_span(i.every) for i in schedule.spec.intervals) or "(no interval)"
    queue = schedule.action.task_queue if isinstance(schedule.action, ScheduleActionStartWorkflow) else "?"
    lines = [
        f"{REFRESH_SCHEDULE_ID}: SegmentRefresh every {every} on {queue}"
        + (" (paused)" if schedule.state.paused else ""),
        "next: " + (", ".join(f"{t:%Y-%m-%d %H:%M:%S} UTC" for t in info.next_action_times[:3]) or "none"),
        f"runs so far: {info.num_actions}, skipped as overlapping: {info.num_actions_skipped_overlap}",
    ]
    for action in info.recent_actions[-3:]:
        started = action.action.workflow_id if isinstance(action.action, ScheduleActionExecutionStartWorkflow) else ""
        lines.append(f"ran {action.started_at:%Y-%m-%d %H:%M:%S} UTC: {started}")
    return lines


async def delete_refresh_schedule(client: Client) -> str:
    """Delete the refresh schedule (a refresh it started runs to its end). LookupError if there is none."""
    return await delete_schedule(client, REFRESH_SCHEDULE_ID)


def _span(every: timedelta) -> str:
    """A schedule interval as people write it: 90m, 1h, 2d."""
    seconds = int(every.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def refresh_customer(
    client: Client, db: Database, settings: Settings, catalog: SegmentCatalog, customer_id: str, now: datetime
) -> Transitions:
    """The event path: refresh one customer's memberships and start the journeys their transitions trigger.

    A transition whose journey could not be started (Temporal down) stays recorded; it
    is logged, and not routed again by a later refresh.
    """
    transitions = await refresh_memberships(db, catalog, now=now, customer_id=customer_id)
    if transitions.entered or transitions.exited:
        try:
            await route_transitions(client, db, settings, transitions, load_all_journeys(), now)
        except RPCError as exc:
            log.warning("segments.transition_not_routed", customer_id=customer_id, error=str(exc))
    return transitions


async def refresh_customers(
    client: Client, db: Database, settings: Settings, catalog: SegmentCatalog, customer_ids: list[str], now: datetime
) -> Transitions:
    """`refresh_customer` for several customers at once (`SegmentRefresher`, after events)."""
    transitions = await refresh_customers_memberships(db, catalog, customer_ids, now=now)
    if transitions.entered or transitions.exited:
        try:
            await route_transitions(client, db, settings, transitions, load_all_journeys(), now)
        except RPCError as exc:
            log.warning("segments.transition_not_routed", customers=len(customer_ids), error=str(exc))
    return transitions
