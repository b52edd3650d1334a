"""Application events (POST /v1/events): stored on the profile with the signals they imply.

No network call inside the transaction: the event, the profile change and one outbox row
per signal are stored together; the caller hands the rows to the relay and starts the
journeys the event triggers (`cascade.journeys.triggers.start_planned`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.events.outbox import Outboxed, OutboxRow, enqueue, outbox_rows, store_rows, store_rows_sync, writer
from cascade.events.recency import add_to_event_recency, add_to_event_recency_sync
from cascade.events.store import DEFAULT_LEASE, insert_event
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.journeys.files import load_all_journeys
from cascade.journeys.triggers import EventPlan, PlannedStart, matching_journeys, plan_event, plan_signals
from cascade.profiles.service import apply_app_event, resolve_customer_id
from models.events import AppEvent, AppEventResult
from models.journey import JourneySpec
from models.tables import Customer, EngagementEvent, JourneyRun, utcnow

log = get_logger(__name__)


@dataclass
class RecordedEvent:
    """An application event as stored: the answer, its signals (stored, to be sent) and the
    journeys it starts (to be started by the caller: `cascade.journeys.triggers.start_planned`)."""

    result: AppEventResult
    customer_id: str | None = None
    rows: list[Outboxed] = field(default_factory=list)
    starts: list[PlannedStart] = field(default_factory=list)
    not_entered: dict[str, str] = field(default_factory=dict)


async def record_app_event(
    db: Database,
    tenant: str,
    event: AppEvent,
    *,
    journeys: Sequence[JourneySpec] | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> RecordedEvent:
    """Store an application event on the profile, with the signals it implies.

    One transaction, no network call inside: the event row, the profile change and one
    outbox row per signal (a `cancel` to each running journey whose `exit_on` names the
    event, a `converted` to each whose `convert_on` does, unless the event says
    `conversion: false`). The caller hands `rows` to the relay and starts `starts`.
    Idempotent by (tenant, event_id): a repeat is neither stored nor signalled again.
    The journeys to start are planned on the profile as this event leaves it (a purchase
    counts before `purchase_count` conditions are judged).
    """
    specs = list(journeys) if journeys is not None else load_all_journeys()
    async with writer(db), db.session() as session:
        recorded = await _record(db, session, tenant, event, specs, lease)
    _log(tenant, event, recorded)
    return recorded


async def record_app_events(
    db: Database,
    tenant: str,
    events: Sequence[AppEvent],
    *,
    journeys: Sequence[JourneySpec] | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> list[RecordedEvent]:
    """`record_app_event` for a batch, in order and in ONE transaction (one commit, one
    writer-lock turn on SQLite): each event is judged on the profile as the events before
    it in the batch left it. All or nothing: a failure stores none of them, and the
    sender's retry is safe since every event is idempotent."""
    specs = list(journeys) if journeys is not None else load_all_journeys()
    async with writer(db), db.session() as session:
        recorded = await _record_batch(db, session, tenant, list(events), specs, lease)
    for event, one in zip(events, recorded, strict=True):
        _log(tenant, event, one)
    return recorded


async def record_app_events_of_tenants(
    db: Database,
    events: Sequence[tuple[str, AppEvent]],
    *,
    journeys: Sequence[JourneySpec] | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> list[RecordedEvent]:
    """`record_app_events` for events of several tenants (a group commit of single
    requests, `cascade.events.group`): one transaction, each tenant's events in order,
    the answers in the order given."""
    specs = list(journeys) if journeys is not None else load_all_journeys()
    by_tenant: dict[str, list[int]] = {}
    for i, (tenant, _) in enumerate(events):
        by_tenant.setdefault(tenant, []).append(i)
    answers: list[RecordedEvent | None] = [None] * len(events)
    direct: list[list[RecordedEvent]] | None = None
    if db.transactions_in_thread and not any(matching_journeys(specs, event.type) for _, event in events):
        # The common case (page views, carts, purchases of known customers: no journey
        # to start) in one hop to SQLite's thread; anything else takes the path below.
        try:
            async with writer(db):
                direct = await db.transaction(_record_direct_sync, db, by_tenant, events, specs, lease)
        except _NotDirect:
            direct = None
    async with AsyncExitStack() as stack:
        if direct is None:
            await stack.enter_async_context(writer(db))
            session = await stack.enter_async_context(db.session())
        for n, (tenant, positions) in enumerate(by_tenant.items()):
            mine = [events[i][1] for i in positions]
            ones = direct[n] if direct is not None else await _record_batch(db, session, tenant, mine, specs, lease)
            for i, one in zip(positions, ones, strict=True):
                answers[i] = one
    recorded = [a for a in answers if a is not None]
    for (tenant, event), one in zip(events, recorded, strict=True):
        _log(tenant, event, one)
    return recorded


async def _record_batch(
    db: Database, session: AsyncSession, tenant: str, events: list[AppEvent], specs: list[JourneySpec], lease: timedelta
) -> list[RecordedEvent]:
    """A batch's rows in a few statements whatever its size, where `_record` costs five or
    so per event: the profiles read (on PostgreSQL locked, in one order, so two batches
    never deadlock) in one query, the events inserted (marked routed) in one, the
    customers' running journeys read in one, the few that start journeys unmarked in one.
    Events of a customer not stored yet (a registration), merged away or erased take
    `_record`'s path."""
    ids = sorted({e.customer_id for e in events})
    query = select(Customer).where(col(Customer.id).in_(ids)).order_by(col(Customer.id))
    found = (await session.exec(query if db.is_sqlite else query.with_for_update())).all()
    customers = {c.id: c for c in found if c.merged_into is None and c.erased_at is None}
    direct = [e for e in events if e.customer_id in customers]
    inserted: set[str] = set()
    if direct:
        # Stored as routed; those that start journeys are unmarked below, in this
        # transaction (one statement fewer per group than marking the others after planning).
        rows = _event_rows(tenant, direct, utcnow())
        # Parameter sets, not one VALUES list: SQLAlchemy's "insertmanyvalues" batches them
        # with a statement compiled once, where a literal list is compiled for every size.
        connection = await session.connection()  # the session's own transaction
        stored = await connection.execute(_insert_events(db), rows)
        inserted = {str(r) for r in stored.scalars().all()}
        await add_to_event_recency(connection, _recency_of(rows, inserted))
    runs_of: dict[str, list[JourneyRun]] = {cid: [] for cid in customers}
    if inserted:
        for run in (await session.exec(_open_runs(customers))).all():
            runs_of[run.customer_id].append(run)
    unrouted: list[str] = []  # stored as routed, but with journeys to start
    recorded: list[RecordedEvent] = []
    taken: set[str] = set()
    signals: list[OutboxRow] = []  # the batch's outbox rows, stored in one statement
    for event in events:
        stored_id = f"{tenant}:{event.event_id}"
        if event.customer_id not in customers:
            recorded.append(await _record(db, session, tenant, event, specs, lease))
            continue
        if stored_id not in inserted or stored_id in taken:
            # Stored before, or a second copy within this batch.
            recorded.append(_duplicate(event))
            continue
        taken.add(stored_id)
        customer = customers[event.customer_id]
        done = await _apply_and_plan(
            session,
            customer,
            event,
            event.occurred_at or utcnow(),
            stored_id,
            specs,
            lease,
            runs_of[customer.id],
            store=False,
        )
        # `store=False`: rows of our own making, for the one INSERT below.
        signals += [row for row in done.rows if isinstance(row, OutboxRow)]
        if done.starts:
            unrouted.append(stored_id)
        recorded.append(done)
    await store_rows(session, signals)
    if unrouted:
        # Routed once its journeys have started (`mark_routed`): a retry after a failed
        # start finds it stored and not routed, and starts them then.
        await session.exec(
            update(EngagementEvent).where(col(EngagementEvent.event_id).in_(unrouted)).values(routed_at=None)
        )
    return recorded


def _insert_events(db: Database) -> Any:
    """The batch's `engagement_events` INSERT, answering the event ids it stored (a repeat is skipped)."""
    return (
        insert_ignoring_conflicts(db, EngagementEvent).on_conflict_do_nothing().returning(col(EngagementEvent.event_id))
    )


def _recency_of(rows: Sequence[dict[str, Any]], inserted: set[str]) -> list[tuple[str, str, None, datetime]]:
    """The `event_recency` entries of the stored rows: the first row of an event id is the one
    stored (a repeat in the batch is a duplicate)."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(str(row["event_id"]), row)
    return [(r["customer_id"], r["type"], None, r["occurred_at"]) for key, r in first.items() if key in inserted]


def _open_runs(customers: dict[str, Customer]) -> Any:
    """The customers' unfinished journey runs, in id order (the signals they get are planned from them)."""
    return (
        select(JourneyRun)
        .where(col(JourneyRun.customer_id).in_(list(customers)), col(JourneyRun.finished_at).is_(None))
        .order_by(col(JourneyRun.id))
    )


def _duplicate(event: AppEvent) -> RecordedEvent:
    """The answer for an event stored before, or a second copy within its batch."""
    result = AppEventResult(event_id=event.event_id, status="duplicate", detail="already received; nothing done")
    return RecordedEvent(result, customer_id=event.customer_id)


class _NotDirect(Exception):
    """A group holds an event of a customer not stored yet, merged away or erased: it takes
    the async path, which handles those (its transaction is rolled back, nothing is kept)."""


def _event_rows(tenant: str, events: Sequence[AppEvent], now: datetime) -> list[dict[str, Any]]:
    """The `engagement_events` rows of a batch's events, stored as routed: an event starts
    no journey nearly always, and those that do are unmarked in the same transaction."""
    return [
        {
            "event_id": f"{tenant}:{e.event_id}",
            "type": e.type,
            "occurred_at": e.occurred_at or now,
            "customer_id": e.customer_id,
            "source": f"api:{tenant}"[:64],
            "properties": e.properties or {},
            "received_at": now,
            "routed_at": now,
        }
        for e in events
    ]


def _record_direct_sync(
    session: Session,
    db: Database,
    by_tenant: dict[str, list[int]],
    events: Sequence[tuple[str, AppEvent]],
    specs: list[JourneySpec],
    lease: timedelta,
) -> list[list[RecordedEvent]]:
    """`_record_batch` for groups whose events start no journey and whose customers are all
    surviving profiles, as synchronous code for one hop to SQLite's thread
    (`Database.transaction`); each tenant's answers, in `by_tenant`'s order. The same
    statements: the profiles read in one query, the events inserted in one, their
    recency ladders, the running journeys read in one, the outbox rows inserted in one,
    the profiles' changes flushed at commit. Raises `_NotDirect` (rolling it all back)
    when a customer is not a surviving profile."""
    by_name = {s.name: s for s in specs}
    connection = session.connection()
    answers: list[list[RecordedEvent]] = []
    for tenant, positions in by_tenant.items():
        mine = [events[i][1] for i in positions]
        ids = sorted({e.customer_id for e in mine})
        found = session.exec(select(Customer).where(col(Customer.id).in_(ids)).order_by(col(Customer.id))).all()
        customers = {c.id: c for c in found if c.merged_into is None and c.erased_at is None}
        if len(customers) < len(ids):
            raise _NotDirect
        now = utcnow()
        rows = _event_rows(tenant, mine, now)
        stored = connection.execute(_insert_events(db), rows)
        inserted = {str(r) for r in stored.scalars().all()}
        add_to_event_recency_sync(connection, _recency_of(rows, inserted))
        runs_of: dict[str, list[JourneyRun]] = {cid: [] for cid in customers}
        if inserted:
            for run in session.exec(_open_runs(customers)).all():
                runs_of[run.customer_id].append(run)
        recorded: list[RecordedEvent] = []
        taken: set[str] = set()
        signals: list[OutboxRow] = []
        for event in mine:
            stored_id = f"{tenant}:{event.event_id}"
            if stored_id not in inserted or stored_id in taken:
                recorded.append(_duplicate(event))
                continue
            taken.add(stored_id)
            customer = customers[event.customer_id]
            at = event.occurred_at or utcnow()
            apply_app_event(customer, event, at)
            plan = EventPlan()
            plan_signals(
                plan,
                runs_of[customer.id],
                by_name,
                event.type,
                now=at,
                event_id=stored_id,
                conversion=event.conversion is not False,
            )
            rows_out = outbox_rows(plan.signals, stored_id, lease)
            signals += rows_out
            result = AppEventResult(
                event_id=event.event_id, status="accepted", signalled=sorted({*plan.converted, *plan.exited})
            )
            recorded.append(RecordedEvent(result, customer.id, list(rows_out)))
        store_rows_sync(connection, signals)
        answers.append(recorded)
    return answers


def _log(tenant: str, event: AppEvent, recorded: RecordedEvent) -> None:
    if recorded.result.status != "accepted":
        return
    log.info(
        "event.app",
        tenant=tenant,
        customer_id=recorded.customer_id,
        event_type=event.type,
        workflow_ids=recorded.result.signalled,
        starts=[s.spec.name for s in recorded.starts],
    )


async def _record(
    db: Database, session: AsyncSession, tenant: str, event: AppEvent, specs: list[JourneySpec], lease: timedelta
) -> RecordedEvent:
    """One event's rows, added to the caller's transaction (see record_app_event)."""
    at = event.occurred_at or utcnow()
    stored_id = f"{tenant}:{event.event_id}"
    # The id the shop sent is the surviving profile's nearly always: one read settles
    # it; a merged-away id is followed to its survivor.
    customer_id = event.customer_id
    customer = await session.get(Customer, customer_id, with_for_update=not db.is_sqlite)
    if customer is not None and customer.merged_into is not None:
        customer_id = await resolve_customer_id(session, event.customer_id)
        customer = await session.get(Customer, customer_id, with_for_update=not db.is_sqlite)
    if customer is None and event.type == "registered":
        # A registration may be the first the engine hears of a customer.
        await session.exec(
            insert_ignoring_conflicts(db, Customer)
            .values(id=customer_id, children_ages=[], favourite_categories=[], attributes={}, created_at=utcnow())
            .on_conflict_do_nothing()
        )
        customer = await session.get(Customer, customer_id)
    if customer is None or customer.erased_at is not None:
        # An erased customer's events would write personal data back: refused alike.
        return RecordedEvent(
            AppEventResult(
                event_id=event.event_id,
                status="unknown_customer",
                detail=f"customer_id {event.customer_id!r}: no such customer",
            )
        )
    inserted = await insert_event(
        db,
        session,
        type=event.type,
        occurred_at=at,
        event_id=stored_id,
        customer_id=customer_id,
        source=f"api:{tenant}",
        properties=event.properties,
    )
    if not inserted:
        return RecordedEvent(
            AppEventResult(event_id=event.event_id, status="duplicate", detail="already received; nothing done"),
            customer_id=customer_id,
        )
    done = await _apply_and_plan(session, customer, event, at, stored_id, specs, lease)
    if not done.starts:
        await _mark_routed(session, stored_id)
    return done


async def _apply_and_plan(
    session: AsyncSession,
    customer: Customer,
    event: AppEvent,
    at: datetime,
    stored_id: str,
    specs: list[JourneySpec],
    lease: timedelta,
    runs: list[JourneyRun] | None = None,
    *,
    store: bool = True,
) -> RecordedEvent:
    """A stored event's effect on the profile and the journeys: the profile changed, the
    signals queued in the outbox (same transaction), the starts planned for after commit.
    `store` False: the outbox rows are returned for the caller to store (`store_rows`)."""
    apply_app_event(customer, event, at)
    if customer not in session:
        # Loaded by this session nearly always, so already tracked: `add` again walked its
        # cascade for every event of a batch (500 times for one customer's page views).
        session.add(customer)
    plan = await plan_event(
        session,
        customer,
        event.type,
        event.properties,
        specs=specs,
        now=at,
        event_id=stored_id,
        conversion=event.conversion is not False,
        runs=runs,
        # The journeys it starts count their first delay from the event's own time, when it
        # has one (bounded by start_planned); without one the start itself is the trigger.
        triggered_at=event.occurred_at,
    )
    signals: list[Outboxed] = []
    if store:
        signals += enqueue(session, plan.signals, stored_id, lease)
    else:
        signals += outbox_rows(plan.signals, stored_id, lease)
    result = AppEventResult(
        event_id=event.event_id, status="accepted", signalled=sorted({*plan.converted, *plan.exited})
    )
    return RecordedEvent(result, customer.id, signals, plan.starts, plan.not_entered)


async def pending_starts(
    db: Database, tenant: str, event: AppEvent, *, journeys: Sequence[JourneySpec] | None = None
) -> RecordedEvent | None:
    """For a stored event whose journeys did not all start (Temporal was down): plan the
    starts again (its signals were stored with it the first time). None when it was routed."""
    stored_id = f"{tenant}:{event.event_id}"
    async with db.session() as session:
        row = (await session.exec(select(EngagementEvent).where(EngagementEvent.event_id == stored_id))).first()
        if row is None or row.routed_at is not None or row.customer_id is None:
            return None
        customer = await session.get(Customer, row.customer_id)
        if customer is None:
            return None
        plan = await plan_event(
            session,
            customer,
            event.type,
            row.properties,
            specs=list(journeys) if journeys is not None else load_all_journeys(),
            now=row.occurred_at,
            event_id=stored_id,
            signals=False,
            triggered_at=row.occurred_at,
        )
    return RecordedEvent(
        AppEventResult(
            event_id=event.event_id, status="duplicate", detail="already received; its journeys started now"
        ),
        customer.id,
        starts=plan.starts,
        not_entered=plan.not_entered,
    )


async def _mark_routed(session: AsyncSession, stored_id: str) -> None:
    await session.exec(
        update(EngagementEvent).where(col(EngagementEvent.event_id) == stored_id).values(routed_at=utcnow())
    )


async def mark_routed(db: Database, tenant: str, event_id: str) -> None:
    """Remember that an application event started the journeys it triggers."""
    async with db.session() as session:
        await _mark_routed(session, f"{tenant}:{event_id}")
