"""Scan workflows run by Temporal Schedules: birthdays daily, win-back weekly.

Each is one activity call; the schedule (not cron) decides when it runs, and the
activity starts journeys with ids that make a repeated scan a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.loyalty import LoyaltyActivities
    from models.loyalty import ScanInput, ScanResult

SCAN_TIMEOUT = timedelta(minutes=30)


@workflow.defn
class BirthdayScan:
    """Start the birthday journey for everyone whose birthday is today."""

    @workflow.run
    async def run(self, input: ScanInput) -> ScanResult:
        """Scan as of `input.at` or the workflow's time."""
        return await workflow.execute_activity_method(
            LoyaltyActivities.scan_birthdays,
            ScanInput(journey=input.journey, at=input.at or workflow.now()),
            start_to_close_timeout=SCAN_TIMEOUT,
        )


@workflow.defn
class WinbackScan:
    """Customers without a purchase for 6 months: stop news, start the reactivation chain."""

    @workflow.run
    async def run(self, input: ScanInput) -> ScanResult:
        """Scan as of `input.at` or the workflow's time."""
        return await workflow.execute_activity_method(
            LoyaltyActivities.scan_winback,
            ScanInput(journey=input.journey, at=input.at or workflow.now()),
            start_to_close_timeout=SCAN_TIMEOUT,
        )
