"""Scan workflows run by Temporal Schedules: birthdays daily, win-back weekly.

Each is one activity call; the schedule (not cron) decides when it runs, and the scan
judges by the time the schedule meant it to run (the `TemporalScheduledStartTime` search
attribute the schedule sets), so a run that starts late, or a backfill of a missed day,
scans the right day. The activity pages through the customers, heartbeating its place,
starts journeys with ids that make a repeated scan a no-op, and returns counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from activities.loyalty import LoyaltyActivities
    from models.loyalty import ScanInput, ScanResult

SCAN_TIMEOUT = timedelta(minutes=30)
# Paged scans: a big shop may take a while, but each page heartbeats, so a dead worker
# is noticed within the heartbeat timeout and the next attempt resumes after its last page.
PAGED_SCAN_TIMEOUT = timedelta(hours=6)
SCAN_HEARTBEAT = timedelta(minutes=2)
SCAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))
# Set by a Schedule on every workflow it starts: the time this run was scheduled for.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def scheduled_time() -> datetime | None:
    """The time the Schedule meant this run for, or None when no schedule started it."""
    return workflow.info().typed_search_attributes.get(SCHEDULED_START)


async def _scan(activity: Any, input: ScanInput) -> ScanResult:
    # Scans started before paging replay the single call they made.
    if not workflow.patched("paged-scans"):
        result: ScanResult = await workflow.execute_activity_method(
            activity,
            ScanInput(journey=input.journey, at=input.at or workflow.now()),
            start_to_close_timeout=SCAN_TIMEOUT,
        )
        return result
    at = input.at or scheduled_time() or workflow.now()
    paged: ScanResult = await workflow.execute_activity_method(
        activity,
        ScanInput(journey=input.journey, at=at),
        start_to_close_timeout=PAGED_SCAN_TIMEOUT,
        heartbeat_timeout=SCAN_HEARTBEAT,
        retry_policy=SCAN_RETRY,
    )
    return paged


@workflow.defn
class BirthdayScan:
    """Start the birthday journey for everyone whose birthday is on the scheduled day."""

    @workflow.run
    async def run(self, input: ScanInput) -> ScanResult:
        """Scan as of `input.at`, else the schedule's time for this run, else the workflow's."""
        return await _scan(LoyaltyActivities.scan_birthdays, input)


@workflow.defn
class WinbackScan:
    """Customers without a purchase for 6 months: stop news, start the reactivation chain."""

    @workflow.run
    async def run(self, input: ScanInput) -> ScanResult:
        """Scan as of `input.at`, else the schedule's time for this run, else the workflow's."""
        return await _scan(LoyaltyActivities.scan_winback, input)
