"""The signal outbox: signals an event implies are stored with the event, then relayed.

No transaction is ever open while Temporal is called. Event handling stores the event,
its effects on the profile or the delivery log, and one `signal_outbox` row per signal
it implies, in one short transaction; the signals are sent after the commit, many at
once, and a row is deleted only once Temporal has taken its signal (or the journey was
found finished). A failure or a crash in between leaves the row, which is sent again:
at least once, never lost. Every signal carries an `event_id` and a journey ignores an
id it has already seen, so "again" never counts twice.

Rows are leased: `not_before` is set to now + lease by the process about to send them
(or, after a failed attempt, to the time of the next try). The relay of the webhooks
process sends what that process queued right away, and every `outbox_poll_seconds`
claims stored rows whose lease ran out, which is how it drains what a crashed process
left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, or_
from sqlmodel import Session, col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from models.tables import JourneyRun, OutboxSignal, utcnow

log = get_logger(__name__)

# Back-off between attempts at a signal Temporal did not take: doubling, capped.
RETRY_FIRST = timedelta(seconds=2)
RETRY_MAX = timedelta(minutes=5)


class EngineUnavailable(RuntimeError):
    """Temporal could not be reached: the caller should answer 503 so the sender retries."""


_SQLITE_WRITER = asyncio.Lock()


def writer(db: Database) -> AbstractAsyncContextManager[Any]:
    """Serialise this process's write transactions on SQLite.

    SQLite has one writer, and waiters left to its busy handler back off in sleeps of
    up to 100 ms, so queueing here is far faster. Transactions under this lock are short
    (no network call inside), so it is never held while Temporal answers.
    """
    return _SQLITE_WRITER if db.is_sqlite else nullcontext()


@dataclass(frozen=True)
class SignalResult:
    """Whether a signal reached a running journey, and if not, why.

    `finished`: the run is gone (finished, or never existed); `retry`: it was not
    delivered and stays in the outbox for another attempt.
    """

    workflow_id: str
    run_id: str | None
    signalled: bool
    detail: str
    finished: bool = False
    retry: bool = False


@dataclass(slots=True, eq=False)
class OutboxRow:
    """A stored outbox row as the relay handles it, for rows a batch inserts with `store_rows`.

    A plain object, not an `OutboxSignal` instance: building the ORM instance (SQLModel's
    construction, SQLAlchemy's instrumented attributes) cost 80-220 µs per row, a few per
    cent of an event's CPU in the webhooks service, for rows the session never tracks.
    """

    event_id: str
    workflow_id: str
    run_id: str | None
    signal: str
    payload: dict[str, Any]
    not_before: datetime | None
    id: int | None = None
    attempts: int = 0


# What the relay sends and settles: rows built here, or ORM rows (`enqueue`, `claim`).
Outboxed = OutboxSignal | OutboxRow


@dataclass(frozen=True)
class PlannedSignal:
    """A signal to send: to a run (`run_id`), or to whatever run of the id is current."""

    workflow_id: str
    run_id: str | None
    signal: str
    arg: BaseModel


async def signal_run(
    client: Client, workflow_id: str, run_id: str | None, arg: Any, signal: str = "engagement"
) -> SignalResult:
    """Signal one journey run; a finished or unknown run is reported, not raised.

    Raises EngineUnavailable when Temporal cannot be reached.
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        await handle.signal(signal, arg)
        return SignalResult(workflow_id, run_id, True, "signalled")
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            # Not a workflow id Temporal accepts: no such journey, not an outage.
            return SignalResult(workflow_id, run_id, False, "journey not found", finished=False)
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.warning("signal.failed", workflow_id=workflow_id, run_id=run_id, error=str(exc))
            raise EngineUnavailable("journey engine unavailable, retry later") from exc
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return SignalResult(workflow_id, run_id, False, "journey not found", finished=True)
        raise EngineUnavailable("journey engine unavailable, retry later") from exc
    status = description.status.name.lower() if description.status else "finished"
    return SignalResult(workflow_id, run_id, False, f"journey already {status}; event recorded", finished=True)


async def mark_run_finished(session: AsyncSession, workflow_id: str, run_id: str | None) -> None:
    """Note a run a signal found finished, so later events skip it without asking Temporal.

    `run_id` None: every unfinished row of the workflow id (a loop's chain has ended).
    """
    await session.exec(_finished(workflow_id, run_id))


def _finished(workflow_id: str, run_id: str | None) -> Any:
    where = [col(JourneyRun.workflow_id) == workflow_id, col(JourneyRun.finished_at).is_(None)]
    if run_id is not None:
        where.append(col(JourneyRun.run_id) == run_id)
    return update(JourneyRun).where(*where).values(finished_at=utcnow())


def enqueue(
    session: AsyncSession, signals: Sequence[PlannedSignal], event_id: str, lease: timedelta
) -> list[OutboxSignal]:
    """Add one outbox row per signal to the caller's transaction, leased to this process.

    The rows are sent after the caller commits (`deliver` or `OutboxRelay.submit`); if
    this process dies first, another relay takes them over when the lease ends.
    """
    rows = [
        OutboxSignal(
            event_id=r.event_id,
            workflow_id=r.workflow_id,
            run_id=r.run_id,
            signal=r.signal,
            payload=r.payload,
            not_before=r.not_before,
        )
        for r in outbox_rows(signals, event_id, lease)
    ]
    session.add_all(rows)
    return rows


def outbox_rows(signals: Sequence[PlannedSignal], event_id: str, lease: timedelta) -> list[OutboxRow]:
    """The outbox rows for an event's signals, leased to this process, not yet stored
    (`store_rows` stores many events' rows at once)."""
    until = utcnow() + lease
    return [
        OutboxRow(event_id[:256], s.workflow_id, s.run_id, s.signal, s.arg.model_dump(mode="json"), until)
        for s in signals
    ]


async def store_rows(session: AsyncSession, rows: Sequence[OutboxRow]) -> None:
    """Insert outbox rows in the caller's transaction with one statement, and give each its id.

    Added to the session one by one, SQLAlchemy inserts them one statement each (it must
    read back every generated id); a group of events has one per signal, so they go in
    one multi-row INSERT ... RETURNING, matched back by (event, journey, run, signal),
    which is unique: an event signals a run once.
    """
    if rows:
        connection = await session.connection()
        _give_ids(rows, (await connection.execute(_INSERT_ROWS, _row_params(rows))).all())


def store_rows_sync(connection: Connection, rows: Sequence[OutboxRow]) -> None:
    """`store_rows` in a synchronous transaction (`Database.transaction`)."""
    if rows:
        _give_ids(rows, connection.execute(_INSERT_ROWS, _row_params(rows)).all())


_TABLE = OutboxSignal.__table__  # type: ignore[attr-defined]
_INSERT_ROWS = insert(_TABLE).returning(
    _TABLE.c.id, _TABLE.c.event_id, _TABLE.c.workflow_id, _TABLE.c.run_id, _TABLE.c.signal
)


def _row_params(rows: Sequence[OutboxRow]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "event_id": row.event_id,
            "workflow_id": row.workflow_id,
            "run_id": row.run_id,
            "signal": row.signal,
            "payload": row.payload,
            "created_at": now,
            "not_before": row.not_before,
            "attempts": row.attempts,
            "last_error": None,
        }
        for row in rows
    ]


def _give_ids(rows: Sequence[OutboxRow], stored: Sequence[Any]) -> None:
    ids = {(e, w, r, s): i for i, e, w, r, s in stored}
    for row in rows:
        row.id = ids[(row.event_id, row.workflow_id, row.run_id, row.signal)]


async def _send(client: Client, row: Outboxed) -> SignalResult:
    try:
        return await signal_run(client, row.workflow_id, row.run_id, row.payload, row.signal)
    except EngineUnavailable:
        return SignalResult(row.workflow_id, row.run_id, False, "journey engine unavailable; will retry", retry=True)
    except Exception as exc:  # any other failure is retried, never lost
        log.warning("outbox.send_failed", workflow_id=row.workflow_id, error=repr(exc)[:300])
        return SignalResult(row.workflow_id, row.run_id, False, "signal failed; will retry", retry=True)


def _backoff(attempts: int) -> timedelta:
    delay: timedelta = RETRY_FIRST * (2 ** min(attempts, 16))
    return min(delay, RETRY_MAX)


async def settle(db: Database, rows: Sequence[Outboxed], results: Sequence[SignalResult]) -> None:
    """Record what the attempts did, in one short transaction: delivered rows go, failed
    ones back off, runs found finished are marked so."""
    done = [row.id for row, res in zip(rows, results, strict=True) if not res.retry]
    failed = [(row, res) for row, res in zip(rows, results, strict=True) if res.retry]
    finished = {(res.workflow_id, res.run_id) for res in results if res.finished}
    if not (done or failed or finished):
        return
    # One hop to SQLite's thread for the whole transaction (Database.transaction): through
    # aiosqlite every statement was several hand-overs between the event loop and the
    # connection's thread, a third of the webhooks service's CPU per event in all.
    attempts = [(row.id, row.attempts, res.detail) for row, res in failed]
    async with writer(db):
        await db.transaction(_settle_rows, done, attempts, finished)
    for row, _ in failed:
        row.attempts += 1


def _settle_rows(
    session: Session,
    done: list[int | None],
    failed: list[tuple[int | None, int, str]],
    finished: set[tuple[str, str | None]],
) -> None:
    now = utcnow()
    connection = session.connection()
    if done:
        connection.execute(delete(OutboxSignal).where(col(OutboxSignal.id).in_(done)))
    for row_id, attempts, detail in failed:
        connection.execute(
            update(OutboxSignal)
            .where(col(OutboxSignal.id) == row_id)
            .values(attempts=attempts + 1, not_before=now + _backoff(attempts), last_error=detail)
        )
    for workflow_id, run_id in finished:
        connection.execute(_finished(workflow_id, run_id))


async def deliver(client: Client, db: Database, rows: Sequence[Outboxed], concurrency: int = 64) -> list[SignalResult]:
    """Send committed outbox rows now, up to `concurrency` at once, then settle them."""
    results = await send_all(client, rows, concurrency)
    await settle(db, rows, results)
    return results


async def send_all(client: Client, rows: Sequence[Outboxed], concurrency: int = 64) -> list[SignalResult]:
    """Send committed outbox rows now, up to `concurrency` at once (not settled)."""
    if not rows:
        return []
    limit = asyncio.Semaphore(concurrency)

    async def one(row: Outboxed) -> SignalResult:
        async with limit:
            return await _send(client, row)

    return list(await asyncio.gather(*(one(r) for r in rows)))


async def claim(db: Database, limit: int, lease: timedelta) -> list[OutboxSignal]:
    """Lease up to `limit` stored rows that are due (left behind, or backing off), oldest first."""
    now = utcnow()
    due = or_(col(OutboxSignal.not_before).is_(None), col(OutboxSignal.not_before) <= now)
    oldest = select(OutboxSignal.id).where(due).order_by(col(OutboxSignal.id)).limit(limit)
    async with writer(db), db.session() as session:
        # `due` again in the outer WHERE: on PostgreSQL a concurrent claimer re-checks it
        # on the locked row and skips what the other one took.
        claimed = await session.exec(
            update(OutboxSignal)
            .where(col(OutboxSignal.id).in_(oldest.scalar_subquery()), due)
            .values(not_before=now + lease)
            .returning(col(OutboxSignal.id))
        )
        ids = list(claimed.scalars().all())
        if not ids:
            return []
        rows = (
            await session.exec(select(OutboxSignal).where(col(OutboxSignal.id).in_(ids)).order_by(col(OutboxSignal.id)))
        ).all()
    return list(rows)


async def pending_signals(db: Database) -> int:
    """How many signals are stored and not yet delivered."""
    async with db.session() as session:
        return (await session.exec(select(func.count()).select_from(OutboxSignal))).one()


class OutboxRelay:
    """Sends outbox rows: what this process queued at once, stored ones on a timer.

    `async with OutboxRelay(...)` runs it in the background (the webhooks app does);
    `submit` hands it committed rows. Rows are sent in batches, several batches and
    `outbox_concurrency` signals at a time. What was sent is settled in one transaction
    at most every `SETTLE_EVERY` seconds, for every batch sent by then: at 16 events in
    flight a batch is a group commit's few rows, and settling each on its own was a
    second write transaction per group on SQLite's one writer. Settling later only
    widens the window in which a crash makes a signal go twice (at least once, as
    before; a journey ignores a repeat), by that fraction of a second.
    """

    BATCH = 256
    BATCHES_IN_FLIGHT = 4
    SETTLE_EVERY = 0.05

    def __init__(self, client: Client, db: Database, settings: Settings) -> None:
        self._client = client
        self._db = db
        self._lease = timedelta(seconds=settings.outbox_lease_seconds)
        self._poll = settings.outbox_poll_seconds
        self._concurrency = settings.outbox_concurrency
        self._queue: list[Outboxed] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.BATCHES_IN_FLIGHT)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sent: list[tuple[Outboxed, SignalResult]] = []  # sent, not yet settled
        self._settler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OutboxRelay:
        self._loop_task = asyncio.create_task(self._loop(), name="outbox-relay")
        self._wake.set()  # drain what an earlier process left, now
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        # What is still queued is stored and leased: sent now if Temporal answers in
        # time, otherwise by the next relay once the lease ends.
        await self._dispatch_queued()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=10)
        if self._settler is not None:
            await asyncio.wait([self._settler], timeout=10)

    def submit(self, rows: Sequence[Outboxed]) -> None:
        """Send these committed rows soon (they are stored: nothing is lost if we die)."""
        if rows:
            self._queue.extend(rows)
            self._wake.set()

    async def idle(self, within: float = 30.0) -> None:
        """Wait until everything submitted has been sent and settled (tests, benchmarks)."""
        deadline = time.monotonic() + within
        while self._queue or self._in_flight or self._sent or (self._settler and not self._settler.done()):
            if time.monotonic() > deadline:
                raise TimeoutError("outbox relay still busy")
            await asyncio.sleep(0.005)

    async def drain(self) -> int:
        """Claim and send every due stored row now; the number of rows sent."""
        total = 0
        while rows := await claim(self._db, self.BATCH, self._lease):
            total += len(rows)
            await self._dispatch(rows)
            if len(rows) < self.BATCH:
                break
        return total

    async def _loop(self) -> None:
        next_poll = 0.0
        while not self._stopping:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            self._wake.clear()
            try:
                await self._dispatch_queued()
                if not self._stopping and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self._poll
                    await self.drain()
            except Exception as exc:  # the database hiccupped: the rows are stored, try later
                log.warning("outbox.relay_error", error=repr(exc)[:300])

    async def _dispatch_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.BATCH], self._queue[self.BATCH :]
            await self._dispatch(batch)

    async def _dispatch(self, rows: Sequence[Outboxed]) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._deliver(rows))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, rows: Sequence[Outboxed]) -> None:
        try:
            results = await send_all(self._client, rows, self._concurrency)
        finally:
            self._slots.release()
        retried = sum(r.retry for r in results)
        if retried:
            log.warning("outbox.retry_later", signals=retried, delivered=len(results) - retried)
        self._sent += zip(rows, results, strict=True)
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_sent(), name="outbox-settle")

    async def _settle_sent(self) -> None:
        """Settle what was sent, every `SETTLE_EVERY` seconds while there is some."""
        while self._sent:
            if not self._stopping:
                await asyncio.sleep(self.SETTLE_EVERY)
            sent, self._sent = self._sent, []
            try:
                await settle(self._db, [row for row, _ in sent], [result for _, result in sent])
            except Exception as exc:  # the rows stay stored and leased, so they come back
                log.warning("outbox.deliver_failed", signals=len(sent), error=repr(exc)[:300])
