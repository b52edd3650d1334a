"""A workflow that only counts `engagement` signals (the webhooks benchmark's target; its own
module because Temporal's sandbox imports workflow modules afresh)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.events import EngagementInput


@workflow.defn
class SignalSink:
    """Receives engagement signals under the cascade's signal name and counts them."""

    def __init__(self) -> None:
        self.count = 0
        self.done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done, timeout=timedelta(hours=1))
        return self.count

    @workflow.signal(name="engagement")
    def engagement(self, event: EngagementInput) -> None:
        self.count += 1

    @workflow.signal
    def stop(self) -> None:
        self.done = True

    @workflow.query
    def received(self) -> int:
        return self.count
