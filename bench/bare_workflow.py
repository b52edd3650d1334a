"""The raw-Temporal baseline of the throughput benchmark (its own module: workflows are
imported into Temporal's sandbox, which wants a module free of side effects)."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow


@workflow.defn
class BareJourney:
    """The least a cascade step can be: check, send, wait for a signal."""

    def __init__(self) -> None:
        self.reacted = False

    @workflow.run
    async def run(self, customer_id: str) -> str:
        timeout = timedelta(seconds=30)
        await workflow.execute_activity("bare_check", customer_id, start_to_close_timeout=timeout)
        await workflow.execute_activity("bare_send", workflow.info().workflow_id, start_to_close_timeout=timeout)
        await workflow.wait_condition(lambda: self.reacted, timeout=timedelta(hours=1))
        return "reacted"

    @workflow.signal
    def react(self) -> None:
        self.reacted = True


@workflow.defn
class RawSleeper:
    """The least a campaign's next step can be: one timer to a moment, one activity, a wait for a signal."""

    def __init__(self) -> None:
        self.reacted = False

    @workflow.run
    async def run(self, wake_at: str) -> str:
        await workflow.sleep(max(datetime.fromisoformat(wake_at) - workflow.now(), timedelta(seconds=1)))
        timeout = timedelta(seconds=60)
        await workflow.execute_activity("raw_send", workflow.info().workflow_id, start_to_close_timeout=timeout)
        await workflow.wait_condition(lambda: self.reacted, timeout=timedelta(days=1))
        return "done"

    @workflow.signal
    def react(self) -> None:
        self.reacted = True
