"""Activities of the loyalty loop and of the scheduled scans (birthdays, win-back)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, extract, or_
from sqlmodel import col, select, update
from temporalio import activity
from temporalio.client import Client

from core.db import Database
from core.events import insert_event
from core.journey_files import load_journey
from core.settings import Settings
from core.triggers import route_event
from models.loyalty import AccruePointsInput, AccruePointsResult, ScanInput, ScanResult
from models.tables import Customer

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
        async with self._db.session() as session:
            ids = (
                await session.exec(
                    select(Customer.id).where(
                        col(Customer.birth_date).is_not(None),
                        col(Customer.merged_into).is_(None),
                        extract("month", col(Customer.birth_date)) == at.month,
                        extract("day", col(Customer.birth_date)) == at.day,
                    )
                )
            ).all()
        spec = load_journey(input.journey)
        result = ScanResult()
        for cid in ids:
            routed = await route_event(
                self._client,
                self._db,
                cid,
                "birthday",
                {"year": at.year},
                journeys=[spec],
                settings=self._settings,
                now=at,
            )
            result.started += routed.started
        return result

    @activity.defn
    async def scan_winback(self, input: ScanInput) -> ScanResult:
        """Customers who bought before but not for WINBACK_AFTER: news ends, win-back starts.

        The event is routed against every journey file, so journeys with
        `exit_on: [winback_due]` (news digests) end while the reactivation chain starts.
        One chain per lapse: the run key is the date of the last purchase.
        """
        assert input.at is not None
        at = input.at
        async with self._db.session() as session:
            rows = (
                await session.exec(
                    select(Customer.id, Customer.last_purchase_at).where(
                        col(Customer.merged_into).is_(None),
                        col(Customer.erased_at).is_(None),
                        or_(
                            col(Customer.last_purchase_at) < at - WINBACK_AFTER,
                            and_(col(Customer.last_purchase_at).is_(None), col(Customer.purchase_count) > 0),
                        ),
                    )
                )
            ).all()
        result = ScanResult()
        for cid, last in rows:
            lapse = last.date().isoformat() if last is not None else "unknown"
            routed = await route_event(
                self._client, self._db, cid, "winback_due", {"lapse": lapse}, settings=self._settings, now=at
            )
            result.started += routed.started
            result.exited += routed.exited
        return result
