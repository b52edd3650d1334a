"""AnalyticsRefresh: run by a Temporal Schedule, rolls up the recent days the console reads."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.analytics import AnalyticsActivities
    from models.analytics import RefreshRollupsInput, RefreshRollupsResult

REFRESH_TIMEOUT = timedelta(minutes=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=2))


@workflow.defn
class AnalyticsRefresh:
    """Rebuild the rollups' recent days once (one activity: SQL over the last 35 days)."""

    @workflow.run
    async def run(self, input: RefreshRollupsInput) -> RefreshRollupsResult:
        """The refresh as of `input.at`, or of when the activity runs (the log keeps moving)."""
        result: RefreshRollupsResult = await workflow.execute_activity_method(
            AnalyticsActivities.refresh_recent_rollups,
            input,
            start_to_close_timeout=REFRESH_TIMEOUT,
            retry_policy=RETRY,
        )
        return result
