"""Activities a journey records its own start and finish with, so journey_runs is always true.

`start_journey` writes the start too, but a starter that dies between starting the
workflow and its insert would leave a run no event can find (no conversion, no exit):
the workflow's own first activity closes that gap. Both inserts are the same row and
whichever comes second changes nothing.
"""

from __future__ import annotations

from sqlmodel import Session, col, update
from temporalio import activity

from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.journeys.runs import record_run
from models.runs import RecordRunFinishedInput, RecordRunStartedInput
from models.tables import JourneyRun, StepSkip

# The reason column's width: a longer reason (a long condition) is cut, not refused.
REASON_CHARS = 200


class RunActivities:
    """journey_runs writes, bound to a database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn
    async def record_run_started(self, input: RecordRunStartedInput) -> None:
        """Insert the run's row unless it exists (a retry, or the starter wrote it first)."""
        await self._db.transaction(record_run, self._db, input)

    @activity.defn
    async def record_run_finished(self, input: RecordRunFinishedInput) -> None:
        """Mark the run finished with its outcome and record its skipped steps (a repeat writes the same again)."""
        await self._db.transaction(self._finish, input)

    def _finish(self, session: Session, input: RecordRunFinishedInput) -> None:
        session.connection().execute(
            update(JourneyRun)
            .where(col(JourneyRun.workflow_id) == input.workflow_id, col(JourneyRun.run_id) == input.run_id)
            .values(finished_at=input.finished_at, outcome=input.outcome)
            # Nothing loaded in this session to keep in step with the update.
            .execution_options(synchronize_session=False)
        )
        if input.skipped and input.journey is not None and input.customer_id is not None:
            rows = [
                {
                    "workflow_id": input.workflow_id,
                    "run_id": input.run_id,
                    "journey": input.journey,
                    "campaign": input.campaign,
                    "variant": input.variant,
                    "customer_id": input.customer_id,
                    "step": skip.step,
                    "channel": skip.channel,
                    "reason": skip.reason[:REASON_CHARS],
                    "skipped_at": input.finished_at,
                }
                for skip in input.skipped
            ]
            # A retried activity finds its rows there: (workflow, run, step) is unique.
            session.connection().execute(
                insert_ignoring_conflicts(self._db, StepSkip).values(rows).on_conflict_do_nothing()
            )
