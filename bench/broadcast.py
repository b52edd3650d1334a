"""Broadcast throughput against a raw start loop (segment counts: bench/segments.py).

    python bench/broadcast.py starts [-n 100000] [--concurrency 50] [--page-size 500] [--raw N]

`starts`: a BroadcastWorkflow to a segment of n customers on PostgreSQL and the real dev
server, against a raw loop of `client.start_workflow` with the same concurrency, the
same payload and the same start options (search attributes, memo), in the same run (half
of the raw loop before the broadcast, half after, after an uncounted warm-up of the dev
server). Both start CascadeJourney workflows on a task queue no worker polls, so both
sides measure starting (the broadcast's snapshot, paging and bookkeeping included), not
running the cascades. Also the time
spent inside the page activities (and in their bookkeeping write) against outside them
(snapshot, workflow tasks between pages), and the process's peak RSS (it hosts the
broadcast worker) during the broadcast.

It uses its own PostgreSQL schema at CASCADE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) and drops it at the end. Results go to stdout
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import yaml
from sqlalchemy import text
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.audiences import AudienceActivities
from cascade.audiences.broadcasts import start_broadcast
from cascade.audiences.service import load_segments
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from models import search_attributes as sa
from models.broadcasts import BroadcastProgress
from models.journey import JourneyInput, JourneySpec
from models.search_attributes import REGISTERED
from tests.conftest import asyncpg_dsn, binary, quiet_runtime
from workflows.broadcast import BroadcastWorkflow

POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPEC = JourneySpec.model_validate(
    {"name": "bench", "steps": [{"channel": "email", "content": {"subject": "News", "body": "Hello {{ name }}"}}]}
)
SEGMENTS = {"everyone": [{"field": "purchase_count", "op": "gte", "value": 0}]}


# Transient failures retried (reported with the figures): raw loop starts, result polls.
RETRIES = [0, 0]
_RAW_TRIES = 5


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


class _PageClock:
    """Wall time of each page's activity and of its bookkeeping write, to see where time goes."""

    def __init__(self, starter: Any) -> None:
        self.pages: list[float] = []
        self.marks: list[float] = []
        page, mark = starter.start_page, starter._mark

        async def timed_page(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await page(*args, **kwargs)
            finally:
                self.pages.append(time.perf_counter() - began)

        async def timed_mark(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await mark(*args, **kwargs)
            finally:
                self.marks.append(time.perf_counter() - began)

        starter.start_page, starter._mark = timed_page, timed_mark


async def _raw_loop(client: Client, queue: str, ids: range, concurrency: int, run: str) -> float:
    """`client.start_workflow` for each id, `concurrency` at a time, with the options a broadcast sets."""
    gate = asyncio.Semaphore(concurrency)
    spec = SPEC.model_copy(update={"campaign": run})
    memo = {"journey": spec.name, "broadcast": run, "spec_hash": spec.content_hash()}

    async def one(i: int) -> None:
        customer_id = f"c{i:08d}"
        attributes: list[SearchAttributePair[Any]] = [
            SearchAttributePair(sa.CUSTOMER_ID, customer_id),
            SearchAttributePair(sa.JOURNEY, spec.name),
            SearchAttributePair(sa.JOURNEY_STATUS, "running"),
            SearchAttributePair(sa.STEP, 0),
            SearchAttributePair(sa.CHANNEL, spec.steps[0].channel.value),
            SearchAttributePair(sa.CAMPAIGN, run),
        ]
        async with gate:
            for attempt in range(_RAW_TRIES):
                try:
                    await client.start_workflow(
                        "CascadeJourney",
                        JourneyInput(spec=spec, customer_id=customer_id),
                        id=f"raw/{run}/{i}",
                        task_queue=queue,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        search_attributes=TypedSearchAttributes(attributes),
                        memo=memo,
                    )
                    return
                except WorkflowAlreadyStartedError:
                    return  # an earlier attempt got through before its answer was lost
                except RPCError:
                    # A dev server under heavy load sometimes fails a call (even "namespace
                    # not found" while its namespace cache refreshes); the broadcast's page
                    # activities retry such failures, so the raw loop does too, counted.
                    RETRIES[0] += 1
                    if attempt == _RAW_TRIES - 1:
                        raise
                    await asyncio.sleep(1)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    return time.perf_counter() - began


async def _outcome(handle: Any, tries: int = 60) -> BroadcastProgress:
    """The broadcast's result, asking again when a long poll fails on a loaded dev server.

    A 100,000 run lost its figures to one "context deadline exceeded" on the history long
    poll while the broadcast itself was fine: waiting is not what is measured, so retry.
    """
    for attempt in range(tries):
        try:
            return BroadcastProgress.model_validate(await handle.result())
        except RPCError:
            RETRIES[1] += 1
            if attempt == tries - 1:
                raise
            await asyncio.sleep(2)
    raise AssertionError("unreachable")


async def starts(n: int, concurrency: int, page_size: int, raw: int | None = None) -> dict[str, Any]:
    """Broadcast to n customers vs a raw start loop with the same concurrency, same run.

    The raw loop starts `raw` journeys (default n), half before the broadcast and half
    after, so a change of the machine's load during the run weighs on both sides alike;
    a smaller `raw` sample shortens a 100,000 run (rates are compared, not totals).
    """
    raw = n if raw is None else raw
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
        clock = _PageClock(acts.starter)
        run = uuid.uuid4().hex[:6]
        # The dev server's first starts are slower (its caches are cold): warm it up uncounted.
        await _raw_loop(client, idle, range(n + 1, n + 1 + min(500, n // 5)), concurrency, run)
        half = raw // 2
        raw_first_s = await _raw_loop(client, idle, range(1, half + 1), concurrency, run)
        # Said now, so a run cut short still has its same-run baseline.
        print(f"raw first half: {half / raw_first_s:.1f}/s ({half} in {raw_first_s:.1f} s)", file=sys.stderr)
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
                page_size=page_size,
                pages_per_run=50,
            )
            print(f"broadcast started at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
            result = await _outcome(handle)
            broadcast_s = time.perf_counter() - began
        rss_peak = _rss_mib()
        assert result.started == n, result
        raw_second_s = await _raw_loop(client, idle, range(half + 1, raw + 1), concurrency, run)
        raw_s = raw_first_s + raw_second_s
        in_pages = sum(clock.pages)
        return {
            "recipients": n,
            "concurrency": concurrency,
            "page_size": page_size,
            "broadcast_s": round(broadcast_s, 1),
            "broadcast_per_s": round(n / broadcast_s, 1),
            "raw_loop_s": round(raw_s, 1),
            "raw_starts": raw,
            "raw_per_s": round(raw / raw_s, 1),
            "raw_first_half_per_s": round(half / raw_first_s, 1),
            "raw_second_half_per_s": round((raw - half) / raw_second_s, 1),
            "raw_retried": RETRIES[0],
            "result_polls_retried": RETRIES[1],
            "ratio": round((n / broadcast_s) / (raw / raw_s), 3),
            "pages": len(clock.pages),
            "in_page_activities_s": round(in_pages, 1),
            "of_which_marking_s": round(sum(clock.marks), 2),
            "outside_pages_s": round(broadcast_s - in_pages, 1),
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
    s.add_argument("--page-size", type=int, default=500)
    s.add_argument("--raw", type=int, help="raw loop starts (default n), half before and half after")
    args = parser.parse_args()
    result = asyncio.run(starts(args.n, args.concurrency, args.page_size, args.raw))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
