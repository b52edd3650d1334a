"""Segment refreshes after events, off the event's critical path and coalesced per customer.

An event can move its customer into or out of segments, which starts journeys triggered
by `segment_entered:<name>`. Judging that used to be part of answering the event: a
read (and, when something changed, writes) before the 202, for every event. Nothing the
answer says depends on it, so the webhooks process now hands the customer to this
refresher and answers; the refresher judges every customer handed to it since its last
round in one SELECT (`refresh_customers_memberships`), however many events each had,
in rounds at most `segment_refresh_delay_seconds` apart (1 s).

Exact: a refresh judges the profile as stored, after every event committed before it,
so coalescing ten events of a customer into one refresh records the same transitions as
ten refreshes would (the last nine found nothing to change). Idempotent: memberships
are written by guarded statements, so a refresh that runs twice records nothing twice.
A process that dies with customers still queued leaves them to the scheduled full
refresh (`cascade segments schedule`), as a crash between the event's commit and its
refresh did before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from contextlib import suppress
from types import TracebackType

from temporalio.client import Client

from cascade.audiences.membership import refresh_customers
from cascade.audiences.service import load_segments
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from models.tables import utcnow

log = get_logger("audiences.refresher")


class SegmentRefresher:
    """Refreshes the segments of the customers `submit` names, in the background.

    `async with SegmentRefresher(...)` runs it (the webhooks app does); leaving the block
    refreshes whatever is still queued.
    """

    # Customers judged per round (one SELECT with an IN list of this size at most).
    ROUND = 500

    def __init__(self, client: Client, db: Database, settings: Settings) -> None:
        self._client = client
        self._db = db
        self._settings = settings
        self._queued: dict[str, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.rounds = 0  # refresh rounds run (tests and benchmarks read it)

    async def __aenter__(self) -> SegmentRefresher:
        self._task = asyncio.create_task(self._loop(), name="segment-refresher")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    def submit(self, customer_ids: Iterable[str]) -> None:
        """Refresh these customers' segments soon (their events are stored)."""
        for customer_id in customer_ids:
            self._queued[customer_id] = None
        if self._queued:
            self._wake.set()

    async def idle(self, within: float = 30.0) -> None:
        """Wait until every submitted customer has been refreshed (tests, benchmarks)."""
        deadline = time.monotonic() + within
        while self._queued or self._busy:
            if time.monotonic() > deadline:
                raise TimeoutError("segment refresher still busy")
            await asyncio.sleep(0.005)

    async def _loop(self) -> None:
        delay = self._settings.segment_refresh_delay_seconds
        while True:
            await self._wake.wait()
            self._wake.clear()
            if delay > 0 and not self._stopping:
                # Let more events of the same customers arrive: one judgement serves them all.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
            while self._queued:
                await self._round()
            if self._stopping:
                return

    async def _round(self) -> None:
        ids = list(self._queued)[: self.ROUND]
        for customer_id in ids:
            del self._queued[customer_id]
        self._busy = True
        try:
            catalog = load_segments(self._settings)
            await refresh_customers(self._client, self._db, self._settings, catalog, ids, utcnow())
            self.rounds += 1
        except Exception as exc:  # the database hiccupped: the scheduled refresh catches them up
            log.warning("segments.refresh_failed", customers=len(ids), error=repr(exc)[:300])
        finally:
            self._busy = False
