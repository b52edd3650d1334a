"""SegmentRefresh: run by a Temporal Schedule, records segment transitions time alone causes."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.audiences import AudienceActivities
    from models.audiences import RefreshMembershipsInput, RefreshMembershipsResult

REFRESH_TIMEOUT = timedelta(hours=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))


@workflow.defn
class SegmentRefresh:
    """Refresh every segment's memberships once and start the journeys the transitions trigger."""

    @workflow.run
    async def run(self, input: RefreshMembershipsInput) -> RefreshMembershipsResult:
        """One activity: the refresh is SQL over the whole customer base, judged at `at` (default: now)."""
        result: RefreshMembershipsResult = await workflow.execute_activity_method(
            AudienceActivities.refresh_segment_memberships,
            RefreshMembershipsInput(customer_id=input.customer_id, at=input.at or workflow.now()),
            start_to_close_timeout=REFRESH_TIMEOUT,
            retry_policy=RETRY,
        )
        return result
