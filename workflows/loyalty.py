"""LoyaltyLoop: points email -> messenger -> SMS "points expiring", round after round.

Each round runs the journey's cascade as a child CascadeJourney. A purchase (the
`engagement` signal with `converted`, routed from a purchase event) ends the round's
cascade, accrues points (every purchase of the round counts), and the loop continues as
new for the next round, so the history of a years-long loop stays as small as one round.
No purchase within `loop.idle_timeout` after the cascade ends the loop.

Loops started before the fixes of "loyalty-round-v2" finish the round they are in on
the old path (their histories replay unchanged); every later round takes the new one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from activities.loyalty import LoyaltyActivities
    from activities.runs import RunActivities
    from models import search_attributes as sa
    from models.events import CancelInput, EngagementInput, EngagementType
    from models.journey import JourneyInput, JourneyResult, Outcome, Reaction
    from models.journey import LoyaltyLoop as LoopSpec
    from models.loyalty import AccruePointsInput, LoyaltyInput, LoyaltyResult, LoyaltyState
    from models.runs import RecordRunFinishedInput, RecordRunStartedInput
    from workflows.cascade import CascadeJourney

ACTIVITY_TIMEOUT = timedelta(seconds=30)
# Event ids handed to the next round, so a repeat of a purchase sent just before the
# round ended (the outbox sends at least once) does not count again there.
SEEN_CARRIED = 500


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
        # Purchases of this round, by event id ("" for one without an id).
        self._purchases: list[str] = []
        # Events that came while no round cascade was there to take them.
        self._pending: list[EngagementInput] = []
        self._seen: list[str] = list(input.seen_event_ids)
        self._seen_set = set(self._seen)
        self._v2 = False
        self._record_run = False

    @workflow.run
    async def run(self, input: LoyaltyInput) -> LoyaltyResult:
        """Play one round; continue as new after a purchase, end after a long silence."""
        journey = input.journey
        loop = journey.spec.loop or LoopSpec()
        info = workflow.info()
        self._v2 = workflow.patched("loyalty-round-v2")
        self._record_run = workflow.patched("record-run")
        if self._record_run and info.continued_run_id is None:
            await self._record_started()
        if self._v2:
            # A new round runs again (continue-as-new carried the last one's "waiting").
            self._set_status("running")

        result: JourneyResult | None = None
        if not (self._v2 and (self._purchases or self._stop is not None)):
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
            if self._v2:
                await self._hand_over_pending()
            result = await self._child
            self._child = None
        # else: bought (or left) before this round's cascade began: no message is needed.

        if result is not None:
            self._state.round_outcome = result.outcome
            if result.outcome == Outcome.REACTED and result.reaction == Reaction.CONVERTED:
                self._state.purchased = True
                if not self._purchases:
                    # Converted by a signal sent to the round's cascade itself.
                    self._count_purchase("")
        if not self._state.purchased and self._stop is None:
            self._state.status = "waiting for a purchase"
            if self._v2:
                self._set_status("waiting")
            try:
                await workflow.wait_condition(
                    lambda: self._state.purchased or self._stop is not None, timeout=loop.idle_timeout
                )
            except TimeoutError:
                return await self._end("no purchase within the idle timeout", "idle")
        if self._stop is not None:
            return await self._end(self._stop, "cancelled")

        if not self._v2:
            return await self._old_round_end(input, loop)
        points = loop.points_per_purchase
        accrued = 0
        while True:
            # A purchase whose handler is still running, or one that came while points
            # were being added, is counted before the round ends.
            await workflow.wait_condition(workflow.all_handlers_finished)
            count = len(self._purchases) - accrued
            if count <= 0:
                break
            key = f"{info.workflow_id}/{info.first_execution_run_id}/round-{input.round}"
            await workflow.execute_activity_method(
                LoyaltyActivities.accrue_points,
                AccruePointsInput(
                    customer_id=journey.customer_id,
                    points=points * count,
                    idempotency_key=f"{key}/{accrued}" if accrued else key,
                    at=workflow.now(),
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
            )
            accrued += count
            self._state.points_accrued += points * count
        if loop.max_rounds is not None and input.round >= loop.max_rounds:
            return await self._end(f"last round ({loop.max_rounds}) played", "last_round")
        workflow.continue_as_new(
            LoyaltyInput(
                journey=journey,
                round=input.round + 1,
                points_accrued=self._state.points_accrued,
                seen_event_ids=self._seen[-SEEN_CARRIED:],
            )
        )

    async def _old_round_end(self, input: LoyaltyInput, loop: LoopSpec) -> LoyaltyResult:
        """The end of a round as loops started before "loyalty-round-v2" play it."""
        journey = input.journey
        info = workflow.info()
        points = loop.points_per_purchase
        await workflow.execute_activity_method(
            LoyaltyActivities.accrue_points,
            AccruePointsInput(
                customer_id=journey.customer_id,
                points=points,
                idempotency_key=f"{info.workflow_id}/{info.first_execution_run_id}/round-{input.round}",
                at=workflow.now(),
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
        )
        self._state.points_accrued += points
        if loop.max_rounds is not None and input.round >= loop.max_rounds:
            return await self._end(f"last round ({loop.max_rounds}) played", "last_round")
        workflow.continue_as_new(
            LoyaltyInput(journey=journey, round=input.round + 1, points_accrued=self._state.points_accrued)
        )

    async def _hand_over_pending(self) -> None:
        """Give the new round's cascade what came while it was starting."""
        pending, self._pending = self._pending, []
        if self._stop is not None:
            await self._forward(CascadeJourney.cancel, CancelInput(reason=self._stop))
            return
        for event in pending:
            await self._forward(CascadeJourney.engagement, event)

    async def _end(self, reason: str, outcome: str) -> LoyaltyResult:
        self._state.status, self._state.outcome_reason = "finished", reason
        if self._v2:
            self._set_status("finished")
        if self._record_run:
            info = workflow.info()
            await workflow.execute_activity_method(
                RunActivities.record_run_finished,
                RecordRunFinishedInput(
                    workflow_id=info.workflow_id,
                    run_id=info.first_execution_run_id,
                    outcome=outcome,
                    finished_at=workflow.now(),
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
            )
        if self._v2:
            # A signal still being handled (forwarded to the round) finishes first.
            await workflow.wait_condition(workflow.all_handlers_finished)
        return LoyaltyResult.model_validate(self._state.model_dump())

    async def _record_started(self) -> None:
        info = workflow.info()
        spec = self._input.journey.spec
        await workflow.execute_activity_method(
            RunActivities.record_run_started,
            RecordRunStartedInput(
                # One row for the whole continue-as-new chain, keyed by its first run.
                workflow_id=info.workflow_id,
                run_id=info.first_execution_run_id,
                journey=spec.name,
                customer_id=self._input.journey.customer_id,
                campaign=spec.campaign,
                workflow_type=info.workflow_type,
                convert_on=spec.convert_on,
                exit_on=spec.exit_on,
                started_at=workflow.now(),
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
        )

    def _set_status(self, status: str) -> None:
        workflow.upsert_search_attributes([sa.JOURNEY_STATUS.value_set(status)])

    def _count_purchase(self, event_id: str) -> None:
        self._purchases.append(event_id)
        self._state.purchases = len(self._purchases)

    def _seen_before(self, event_id: str) -> bool:
        if event_id in self._seen_set:
            return True
        self._seen.append(event_id)
        self._seen_set.add(event_id)
        return False

    @workflow.signal
    async def engagement(self, event: EngagementInput) -> None:
        """A purchase (`converted`) ends the round; other events go to the round's cascade."""
        # The outbox sends at least once: a repeat of an event already taken is dropped.
        if event.event_id is not None and workflow.patched("signal-dedup") and self._seen_before(event.event_id):
            return
        if event.type == EngagementType.CONVERTED:
            self._state.purchased = True
            self._count_purchase(event.event_id or "")
        if self._child is None:
            self._pending.append(event)
            return
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
