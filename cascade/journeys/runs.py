"""The journey_runs row a run is found by: one insert, whoever writes it first."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.infra.db import Database, insert_ignoring_conflicts
from models.runs import RecordRunStartedInput
from models.tables import JourneyRun


async def record_run(session: AsyncSession, db: Database, input: RecordRunStartedInput) -> None:
    """Insert the run's row in `session` unless it exists (a retry, or the starter wrote it first)."""
    await session.exec(insert_ignoring_conflicts(db, JourneyRun).values(**input.model_dump()).on_conflict_do_nothing())
