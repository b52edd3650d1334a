"""A workflow that runs one activity N times in a row and reports each round trip.

Its own module: workflows are imported into Temporal's sandbox, which wants a module
free of side effects. `workflow.now()` advances with every workflow task, so the gap
between two readings is one activity's full trip through the server and the worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow


@workflow.defn
class ActivityLoop:
    """Execute `activity` on `queue` `count` times; return the milliseconds of each trip."""

    @workflow.run
    async def run(self, activity: str, arg: Any, queue: str, count: int) -> list[float]:
        trips = []
        for _ in range(count):
            before = workflow.now()
            await workflow.execute_activity(
                activity, arg, task_queue=queue, start_to_close_timeout=timedelta(seconds=30)
            )
            trips.append((workflow.now() - before).total_seconds() * 1000)
        return trips
