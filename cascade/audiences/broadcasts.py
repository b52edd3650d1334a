"""Broadcasts: freeze a segment's members, start one cascade per recipient, cancel unsent ones.

The audience is frozen once (INSERT ... SELECT of the segment's query into
`broadcast_recipients`), so progress and re-runs are exact. Recipients are started page
by page in id order; each journey's workflow id is derived from the broadcast id and the
customer (`journey/<journey>/<customer>/broadcast-<id>`) and a closed run of that id is
never run again, so a retried page, or a restarted broadcast, never starts a second
cascade for anyone. A recipient's row is marked by an UPDATE that only touches pending
rows, so counts stay exact across retries.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, literal, select, update
from sqlmodel import SQLModel, col
from sqlmodel import select as sqlmodel_select
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cascade.audiences.compiler import CUSTOMERS, segment_condition
from cascade.audiences.definition import SegmentCatalog
from cascade.content.templates import SEND_TIME_FIELDS, check_journey
from cascade.infra.db import Database, as_utc
from cascade.infra.logging import get_logger
from cascade.journeys.inputs import journey_workflow_id
from cascade.journeys.rules import customer_zone
from cascade.profiles.service import template_fields
from models import search_attributes as sa
from models.broadcasts import (
    BROADCAST_WORKFLOW,
    BroadcastCounts,
    BroadcastInput,
    BroadcastProgress,
    BroadcastSignalInput,
    broadcast_run_key,
    broadcast_workflow_id,
    check_broadcast_id,
)
from models.events import CancelInput
from models.journey import JourneyInput, JourneySpec
from models.tables import Broadcast, BroadcastRecipient, Customer, Delivery
from models.workflow_types import CASCADE_JOURNEY

log = get_logger("broadcasts")
BROADCASTS: Table = SQLModel.metadata.tables[Broadcast.__tablename__]
RECIPIENTS: Table = SQLModel.metadata.tables[BroadcastRecipient.__tablename__]
DELIVERIES: Table = SQLModel.metadata.tables[Delivery.__tablename__]
# The CascadeJourney signal that stops a journey before its next send.
CANCEL_SIGNAL = "cancel"
PROGRESS_QUERY = "progress"


async def snapshot_audience(
    db: Database,
    catalog: SegmentCatalog,
    *,
    broadcast_id: str,
    segment: str,
    journey: str,
    send_at: datetime | None = None,
    local_time: time | None = None,
    now: datetime | None = None,
) -> int:
    """Freeze the segment's members as the broadcast's audience; a repeat returns the frozen size.

    One transaction writes the broadcast row, every recipient (INSERT ... SELECT of the
    segment's query: no member passes through Python) and the audience size, so a
    crash leaves either nothing or the whole snapshot.
    """
    catalog.get(segment)
    async with db.engine.begin() as conn:
        existing = (
            await conn.execute(select(BROADCASTS.c.audience).where(BROADCASTS.c.id == broadcast_id))
        ).one_or_none()
        if existing is not None and existing[0] is not None:
            return int(existing[0])
        if existing is None:
            await conn.execute(
                insert(BROADCASTS).values(
                    id=broadcast_id,
                    segment=segment,
                    journey=journey,
                    send_at=send_at,
                    local_time=local_time.isoformat("minutes") if local_time else None,
                    created_at=datetime.now(UTC),
                )
            )
        condition = segment_condition(catalog, segment, dialect=db.engine.dialect.name, now=now or datetime.now(UTC))
        members = select(literal(broadcast_id), CUSTOMERS.c.id).where(condition)
        await conn.execute(insert(RECIPIENTS).from_select(["broadcast_id", "customer_id"], members))
        audience = (
            await conn.execute(
                select(func.count()).select_from(RECIPIENTS).where(RECIPIENTS.c.broadcast_id == broadcast_id)
            )
        ).scalar_one()
        await conn.execute(update(BROADCASTS).where(BROADCASTS.c.id == broadcast_id).values(audience=audience))
    log.info("broadcast.audience_frozen", broadcast_id=broadcast_id, segment=segment, audience=audience)
    return int(audience)


def local_start_delay(zone_name: str | None, at: time, now: datetime) -> timedelta:
    """How long until the next `at` o'clock in the customer's time zone (zero if it is that minute)."""
    zone = customer_zone(zone_name)
    local = now.astimezone(zone)
    target = datetime.combine(local.date(), at, tzinfo=zone)
    if target < local - timedelta(minutes=1):
        target = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return max(target.astimezone(UTC) - now.astimezone(UTC), timedelta(0))


class RecipientStarter:
    """Starts the cascades of one page of a broadcast's pending recipients."""

    def __init__(self, db: Database, client: Client, task_queue: str, concurrency: int) -> None:
        self.db = db
        self.client = client
        self.task_queue = task_queue
        self.concurrency = concurrency

    async def start_page(
        self,
        broadcast_id: str,
        spec: JourneySpec,
        *,
        cursor: str | None,
        limit: int,
        local_time: time | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> tuple[BroadcastCounts, str | None, bool]:
        """Start up to `limit` recipients after `cursor`: (counts, next cursor, no more pages)."""
        query = select(RECIPIENTS.c.customer_id, RECIPIENTS.c.status).where(RECIPIENTS.c.broadcast_id == broadcast_id)
        if cursor is not None:
            query = query.where(RECIPIENTS.c.customer_id > cursor)
        async with self.db.engine.connect() as conn:
            rows = list(await conn.execute(query.order_by(RECIPIENTS.c.customer_id).limit(limit)))
            # The broadcast's moment (its send_at, else when it began): every recipient's
            # first delay counts from it, whichever page started them (the journey's trigger time).
            moment = (
                await conn.execute(
                    select(BROADCASTS.c.send_at, BROADCASTS.c.created_at).where(BROADCASTS.c.id == broadcast_id)
                )
            ).one_or_none()
        if not rows:
            return BroadcastCounts(), cursor, True
        pending = [str(r.customer_id) for r in rows if r.status is None]
        async with self.db.session() as session:
            found = (await session.exec(sqlmodel_select(Customer).where(col(Customer.id).in_(pending)))).all()
        customers = {c.id: c for c in found}
        # Campaign = the broadcast: the Temporal UI lists a campaign's journeys by it.
        spec = spec.model_copy(update={"campaign": broadcast_id})
        outcomes: dict[tuple[str, str | None], list[tuple[str, str | None]]] = defaultdict(list)
        gate = asyncio.Semaphore(self.concurrency)
        now = datetime.now(UTC)
        trigger = as_utc(moment[0] or moment[1]) if moment is not None else None
        # Whether the journey's templates find every field depends only on which custom
        # attributes a profile has: checked once per set of names, not once per recipient
        # (a check parses every template).
        unfit: dict[frozenset[str], bool] = {}
        memo = {"journey": spec.name, "broadcast": broadcast_id, "spec_hash": spec.content_hash()}

        def misses_fields(customer: Customer) -> bool:
            names = frozenset(customer.attributes)
            if names not in unfit:
                unfit[names] = bool(check_journey(spec, {*template_fields(customer), *SEND_TIME_FIELDS})[0])
            return unfit[names]

        async def one(customer_id: str) -> None:
            async with gate:
                status, reason, workflow_id = await self._start_one(
                    broadcast_id,
                    spec,
                    customers.get(customer_id),
                    customer_id,
                    local_time,
                    now,
                    misses_fields,
                    memo,
                    trigger,
                )
            outcomes[(status, reason)].append((customer_id, workflow_id))
            heartbeat()

        await asyncio.gather(*(one(c) for c in pending))
        counts = await self._mark(broadcast_id, outcomes)
        return counts, str(rows[-1].customer_id), len(rows) < limit

    async def _start_one(
        self,
        broadcast_id: str,
        spec: JourneySpec,
        customer: Customer | None,
        customer_id: str,
        local_time: time | None,
        now: datetime,
        misses_fields: Callable[[Customer], bool],
        memo: dict[str, str],
        trigger: datetime | None = None,
    ) -> tuple[str, str | None, str | None]:
        if customer is None or customer.erased_at is not None:
            return "skipped", "erased", None
        if customer.merged_into is not None:
            # The survivor is a member in their own right if the segment says so.
            return "skipped", "merged", None
        if misses_fields(customer):
            return "skipped", "template_field_missing", None
        workflow_id = journey_workflow_id(spec.name, customer_id, broadcast_run_key(broadcast_id))
        attributes: list[SearchAttributePair[Any]] = [
            SearchAttributePair(sa.CUSTOMER_ID, customer_id),
            SearchAttributePair(sa.JOURNEY, spec.name),
            SearchAttributePair(sa.JOURNEY_STATUS, "running"),
            SearchAttributePair(sa.STEP, 0),
            SearchAttributePair(sa.CHANNEL, spec.steps[0].channel.value),
            SearchAttributePair(sa.CAMPAIGN, broadcast_id),
        ]
        options: dict[str, Any] = {}
        if local_time is not None:
            options["start_delay"] = local_start_delay(customer.timezone, local_time, now)
            # The scheduled moment is the customer's local hour, not the page's.
            trigger = now + options["start_delay"]
        try:
            await self.client.start_workflow(
                CASCADE_JOURNEY,
                JourneyInput(spec=spec, customer_id=customer_id, triggered_at=trigger),
                id=workflow_id,
                task_queue=self.task_queue,
                # Never a second run of this id, even after the first one ended: a retried
                # page or a restarted broadcast finds it and counts it as started.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(attributes),
                memo=memo,
                **options,
            )
        except WorkflowAlreadyStartedError:
            pass
        except RPCError as exc:
            if exc.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION):
                log.warning(
                    "broadcast.start_refused", broadcast_id=broadcast_id, customer_id=customer_id, error=str(exc)
                )
                return "failed", "refused", workflow_id
            raise
        return "started", None, workflow_id

    async def _mark(
        self, broadcast_id: str, outcomes: dict[tuple[str, str | None], list[tuple[str, str | None]]]
    ) -> BroadcastCounts:
        """Record the page's outcomes: one read of what is still unmarked, one batched UPDATE per outcome.

        Only recipients still unmarked count, so a retried page (its first attempt marked
        some, then died) counts nobody twice.
        """
        counts = BroadcastCounts()
        page = [customer_id for items in outcomes.values() for customer_id, _ in items]
        if not page:
            return counts
        mine = RECIPIENTS.c.broadcast_id == broadcast_id
        async with self.db.engine.begin() as conn:
            unmarked = select(RECIPIENTS.c.customer_id).where(
                mine, RECIPIENTS.c.customer_id.in_(page), RECIPIENTS.c.status.is_(None)
            )
            pending = {str(r[0]) for r in await conn.execute(unmarked.with_for_update())}
            for (status, reason), items in outcomes.items():
                rows = [{"b_customer": c, "b_workflow": w} for c, w in items if c in pending]
                if rows:
                    mark = (
                        update(RECIPIENTS)
                        .where(mine, RECIPIENTS.c.customer_id == bindparam("b_customer"), RECIPIENTS.c.status.is_(None))
                        .values(status=status, reason=reason, workflow_id=bindparam("b_workflow"))
                    )
                    await conn.execute(mark, rows)
                marked = len(rows)
                if status == "started":
                    counts.started += marked
                elif status == "failed":
                    counts.failed += marked
                elif marked:
                    counts.skipped[reason or status] = counts.skipped.get(reason or status, 0) + marked
        return counts


async def cancel_unsent(db: Database, client: Client, broadcast_id: str, reason: str) -> int:
    """Tell the broadcast's started journeys that have sent nothing yet to stop; returns how many."""
    sent = select(DELIVERIES.c.workflow_id).where(DELIVERIES.c.workflow_id == RECIPIENTS.c.workflow_id)
    query = select(RECIPIENTS.c.workflow_id).where(
        RECIPIENTS.c.broadcast_id == broadcast_id,
        RECIPIENTS.c.status == "started",
        ~sent.exists(),
    )
    async with db.engine.connect() as conn:
        ids = [str(r[0]) for r in await conn.execute(query)]
    gate = asyncio.Semaphore(50)

    async def stop(workflow_id: str) -> bool:
        async with gate:
            try:
                await client.get_workflow_handle(workflow_id).signal(CANCEL_SIGNAL, CancelInput(reason=reason))
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return False  # finished already
                raise
            return True

    return sum(await asyncio.gather(*(stop(w) for w in ids)))


async def list_broadcasts(db: Database) -> list[Any]:
    """Every broadcast with its audience and counts by status, newest first."""
    counts = (
        select(
            RECIPIENTS.c.broadcast_id,
            func.count().label("recipients"),
            func.count(RECIPIENTS.c.status).label("handled"),
        )
        .group_by(RECIPIENTS.c.broadcast_id)
        .subquery()
    )
    query = (
        select(BROADCASTS, counts.c.handled)
        .join(counts, counts.c.broadcast_id == BROADCASTS.c.id, isouter=True)
        .order_by(BROADCASTS.c.created_at.desc())
    )
    async with db.engine.connect() as conn:
        return list(await conn.execute(query))


async def recipient_counts(db: Database, broadcast_id: str) -> BroadcastCounts:
    """What the broadcast's table says was done so far (started, skipped by reason, failed)."""
    query = (
        select(RECIPIENTS.c.status, RECIPIENTS.c.reason, func.count())
        .where(RECIPIENTS.c.broadcast_id == broadcast_id, RECIPIENTS.c.status.is_not(None))
        .group_by(RECIPIENTS.c.status, RECIPIENTS.c.reason)
    )
    counts = BroadcastCounts()
    async with db.engine.connect() as conn:
        for status, reason, n in await conn.execute(query):
            if status == "started":
                counts.started += n
            elif status == "failed":
                counts.failed += n
            else:
                counts.skipped[reason or status] = counts.skipped.get(reason or status, 0) + n
    return counts


async def start_broadcast(
    client: Client,
    catalog: SegmentCatalog,
    task_queue: str,
    *,
    broadcast_id: str,
    segment: str,
    journey: JourneySpec,
    send_at: datetime | None = None,
    local_time: time | None = None,
    rate_per_second: float = 100.0,
    page_size: int = 200,
    pages_per_run: int = 50,
) -> WorkflowHandle[Any, Any]:
    """Start the broadcast's workflow (validated first: the id, the segment, the send time).

    A broadcast id is used once: starting a finished one raises WorkflowAlreadyStartedError;
    one that failed or was terminated may be started again and goes on where it stopped.
    """
    check_broadcast_id(broadcast_id)
    catalog.get(segment)
    payload = BroadcastInput(
        broadcast_id=broadcast_id,
        segment=segment,
        journey=journey,
        send_at=send_at,
        local_time=local_time,
        rate_per_second=rate_per_second,
        page_size=page_size,
        pages_per_run=pages_per_run,
    )
    return await client.start_workflow(
        BROADCAST_WORKFLOW,
        payload,
        id=broadcast_workflow_id(broadcast_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(sa.CAMPAIGN, broadcast_id), SearchAttributePair(sa.JOURNEY, journey.name)]
        ),
        memo={"segment": segment, "journey": journey.name},
    )


async def broadcast_progress(client: Client, broadcast_id: str) -> BroadcastProgress:
    """The progress of a running broadcast (its query), or the result of a finished one."""
    handle = client.get_workflow_handle(broadcast_workflow_id(broadcast_id), result_type=BroadcastProgress)
    description = await handle.describe()
    if description.status is not None and description.status.name == "RUNNING":
        progress: BroadcastProgress = await handle.query(PROGRESS_QUERY, result_type=BroadcastProgress)
        return progress
    if description.status is not None and description.status.name == "COMPLETED":
        result: BroadcastProgress = await handle.result()
        return result
    raise BroadcastNotRunning(
        f"broadcast {broadcast_id!r} is {description.status.name.lower() if description.status else 'unknown'}"
    )


class BroadcastNotRunning(RuntimeError):
    """The broadcast's workflow failed or was terminated (start it again to go on)."""


async def signal_broadcast(client: Client, broadcast_id: str, signal: str, reason: str = "operator") -> None:
    """Send `pause`, `resume` or `cancel` to a broadcast."""
    if signal not in ("pause", "resume", "cancel"):
        raise ValueError(f"unknown broadcast signal {signal!r}")
    await client.get_workflow_handle(broadcast_workflow_id(broadcast_id)).signal(
        signal, BroadcastSignalInput(reason=reason)
    )
