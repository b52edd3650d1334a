"""A broadcast to 2,000 customers on the real Temporal dev server: every recipient's cascade runs
to its end, exactly once."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, insert, select
from sqlmodel import col
from temporalio.testing import WorkflowEnvironment

from cascade.audiences.broadcasts import start_broadcast
from cascade.audiences.compiler import CONSENTS, CONTACTS, CUSTOMERS
from cascade.audiences.service import load_segments
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from models.broadcasts import BroadcastProgress
from models.tables import Delivery, JourneyRun, utcnow
from tests.conftest import postgres_execute
from tests.helpers import spec
from worker import build_worker

pytestmark = pytest.mark.integration
# 500 by default; CASCADE_BROADCAST_IT_RECIPIENTS=2000 runs the size the issue names, and
# passes, at four times the cost: each recipient's cascade is about 30 history events, 5
# search-attribute updates and 2 activities on the dev server, 0.17 CPU-seconds per
# recipient in this process and the dev server together (2026-12-01, 2 cores: 2,000 took
# 341 CPU-s and 403 s at load average 8-12; 500 took 90 CPU-s and 111 s). 2,000 would be
# the suite's longest test after the README walkthrough, about 7 minutes under load, so CI
# (.ci/run) runs the 2,000 alone after the suite.
RECIPIENTS = int(os.environ.get("CASCADE_BROADCAST_IT_RECIPIENTS", "500"))
# Eight full pages and an empty ninth, continue-as-new every three: two continued runs.
PAGE = max(1, RECIPIENTS // 8)


async def _bulk_customers(db: Database, n: int) -> None:
    now = utcnow()
    ids = [f"bulk{i:05d}" for i in range(n)]
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(CUSTOMERS),
            [
                {
                    "id": c,
                    "name": "Ann",
                    "timezone": "UTC",
                    "children_ages": [],
                    "favourite_categories": [],
                    "purchase_count": 0,
                    "loyalty_points": 0,
                    "attributes": {},
                    "created_at": now,
                }
                for c in ids
            ],
        )
        await conn.execute(
            insert(CONTACTS),
            [{"customer_id": c, "channel": "email", "address": f"{c}@example.com", "status": "valid"} for c in ids],
        )
        await conn.execute(
            insert(CONSENTS),
            [{"customer_id": c, "channel": "email", "topic": "marketing", "granted": True} for c in ids],
        )


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    """PostgreSQL in a schema of its own: 2,000 concurrent cascades write faster than SQLite allows."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    database = Database.from_url(postgres_url, schema=schema)
    await migrate(database.engine)
    yield database
    await database.dispose()
    await postgres_execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
async def test_a_broadcast_to_2000_customers_runs_every_cascade_once(
    dev_server: WorkflowEnvironment, settings: Settings, pg: Database, tmp_path: Path
) -> None:
    db = pg
    folder = tmp_path / "segments"
    folder.mkdir()
    rule = {"name": "everyone", "where": [{"field": "purchase_count", "op": "gte", "value": 0}]}
    (folder / "everyone.yaml").write_text(yaml.safe_dump(rule))
    # The worker's sticky cache sized to the journeys that run together (what
    # CASCADE_WORKER_MAX_CACHED_WORKFLOWS asks for): with a cache of 1,000 and 2,000
    # journeys in flight, a journey evicted between its tasks replays its history
    # (measured at 2,000: 378 CPU-s with the default against 341 sized).
    settings = settings.model_copy(
        update={"segments_dir": folder, "worker_max_cached_workflows": max(1000, RECIPIENTS + 100)}
    )
    await _bulk_customers(db, RECIPIENTS)
    client = dev_server.client
    journey = spec("email", name="bulk", wait="1s")
    broadcast_id = f"bulk-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, settings, db):
        handle = await start_broadcast(
            client,
            load_segments(settings),
            settings.task_queue,
            broadcast_id=broadcast_id,
            segment="everyone",
            journey=journey,
            page_size=PAGE,
            pages_per_run=3,
            rate_per_second=1000,
        )
        result = BroadcastProgress.model_validate(await handle.result())
        assert (result.status, result.audience, result.started, result.skipped, result.failed) == (
            "done",
            RECIPIENTS,
            RECIPIENTS,
            {},
            0,
        )
        assert result.runs == 2

        async def finished() -> int:
            query = select(func.count()).where(
                col(JourneyRun.finished_at).is_not(None), col(JourneyRun.journey) == "bulk"
            )
            async with db.engine.connect() as conn:
                return int((await conn.execute(query)).scalar_one())

        for _ in range(2400):
            if await finished() >= RECIPIENTS:
                break
            await asyncio.sleep(0.5)
    assert await finished() == RECIPIENTS
    query = select(func.count(), func.count(func.distinct(Delivery.customer_id))).where(Delivery.journey == "bulk")  # type: ignore[arg-type]
    async with db.engine.connect() as conn:
        sends, people = (await conn.execute(query)).one()
    assert (sends, people) == (RECIPIENTS, RECIPIENTS)
    listed = [
        w async for w in client.list_workflows(f'Campaign = "{broadcast_id}" AND WorkflowType = "CascadeJourney"')
    ]
    assert len(listed) == RECIPIENTS
