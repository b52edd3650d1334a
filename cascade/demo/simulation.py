"""`cascade simulate` and `make run`: weeks of history from a simulated population (cascade.simulator.history).

The driver lives here, with the entry points, because it runs a worker (worker.build_worker);
the population and the hour-by-hour play are in cascade.simulator.history.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from analytics.funnel import refresh_reaction_rollup, refresh_rollup
from analytics.money import refresh_savings_rollup
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from cascade.simulator.history import (
    SIMULATED_PREFIX,
    HistorySimulation,
    SimulationReport,
    population,
    time_skipping_server,
)
from models.tables import Delivery, JourneyRun, utcnow
from worker import build_worker


async def simulate_history(
    settings: Settings,
    customers: int,
    weeks: int,
    seed: int,
    *,
    say: Callable[[str], None] = lambda line: None,
) -> SimulationReport:
    """Run a population through the real workflows on a time-skipping server into `settings`' database."""
    people = population(customers, seed)
    clock = utcnow()
    # A task queue of its own: a worker of the demo's dev server must not take its tasks.
    sim_settings = settings.model_copy(update={"task_queue": f"simulator-{uuid.uuid4().hex[:8]}"})
    db = Database.from_settings(sim_settings)
    # A runtime of its own that logs errors only: the test server does not advertise every
    # capability of a real server, and the SDK warns about it once per worker.
    quiet = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=time_skipping_server(), runtime=quiet
    )
    try:
        await migrate(db.engine)
        await register_search_attributes(env.client)
        async with build_worker(env.client, sim_settings, db):
            sim = HistorySimulation(env, db, sim_settings, people, weeks, seed, say=say)
            report = await sim.run()
        # The history is dated in the past: rebuild the rollups so the closed days are in them.
        await refresh_rollup(db, rebuild=True)
        await refresh_reaction_rollup(db, rebuild=True)
        await refresh_savings_rollup(db, settings.channel_costs, rebuild=True)
    finally:
        await env.shutdown()
        await db.dispose()
    report.seconds = (utcnow() - clock).total_seconds()
    return report


async def simulated_runs(db: Database, since: datetime) -> int:
    """Journey runs of simulated customers started since `since` (0 on an empty database)."""
    await migrate(db.engine)
    r = JourneyRun.__table__.c  # type: ignore[attr-defined]
    stmt = select(func.count()).where(r.customer_id.like(f"{SIMULATED_PREFIX}%"), r.started_at >= since)
    async with db.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


@dataclass(frozen=True)
class HistoryStatus:
    """The simulated customers' history in a database."""

    customers: int
    runs: int
    messages: int
    first: datetime | None
    last: datetime | None


async def simulated_history(db: Database) -> HistoryStatus:
    """How much simulated history `db` holds (customers whose id starts with SIMULATED_PREFIX)."""
    r = JourneyRun.__table__.c  # type: ignore[attr-defined]
    d = Delivery.__table__.c  # type: ignore[attr-defined]
    mine = f"{SIMULATED_PREFIX}%"
    async with db.engine.connect() as conn:
        customers, runs, first, last = (
            await conn.execute(
                select(
                    func.count(func.distinct(r.customer_id)),
                    func.count(),
                    func.min(r.started_at),
                    func.max(r.started_at),
                ).where(r.customer_id.like(mine))
            )
        ).one()
        messages = (await conn.execute(select(func.count()).where(d.customer_id.like(mine)))).scalar_one()
    return HistoryStatus(int(customers), int(runs), int(messages), first, last)
