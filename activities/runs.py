"""Activities a journey records its own start and finish with, so journey_runs is always true.

`start_journey` writes the start too, but a starter that dies between starting the
workflow and its insert would leave a run no event can find (no conversion, no exit):
the workflow's own first activity closes that gap. Both inserts are the same row and
whichever comes second changes nothing.
"""

from __future__ import annotations

from sqlmodel import col, update
from temporalio import activity

from cascade.infra.db import Database, insert_ignoring_conflicts
from models.runs import RecordRunFinishedInput, RecordRunStartedInput
from models.tables import JourneyRun


class RunActivities:
    """journey_runs writes, bound to a database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn
    async def record_run_started(self, input: RecordRunStartedInput) -> None:
        """Insert the run's row unless it exists (a retry, or the starter wrote it first)."""
        async with self._db.session() as session:
            await session.exec(
                insert_ignoring_conflicts(self._db, JourneyRun).values(**input.model_dump()).on_conflict_do_nothing()
            )

    @activity.defn
    async def record_run_finished(self, input: RecordRunFinishedInput) -> None:
        """Mark the run finished with its outcome (a repeat writes the same again)."""
        async with self._db.session() as session:
            await session.exec(
                update(JourneyRun)
                .where(col(JourneyRun.workflow_id) == input.workflow_id, col(JourneyRun.run_id) == input.run_id)
                .values(finished_at=input.finished_at, outcome=input.outcome)
            )
