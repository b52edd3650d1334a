"""Trigger routing: one customer event -> the journeys it starts, converts and ends.

`plan_event` decides, from the database alone, what an event does:

- running journeys of the customer (found in journey_runs) whose `exit_on` names the
  event get a graceful `cancel`; those whose `convert_on` names it get a `converted`
  engagement signal. No other journey is converted: a purchase does not end an order-
  status or referral journey that does not list `purchase` in its `convert_on`;
- every journey file whose `trigger.events` names the event, whose `entry` conditions
  hold on the profile (and the event's properties), and whose trigger key has not been
  used before (see `_reentry_refusal`) is started, with only the event properties the
  journey's templates and conditions read as its context.

`route_event` carries a plan out at once (the CLI, `python starter.py event c-42
cart_abandoned --prop cart_id=9`, and the scheduled scans); POST /v1/events stores the
plan's signals in the outbox with the event instead (cascade/events/ingest.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from cascade.audiences.compiler import CUSTOMERS, segment_condition
from cascade.audiences.service import load_segments
from cascade.events.outbox import PlannedSignal, mark_run_finished, signal_run
from cascade.infra.db import Database, as_utc
from cascade.infra.settings import Settings, get_settings
from cascade.journeys.files import load_all_journeys
from cascade.journeys.inputs import UnknownCustomerError, journey_context, journey_workflow_id
from cascade.journeys.rules import describe, failed_condition
from cascade.journeys.service import start_journey
from cascade.profiles.service import resolve_customer_id, template_fields
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import JourneySpec
from models.tables import Customer, Delivery, JourneyRun, Topic, utcnow


@dataclass
class PlannedStart:
    """A journey an event starts; `rerun` False: only if no run of this id has closed."""

    spec: JourneySpec
    key: str | None
    context: dict[str, Any]
    deadline: datetime | None
    rerun: bool = True
    # When the event happened (its occurred_at, else when it arrived); start_planned bounds it.
    triggered_at: datetime | None = None


@dataclass
class EventPlan:
    """What one event does: signals to running journeys, journeys to start, and why not."""

    signals: list[PlannedSignal] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    starts: list[PlannedStart] = field(default_factory=list)
    not_entered: dict[str, str] = field(default_factory=dict)


@dataclass
class RouteResult:
    """What one event did: workflow ids started, converted and ended; journeys not entered and why."""

    started: list[str] = field(default_factory=list)
    handles: dict[str, WorkflowHandle[Any, Any]] = field(default_factory=dict, repr=False)
    converted: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    not_entered: dict[str, str] = field(default_factory=dict)


def _deadline(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        try:
            return _deadline(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def matching_journeys(specs: Sequence[JourneySpec], event_type: str) -> list[JourneySpec]:
    """The journeys whose trigger names `event_type`."""
    return [s for s in specs if s.trigger is not None and event_type in s.trigger.events]


def _run_key(spec: JourneySpec, props: Mapping[str, Any]) -> str | None:
    assert spec.trigger is not None
    if spec.trigger.key_property and props.get(spec.trigger.key_property) is not None:
        return str(props[spec.trigger.key_property]).replace("/", "_")[:128]
    return None


async def _reentry_refusal(
    session: AsyncSession, spec: JourneySpec, workflow_id: str, keyed: bool, now: datetime
) -> tuple[str | None, bool]:
    """(why the customer may not enter again, or None; whether a closed run may be rerun).

    A keyed journey runs once per key, ever; with `trigger.reentry` again once that long
    has passed since the last entry; an unkeyed one without it again once its last run
    ended. Judged from journey_runs, which outlives Temporal's retention of closed runs.
    """
    assert spec.trigger is not None
    reentry = spec.trigger.reentry
    if not keyed and reentry is None:
        return None, True
    last = (
        await session.exec(
            select(JourneyRun).where(JourneyRun.workflow_id == workflow_id).order_by(col(JourneyRun.started_at).desc())
        )
    ).first()
    if last is None:
        return None, True
    entered = as_utc(last.started_at)
    if last.finished_at is None:
        # Running (a start is then a no-op returning it), or closed without our knowing:
        # Temporal refuses to rerun it instead of starting a second chain.
        return None, False
    if reentry is not None:
        if entered + reentry <= now:
            return None, True
        return f"entered on {entered.date().isoformat()}; again from {(entered + reentry).date().isoformat()}", False
    return "already entered for this key (once per key; set trigger.reentry to allow more)", False


async def _customer_ids(session: AsyncSession, customer_id: str) -> list[str]:
    # Runs started before a merge carry the old id; the survivor's runs carry the new one.
    survivor = await resolve_customer_id(session, customer_id)
    return list(dict.fromkeys([customer_id, survivor]))


async def running_journeys(
    session: AsyncSession, customer_id: str, *, marketing_only: bool = False, survivor: bool = False
) -> list[JourneyRun]:
    """The customer's journey runs not yet known to be finished (journey_runs look-up).

    `marketing_only` leaves out runs that sent a transactional message: an unsubscribe
    from marketing must not stop an order-status journey. `survivor`: the caller knows
    `customer_id` is a surviving profile (not merged away), which saves a look-up.
    """
    ids = [customer_id] if survivor else await _customer_ids(session, customer_id)
    runs = list(
        (
            await session.exec(
                select(JourneyRun)
                .where(col(JourneyRun.customer_id).in_(ids), col(JourneyRun.finished_at).is_(None))
                .order_by(col(JourneyRun.id))
            )
        ).all()
    )
    if marketing_only and runs:
        transactional = set(
            (
                await session.exec(
                    select(Delivery.run_id).where(
                        col(Delivery.run_id).in_([r.run_id for r in runs]), Delivery.topic == Topic.TRANSACTIONAL
                    )
                )
            ).all()
        )
        runs = [r for r in runs if r.run_id not in transactional]
    return runs


def plan_signals(
    plan: EventPlan,
    runs: Sequence[JourneyRun],
    by_name: Mapping[str, JourneySpec],
    event_type: str,
    *,
    now: datetime,
    event_id: str,
    conversion: bool = True,
) -> None:
    """Add to `plan` the signals `event_type` sends to the customer's running journeys `runs`
    (a `cancel` where `exit_on` names it, a `converted` where `convert_on` does); no I/O."""
    targets: set[tuple[str, str | None]] = set()
    for run in runs:
        spec = by_name.get(run.journey)
        exit_on = run.exit_on if run.exit_on is not None else (spec.exit_on if spec else [])
        convert_on = run.convert_on if run.convert_on is not None else (spec.convert_on if spec else [])
        # A loop's row stands for its continue-as-new chain: signal whichever run is current.
        target = None if run.workflow_type == "LoyaltyLoop" else run.run_id
        if (run.workflow_id, target) in targets:
            continue
        targets.add((run.workflow_id, target))
        if event_type in exit_on:
            arg: CancelInput | EngagementInput = CancelInput(reason=f"exit event {event_type}")
            plan.signals.append(PlannedSignal(run.workflow_id, target, "cancel", arg))
            plan.exited.append(run.workflow_id)
        elif event_type in convert_on and conversion:
            arg = EngagementInput(type=EngagementType.CONVERTED, occurred_at=now, event_id=event_id)
            plan.signals.append(PlannedSignal(run.workflow_id, target, "engagement", arg))
            plan.converted.append(run.workflow_id)


async def plan_event(
    session: AsyncSession,
    customer: Customer,
    event_type: str,
    properties: Mapping[str, Any] | None,
    *,
    specs: Sequence[JourneySpec],
    now: datetime,
    event_id: str,
    conversion: bool = True,
    signals: bool = True,
    starts: bool = True,
    runs: Sequence[JourneyRun] | None = None,
    triggered_at: datetime | None = None,
) -> EventPlan:
    """What `event_type` does to `customer`'s journeys (reads only; nothing is sent).

    `conversion` False keeps the event from converting anything (an event the shop
    marked `conversion: false`). `signals`/`starts` False leave that half out. `runs`:
    the customer's running journeys when the caller has read them already (a batch).
    `triggered_at`: when the event happened, for the journeys it starts (their first
    delay counts from it; start_planned bounds it); None: from their start.
    """
    props = dict(properties or {})
    by_name = {s.name: s for s in specs}
    plan = EventPlan()
    if signals:
        if runs is None:
            runs = await running_journeys(session, customer.id, survivor=customer.merged_into is None)
        plan_signals(plan, runs, by_name, event_type, now=now, event_id=event_id, conversion=conversion)
    if not starts:
        return plan
    matching = matching_journeys(specs, event_type)
    if not matching:
        return plan
    profile = template_fields(customer)
    for spec in matching:
        assert spec.trigger is not None
        if (cond := failed_condition(spec.entry.conditions, profile, props, now)) is not None:
            plan.not_entered[spec.name] = f"entry condition not met: {describe(cond)}"
            continue
        if spec.audience is not None and (refused := await _audience_refusal(session, spec.audience, customer.id, now)):
            plan.not_entered[spec.name] = refused
            continue
        key = _run_key(spec, props)
        workflow_id = journey_workflow_id(spec.name, customer.id, key)
        refusal, rerun = await _reentry_refusal(session, spec, workflow_id, key is not None, now)
        if refusal is not None:
            plan.not_entered[spec.name] = refusal
            continue
        deadline = _deadline(props.get(spec.trigger.deadline_property)) if spec.trigger.deadline_property else None
        context = journey_context(spec, {**props, "event_type": event_type})
        plan.starts.append(PlannedStart(spec, key, context, deadline, rerun, triggered_at=triggered_at))
    return plan


async def _audience_refusal(session: AsyncSession, segment: str, customer_id: str, now: datetime) -> str | None:
    """Why the customer may not enter a journey for members of `segment`, or None if they are one."""
    catalog = load_segments(get_settings())
    if segment not in catalog.segments:
        return f"audience {segment!r} is not a known segment"
    dialect = session.get_bind().dialect.name
    query = select(CUSTOMERS.c.id).where(
        segment_condition(catalog, segment, dialect=dialect, now=now, customer_id=customer_id)
    )
    member = (await session.exec(query)).first()
    return None if member is not None else f"not in the audience segment {segment!r}"


async def send_planned(client: Client, db: Database, signals: Sequence[PlannedSignal]) -> None:
    """Send a plan's signals now, all at once, outside any transaction.

    A run found finished is marked so. Raises cascade.events.outbox.EngineUnavailable when Temporal
    cannot be reached; every signal carries the event's id, so a retry of the whole event
    (an activity's next attempt) is ignored by the journeys that already took it.
    """
    results = await asyncio.gather(*(signal_run(client, s.workflow_id, s.run_id, s.arg, s.signal) for s in signals))
    finished = [r for r in results if r.finished]
    if finished:
        async with db.session() as session:
            for r in finished:
                await mark_run_finished(session, r.workflow_id, r.run_id)


async def start_planned(
    client: Client,
    db: Database,
    settings: Settings,
    customer_id: str,
    starts: Sequence[PlannedStart],
    result: RouteResult,
) -> None:
    """Start the planned journeys (a no-op for one already running under the same id).

    Raises temporalio's RPCError when Temporal cannot be reached.
    """
    for planned in starts:
        try:
            handle = await start_journey(
                customer_id,
                planned.spec,
                key=planned.key,
                context=planned.context,
                deadline=planned.deadline,
                client=client,
                db=db,
                settings=settings,
                rerun=planned.rerun,
                triggered_at=trigger_time(planned.triggered_at, utcnow(), settings.trigger_max_age),
            )
        except WorkflowAlreadyStartedError:
            # The key's run closed without our knowing: once per key, so not again.
            async with db.session() as session:
                await mark_run_finished(session, _workflow_id(planned, customer_id), None)
            result.not_entered[planned.spec.name] = "already entered for this key (once per key)"
            continue
        except ValueError as exc:
            # One journey that cannot start (a template field the event did not carry,
            # a bad deadline) must not keep the others from starting.
            result.not_entered[planned.spec.name] = str(exc)
            continue
        result.started.append(handle.id)
        result.handles[handle.id] = handle


def trigger_time(occurred_at: datetime | None, now: datetime, max_age: timedelta) -> datetime | None:
    """The trigger time a journey's first delay counts from, given when its event happened.

    Never later than `now` (events may claim up to a day ahead: clock skew); an event
    older than `max_age` (a backfill, a replayed export) is no trigger time at all: the
    delays count from the start, or a year-old purchase would send every step at once.
    """
    if occurred_at is None:
        return None
    at = occurred_at if occurred_at.tzinfo is not None else occurred_at.replace(tzinfo=UTC)
    if at > now:
        return now
    if now - at > max_age:
        return None
    return at


def _workflow_id(planned: PlannedStart, customer_id: str) -> str:
    return journey_workflow_id(planned.spec.name, customer_id, planned.key)


async def route_event(
    client: Client,
    db: Database,
    customer_id: str,
    event_type: str,
    properties: Mapping[str, Any] | None = None,
    *,
    journeys: Sequence[JourneySpec] | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
    event_id: str | None = None,
    conversion: bool = True,
    triggered_at: datetime | None = None,
) -> RouteResult:
    """Start, convert and end the customer's journeys for one event, now.

    `journeys` defaults to every file in journeys/ (read now, so an edited file
    applies to the next start while running journeys keep their snapshot). `now`
    is the time entry conditions judge against (default: the current time).
    `event_id` identifies the event in the signals it sends (journeys ignore an id
    they have seen; default: a new one). `triggered_at`: when the event happened, if the
    journeys it starts should count their first delay from then (the events API passes
    the event's time; bounded, see `trigger_time`). Raises starter.UnknownCustomerError for a
    customer not in the profile database, cascade.events.outbox.EngineUnavailable or RPCError
    when Temporal cannot be reached.
    """
    settings = settings or get_settings()
    specs = list(journeys) if journeys is not None else load_all_journeys()
    now = now or utcnow()
    async with db.session() as session:
        customer_id = await resolve_customer_id(session, customer_id)
        customer = await session.get(Customer, customer_id)
        if customer is None:
            raise UnknownCustomerError(f"customer {customer_id!r} is not in the profile database")
        plan = await plan_event(
            session,
            customer,
            event_type,
            properties,
            specs=specs,
            now=now,
            event_id=event_id or f"route:{uuid.uuid4().hex}",
            conversion=conversion,
            triggered_at=triggered_at,
        )
    result = RouteResult(converted=plan.converted, exited=plan.exited, not_entered=plan.not_entered)
    # Running journeys first, so an event that both ends one journey and starts
    # another (a purchase: cart ends, loyalty round starts) handles the old one first.
    await send_planned(client, db, plan.signals)
    await start_planned(client, db, settings, customer_id, plan.starts, result)
    return result
