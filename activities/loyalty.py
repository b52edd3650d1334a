"""Activities of the loyalty loop and of the scheduled scans (birthdays, win-back)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, extract, or_
from sqlmodel import col, select, update
from temporalio import activity
from temporalio.client import Client

from cascade.events.store import insert_event
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from cascade.journeys.inputs import UnknownCustomerError
from cascade.journeys.triggers import RouteResult, route_event
from models.loyalty import AccruePointsInput, AccruePointsResult, ScanInput, ScanResult
from models.tables import Customer

log = get_logger(__name__)

# A customer without a purchase for longer than this is dormant: win-back starts.
WINBACK_AFTER = timedelta(days=180)


class LoyaltyActivities:
    """Points accrual and the scans that start time-based journeys."""

    def __init__(self, db: Database, client: Client, settings: Settings) -> None:
        self._db = db
        self._client = client
        self._settings = settings

    @activity.defn
    async def accrue_points(self, input: AccruePointsInput) -> AccruePointsResult:
        """Add points once: the accrual is an engagement event keyed by the idempotency key."""
        async with self._db.session() as session:
            duplicate = not await insert_event(
                self._db,
                session,
                event_id=input.idempotency_key,
                customer_id=input.customer_id,
                type="points_accrued",
                source="loyalty",
                properties={"points": input.points},
                occurred_at=input.at,
            )
            if not duplicate:
                await session.exec(
                    update(Customer)
                    .where(col(Customer.id) == input.customer_id)
                    .values(loyalty_points=col(Customer.loyalty_points) + input.points)
                )
            balance = (
                await session.exec(select(Customer.loyalty_points).where(Customer.id == input.customer_id))
            ).one()
        return AccruePointsResult(balance=balance, duplicate=duplicate)

    @activity.defn
    async def scan_birthdays(self, input: ScanInput) -> ScanResult:
        """Start the birthday journey for everyone born on this day (once per year)."""
        assert input.at is not None
        at = input.at
        spec = load_journey(input.journey)

        def page(after: str | None) -> Any:
            query = select(Customer.id).where(
                col(Customer.birth_date).is_not(None),
                col(Customer.merged_into).is_(None),
                col(Customer.erased_at).is_(None),
                extract("month", col(Customer.birth_date)) == at.month,
                extract("day", col(Customer.birth_date)) == at.day,
            )
            return query if after is None else query.where(col(Customer.id) > after)

        async def route(row: Any, event_id: str) -> RouteResult:
            return await route_event(
                self._client,
                self._db,
                row,
                "birthday",
                {"year": at.year},
                journeys=[spec],
                settings=self._settings,
                now=at,
                event_id=event_id,
            )

        return await self._scan(at, page, route)

    @activity.defn
    async def scan_winback(self, input: ScanInput) -> ScanResult:
        """Customers who bought before but not for WINBACK_AFTER: news ends, win-back starts.

        The event is routed against every journey file, so journeys with
        `exit_on: [winback_due]` (news digests) end while the reactivation chain starts.
        One chain per lapse: the run key is the date of the last purchase.
        """
        assert input.at is not None
        at = input.at

        def page(after: str | None) -> Any:
            query = select(Customer.id, Customer.last_purchase_at).where(
                col(Customer.merged_into).is_(None),
                col(Customer.erased_at).is_(None),
                or_(
                    col(Customer.last_purchase_at) < at - WINBACK_AFTER,
                    and_(col(Customer.last_purchase_at).is_(None), col(Customer.purchase_count) > 0),
                ),
            )
            return query if after is None else query.where(col(Customer.id) > after)

        async def route(row: Any, event_id: str) -> RouteResult:
            cid, last = row
            lapse = last.date().isoformat() if last is not None else "unknown"
            return await route_event(
                self._client,
                self._db,
                cid,
                "winback_due",
                {"lapse": lapse},
                settings=self._settings,
                now=at,
                event_id=event_id,
            )

        return await self._scan(at, page, route)

    async def _scan(
        self,
        at: datetime,
        page: Callable[[str | None], Any],
        route: Callable[[Any, str], Awaitable[RouteResult]],
    ) -> ScanResult:
        """Route every customer `page` selects, a page at a time in id order.

        After each page the activity heartbeats its cursor and counts, so a retry (the
        worker died) resumes after the last finished page instead of starting over; a
        customer routed twice that way is harmless (journey ids and event ids make it a
        no-op). Only counts come back: a million customers fit in a few bytes.
        """
        info = activity.info()
        result, cursor = ScanResult(at=at), None
        if info.heartbeat_details:
            saved = info.heartbeat_details[0]
            cursor, result = saved["cursor"], ScanResult.model_validate(saved["result"])
        limit = asyncio.Semaphore(self._settings.scan_concurrency)
        scan_id = f"scan:{info.workflow_id}:{info.workflow_run_id}"

        async def one(row: Any) -> RouteResult | None:
            cid = _row_id(row)
            async with limit:
                try:
                    return await route(row, f"{scan_id}:{cid}")
                except UnknownCustomerError:
                    return None  # merged or erased since the page was read

        while True:
            async with self._db.session() as session:
                rows = list(
                    (
                        await session.exec(page(cursor).order_by(col(Customer.id)).limit(self._settings.scan_page_size))
                    ).all()
                )
            if not rows:
                break
            for routed in await asyncio.gather(*(one(row) for row in rows)):
                result.scanned += 1
                if routed is not None:
                    result.started += len(routed.started)
                    result.exited += len(routed.exited)
                    result.not_entered += len(routed.not_entered)
            cursor = _row_id(rows[-1])
            activity.heartbeat({"cursor": cursor, "result": result.model_dump(mode="json")})
        log.info(
            "scan.done",
            workflow_id=info.workflow_id,
            scanned=result.scanned,
            started=result.started,
            exited=result.exited,
            not_entered=result.not_entered,
        )
        return result


def _row_id(row: Any) -> str:
    # A page of one column is a list of ids; of several, rows whose first column is the id.
    return row if isinstance(row, str) else str(row[0])
