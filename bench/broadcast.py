"""Broadcast throughput against a raw start loop, and segment counts over a big PostgreSQL base.

    python bench/broadcast.py starts [-n 100000] [--concurrency 50]
    python bench/broadcast.py segments [--customers 1000000] [--events 10000000]

`starts`: a BroadcastWorkflow to a segment of n customers on PostgreSQL and the real dev
server, against a raw loop of `client.start_workflow` with the same concurrency and the
same payload, in the same run. Both start CascadeJourney workflows on a task queue no
worker polls, so both sides measure starting (the broadcast's snapshot, paging and
bookkeeping included), not running the cascades. Also the process's peak RSS (it hosts
the broadcast worker) during the broadcast.

`segments`: bulk-loads customers and events with INSERT ... SELECT generate_series (no
API), then times COUNT queries of behavioural segments and prints their plans.

Both use their own PostgreSQL schema at CASCADE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) and drop it at the end. Results go to stdout
as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import yaml
from sqlalchemy import text
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.audiences import AudienceActivities
from cascade.audiences.broadcasts import start_broadcast
from cascade.audiences.compiler import count_query
from cascade.audiences.service import load_segments
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from models.broadcasts import BroadcastProgress
from models.journey import JourneyInput, JourneySpec
from models.search_attributes import REGISTERED
from tests.conftest import asyncpg_dsn, binary, quiet_runtime
from workflows.broadcast import BroadcastWorkflow

POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPEC = JourneySpec.model_validate(
    {"name": "bench", "steps": [{"channel": "email", "content": {"subject": "News", "body": "Hello {{ name }}"}}]}
)
SEGMENTS = {
    "everyone": [{"field": "purchase_count", "op": "gte", "value": 0}],
    "lapsed_buyers": [
        {"event": "purchase", "within": "365d", "op": "gte", "value": 2},
        {"event": "purchase", "within": "90d", "op": "eq", "value": 0},
    ],
    "big_spenders": [{"event": "purchase", "within": "365d", "sum": "amount", "op": "gt", "value": 300}],
    "opened_recently": [{"event": "opened", "channel": "email", "within": "30d"}],
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _segment_folder(tag: str) -> Path:
    folder = Path(f"/tmp/bench-{tag}-{uuid.uuid4().hex[:6]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, where in SEGMENTS.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "where": where}))
    return folder


async def _schema(tag: str) -> tuple[Database, Settings, str]:
    schema = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    folder = _segment_folder(tag)
    settings = Settings(database_url=POSTGRES_URL, database_schema=schema, segments_dir=folder)
    db = Database.from_settings(settings)
    await migrate(db.engine)
    return db, settings, schema


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def _load_customers(db: Database, n: int) -> float:
    began = time.perf_counter()
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO customers (id, name, timezone, children_ages, favourite_categories, purchase_count,"
                " loyalty_points, attributes, created_at, last_purchase_at)"
                " SELECT 'c' || lpad(g::text, 8, '0'), 'Ann', 'UTC', '[]', '[]', g % 7, 0, '{}',"
                " now() - (g % 1000) * interval '1 day',"
                " CASE WHEN g % 7 = 0 THEN NULL ELSE now() - (g % 800) * interval '1 day' END"
                " FROM generate_series(1, CAST(:n AS integer)) AS g"
            ),
            {"n": n},
        )
        await conn.execute(text("ANALYZE customers"))
    return time.perf_counter() - began


async def _load_events(db: Database, customers: int, events: int) -> float:
    began = time.perf_counter()
    batch = 1_000_000
    for start in range(0, events, batch):
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO engagement_events (customer_id, channel, type, source, properties, occurred_at,"
                    " received_at)"
                    " SELECT 'c' || lpad((1 + (g * 7919) % CAST(:customers AS bigint))::text, 8, '0'),"
                    " CASE WHEN g % 5 IN (1, 2) THEN 'email' END,"
                    " CASE g % 5 WHEN 0 THEN 'purchase' WHEN 1 THEN 'opened' WHEN 2 THEN 'clicked'"
                    " ELSE 'page_viewed' END, 'bench',"
                    " json_build_object('amount', g % 400), now() - ((g * 31) % 730) * interval '1 day', now()"
                    " FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g"
                ),
                {"customers": customers, "lo": start + 1, "hi": min(start + batch, events)},
            )
    async with db.engine.begin() as conn:
        await conn.execute(text("ANALYZE engagement_events"))
    return time.perf_counter() - began


async def segments(customers: int, events: int, repeats: int) -> dict[str, Any]:
    """Bulk-load, then time each segment's COUNT (best and median of `repeats`) with its plan."""
    db, settings, schema = await _schema("seg")
    try:
        out: dict[str, Any] = {"customers": customers, "events": events}
        out["load_customers_s"] = round(await _load_customers(db, customers), 1)
        out["load_events_s"] = round(await _load_events(db, customers, events), 1)
        catalog = load_segments(settings)
        now = datetime.now(UTC)
        timings: dict[str, Any] = {}
        for name in [*SEGMENTS, "dormant", "loyal"]:
            query = count_query(catalog, name, dialect="postgresql", now=now)
            runs = []
            count = 0
            async with db.engine.connect() as conn:
                for _ in range(repeats):
                    began = time.perf_counter()
                    count = (await conn.execute(query)).scalar_one()
                    runs.append(time.perf_counter() - began)
                compiled = query.compile(db.engine, compile_kwargs={"literal_binds": True})
                plan = [r[0] for r in await conn.execute(text(f"EXPLAIN {compiled}"))]
            runs.sort()
            timings[name] = {
                "members": count,
                "best_s": round(runs[0], 3),
                "median_s": round(runs[len(runs) // 2], 3),
                "plan": plan,
            }
        out["segments"] = timings
        return out
    finally:
        await db.dispose()
        await _drop(schema)


async def starts(n: int, concurrency: int) -> dict[str, Any]:
    """Broadcast to n customers vs a raw start loop with the same concurrency, same run."""
    db, settings, schema = await _schema("starts")
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        search_attributes=REGISTERED,
        runtime=quiet_runtime(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.rps=100000"],
    )
    try:
        await _load_customers(db, n)
        client: Client = env.client
        idle = f"bench-idle-{uuid.uuid4().hex[:6]}"
        settings = settings.model_copy(update={"task_queue": idle, "broadcast_start_concurrency": concurrency})
        queue = f"bench-broadcast-{uuid.uuid4().hex[:6]}"
        acts = AudienceActivities(db, client, settings)
        rss_before = _rss_mib()
        async with Worker(
            client,
            task_queue=queue,
            workflows=[BroadcastWorkflow],
            activities=[acts.snapshot_audience, acts.start_recipients, acts.cancel_unsent_journeys],
        ):
            began = time.perf_counter()
            handle = await start_broadcast(
                client,
                load_segments(settings),
                queue,
                broadcast_id=f"bench-{uuid.uuid4().hex[:8]}",
                segment="everyone",
                journey=SPEC,
                rate_per_second=1_000_000,
                page_size=500,
                pages_per_run=50,
            )
            result = BroadcastProgress.model_validate(await handle.result())
            broadcast_s = time.perf_counter() - began
        rss_peak = _rss_mib()
        assert result.started == n, result

        gate = asyncio.Semaphore(concurrency)
        run = uuid.uuid4().hex[:6]

        async def one(i: int) -> None:
            async with gate:
                await client.start_workflow(
                    "CascadeJourney",
                    JourneyInput(spec=SPEC, customer_id=f"c{i:08d}"),
                    id=f"raw/{run}/{i}",
                    task_queue=idle,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(1, n + 1)))
        raw_s = time.perf_counter() - began
        return {
            "recipients": n,
            "concurrency": concurrency,
            "broadcast_s": round(broadcast_s, 1),
            "broadcast_per_s": round(n / broadcast_s, 1),
            "raw_loop_s": round(raw_s, 1),
            "raw_per_s": round(n / raw_s, 1),
            "ratio": round(raw_s / broadcast_s, 3),
            "continue_as_new_runs": result.runs,
            "rss_before_mib": round(rss_before, 1),
            "peak_rss_mib": round(rss_peak, 1),
        }
    finally:
        await env.shutdown()
        await db.dispose()
        await _drop(schema)


def main() -> None:
    """Parse the arguments and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("starts")
    s.add_argument("-n", type=int, default=100_000)
    s.add_argument("--concurrency", type=int, default=50)
    g = sub.add_parser("segments")
    g.add_argument("--customers", type=int, default=1_000_000)
    g.add_argument("--events", type=int, default=10_000_000)
    g.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.what == "starts":
        result = asyncio.run(starts(args.n, args.concurrency))
    else:
        result = asyncio.run(segments(args.customers, args.events, args.repeats))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
