"""Group commit: single events from concurrent requests stored in one transaction.

`POST /v1/events` carries one event, and a shop sends many at once. Stored one by one,
each costs its own transaction: on SQLite a turn at the one writer, a commit, and some
30 hops to the database thread for its five or so statements. Here the events that
arrive while a transaction is being written wait for the next one, which stores all of
them with `record_app_events`' few statements (profiles read in one query, events
inserted in one, journeys read in one). Nothing waits on a timer: an event that finds
nothing in progress is written at once, so a lone event is as fast as before and a
burst is stored in a handful of transactions.

Each caller gets its own event's `RecordedEvent` once the transaction holding it has
committed, so an answer still means "stored" (durable before 202). If a group's
transaction fails, its events are stored again one by one, so one bad event fails only
its own request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from cascade.events.ingest import RecordedEvent, record_app_event, record_app_events_of_tenants
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from models.events import AppEvent
from models.journey import JourneySpec

log = get_logger(__name__)


@dataclass
class _Waiting:
    tenant: str
    event: AppEvent
    answer: asyncio.Future[RecordedEvent]


class EventGroupCommit:
    """Stores single events in shared transactions; `record` is `record_app_event`'s twin."""

    def __init__(
        self,
        db: Database,
        *,
        lease: timedelta,
        max_group: int = 500,
        journeys: Sequence[JourneySpec] | None = None,
    ) -> None:
        self._db = db
        self._lease = lease
        self._max_group = max_group
        self._journeys = journeys
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = 0  # transactions written (tests and benchmarks read it)

    async def record(self, tenant: str, event: AppEvent) -> RecordedEvent:
        """Store one event (in the next group transaction); its answer once committed."""
        answer: asyncio.Future[RecordedEvent] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(tenant, event, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="events-group-commit")
        # Shielded: a caller that goes away does not cancel the transaction its event
        # shares with others (the event is stored; the sender's retry is a duplicate).
        return await asyncio.shield(answer)

    async def close(self) -> None:
        """Wait for the transaction in progress and those queued behind it."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write(self) -> None:
        try:
            await self._write_groups()
        except BaseException as exc:  # cancelled at shutdown: no caller may wait forever
            for waiting in self._waiting:
                if not waiting.answer.done():
                    waiting.answer.set_exception(RuntimeError("event ingest stopped; retry"))
            self._waiting = []
            raise exc

    async def _write_groups(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[: self._max_group], self._waiting[self._max_group :]
            try:
                recorded = await record_app_events_of_tenants(
                    self._db, [(w.tenant, w.event) for w in group], journeys=self._journeys, lease=self._lease
                )
            except Exception as exc:  # one bad event must not fail the others: each alone
                log.warning("events.group_failed", events=len(group), error=repr(exc)[:300])
                await self._one_by_one(group)
                continue
            self.groups += 1
            for waiting, one in zip(group, recorded, strict=True):
                if not waiting.answer.done():
                    waiting.answer.set_result(one)

    async def _one_by_one(self, group: list[_Waiting]) -> None:
        for waiting in group:
            try:
                one = await record_app_event(
                    self._db, waiting.tenant, waiting.event, journeys=self._journeys, lease=self._lease
                )
            except Exception as exc:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
                continue
            if not waiting.answer.done():
                waiting.answer.set_result(one)
