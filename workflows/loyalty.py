"""LoyaltyLoop: points email -> messenger -> SMS "points expiring", round after round.

Each round runs the journey's cascade as a child CascadeJourney. A purchase (the
`engagement` signal with `converted`, routed from a purchase event) ends the round's
cascade, accrues points, and the loop continues as new for the next round, so the
history of a years-long loop stays as small as one round. No purchase within
`loop.idle_timeout` after the cascade ends the loop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from activities.loyalty import LoyaltyActivities
    from models import search_attributes as sa
    from models.events import CancelInput, EngagementInput, EngagementType
    from models.journey import JourneyInput, JourneyResult, Outcome, Reaction
    from models.journey import LoyaltyLoop as LoopSpec
    from models.loyalty import AccruePointsInput, LoyaltyInput, LoyaltyResult, LoyaltyState
    from workflows.cascade import CascadeJourney


@workflow.defn
class LoyaltyLoop:
    """One customer's loyalty programme loop; one round per run (continue-as-new)."""

    @workflow.init
    def __init__(self, input: LoyaltyInput) -> None:
        self._input = input
        self._state = LoyaltyState(
            customer_id=input.journey.customer_id, round=input.round, points_accrued=input.points_accrued
        )
        self._stop: str | None = None
        self._child: workflow.ChildWorkflowHandle[CascadeJourney, JourneyResult] | None = None

    @workflow.run
    async def run(self, input: LoyaltyInput) -> LoyaltyResult:
        """Play one round; continue as new after a purchase, end after a long silence."""
        journey = input.journey
        loop = journey.spec.loop or LoopSpec()
        info = workflow.info()
        self._child = await workflow.start_child_workflow(
            CascadeJourney.run,
            JourneyInput(
                spec=journey.spec,
                customer_id=journey.customer_id,
                context={**journey.context, "round": input.round},
            ),
            id=f"{info.workflow_id}/round-{input.round}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.CUSTOMER_ID, journey.customer_id),
                    SearchAttributePair(sa.JOURNEY, journey.spec.name),
                    SearchAttributePair(sa.JOURNEY_STATUS, "running"),
                ]
            ),
        )
        result = await self._child
        self._child = None
        self._state.round_outcome = result.outcome
        if result.outcome == Outcome.REACTED and result.reaction == Reaction.CONVERTED:
            self._state.purchased = True
        if not self._state.purchased and self._stop is None:
            self._state.status = "waiting for a purchase"
            try:
                await workflow.wait_condition(
                    lambda: self._state.purchased or self._stop is not None, timeout=loop.idle_timeout
                )
            except TimeoutError:
                return self._end("no purchase within the idle timeout")
        if self._stop is not None:
            return self._end(self._stop)

        points = loop.points_per_purchase
        await workflow.execute_activity_method(
            LoyaltyActivities.accrue_points,
            AccruePointsInput(
                customer_id=journey.customer_id,
                points=points,
                idempotency_key=f"{info.workflow_id}/{info.first_execution_run_id}/round-{input.round}",
                at=workflow.now(),
            ),
            start_to_close_timeout=timedelta(seconds=30),
        )
        self._state.points_accrued += points
        if loop.max_rounds is not None and input.round >= loop.max_rounds:
            return self._end(f"last round ({loop.max_rounds}) played")
        workflow.continue_as_new(
            LoyaltyInput(journey=journey, round=input.round + 1, points_accrued=self._state.points_accrued)
        )

    def _end(self, reason: str) -> LoyaltyResult:
        self._state.status, self._state.outcome_reason = "finished", reason
        return LoyaltyResult.model_validate(self._state.model_dump())

    @workflow.signal
    async def engagement(self, event: EngagementInput) -> None:
        """A purchase (`converted`) ends the round; other events go to the round's cascade."""
        if event.type == EngagementType.CONVERTED:
            self._state.purchased = True
        await self._forward(CascadeJourney.engagement, event)

    @workflow.signal
    async def cancel(self, input: CancelInput) -> None:
        """End the loop (and the round's cascade) gracefully."""
        self._stop = input.reason
        await self._forward(CascadeJourney.cancel, input)

    async def _forward(self, signal: Any, arg: Any) -> None:
        # The round's cascade may finish between the check and the signal; a signal
        # that finds it gone must not fail the loop (the flags above already count).
        if self._child is None:
            return
        try:
            await self._child.signal(signal, arg)
        except Exception as exc:  # reported, never fatal to the loop
            workflow.logger.info("round cascade did not take the signal: %s", exc)

    @workflow.query
    def state(self) -> LoyaltyState:
        """Round, points accrued so far, and what the loop waits for."""
        return self._state
