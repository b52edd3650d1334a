"""The journey_runs row a run is found by: one insert, whoever writes it first."""

from __future__ import annotations

from sqlmodel import Session

from cascade.infra.db import Database, insert_ignoring_conflicts
from models.runs import RecordRunStartedInput
from models.tables import JourneyRun


def record_run(session: Session, db: Database, input: RecordRunStartedInput) -> None:
    """Insert the run's row in `session` unless it exists (a retry, or the starter wrote it first).

    Synchronous: it runs inside Database.transaction (the send's claim, the run activities).
    """
    session.connection().execute(
        insert_ignoring_conflicts(db, JourneyRun).values(**input.model_dump()).on_conflict_do_nothing()
    )
