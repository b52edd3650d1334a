"""What the index on engagement_events.received_at (migration 0019) costs an event insert.

    python bench/received_at_index.py --schema SCHEMA [--dsn URL] [--rows 10000] [--bulk 200000]

Two copies of the schema's ``engagement_events`` (``CREATE TABLE ... (LIKE ... INCLUDING
ALL)``: every index), one without ``ix_engagement_events_received_at``, filled with the
table's rows; then, alternating between the two copies, three rounds each of (1) ``--rows``
single-row INSERTs over one connection, as the event path writes events, and (2) one
``INSERT ... SELECT`` of ``--bulk`` generated rows, which leaves out the round trips so the
index's own work shows. Prints the median per row of each and drops both copies. SCHEMA is
a schema bench/analytics.py kept (``--keep`` or ``--load-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

COPY_COLUMNS = (
    "delivery_id, properties, occurred_at, received_at, routed_at, event_id, source, workflow_id, customer_id, "
    "channel, type"
)
TABLES = ("ev_with_index", "ev_without_index")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--bulk", type=int, default=200_000)
    args = parser.parse_args()
    conn = await asyncpg.connect(
        args.dsn.replace("postgresql://", "postgres://"), server_settings={"search_path": args.schema}
    )
    try:
        for table in TABLES:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (LIKE engagement_events INCLUDING ALL)")
            # The existing rows too: an index's insert cost grows with its size.
            await conn.execute(f"INSERT INTO {table} ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM engagement_events")
        index = await conn.fetchval(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 "
            "AND indexdef LIKE '%(received_at)'",
            args.schema,
            TABLES[1],
        )
        await conn.execute(f'DROP INDEX "{index}"')
        single: dict[str, list[float]] = {t: [] for t in TABLES}
        bulk: dict[str, list[float]] = {t: [] for t in TABLES}
        base = datetime.now(UTC)
        for round_no in range(3):
            for table in TABLES if round_no % 2 == 0 else TABLES[::-1]:
                started = time.perf_counter()
                for i in range(args.rows):
                    at = base + timedelta(seconds=i)
                    await conn.execute(
                        f"INSERT INTO {table} (event_id, customer_id, type, source, properties, occurred_at, "
                        "received_at) VALUES ($1, $2, 'opened', 'api', $3::json, $4, $4)",
                        f"x{uuid.uuid4().hex}",
                        f"c{i % 150_000}",
                        json.dumps({}),
                        at,
                    )
                single[table].append((time.perf_counter() - started) / args.rows * 1e6)
                started = time.perf_counter()
                await conn.execute(
                    f"INSERT INTO {table} (event_id, customer_id, type, source, properties, occurred_at, "
                    "received_at, delivery_id) SELECT 'b' || $1::text || '-' || i, 'c' || (i % 150000), 'opened', "
                    "'api', '{}'::json, now() - random() * interval '2 minutes' + i * interval '10 ms', "
                    "now() + i * interval '10 ms', i FROM generate_series(1, $2::int) i",
                    f"{round_no}{table}",
                    args.bulk,
                )
                bulk[table].append((time.perf_counter() - started) / args.bulk * 1e6)
                print(
                    table,
                    f"round {round_no}: single {single[table][-1]:.0f} us, bulk {bulk[table][-1]:.1f} us per row,",
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        print(
            json.dumps(
                {
                    table: {
                        "single_insert_us_median": round(statistics.median(single[table])),
                        "bulk_us_per_row_median": round(statistics.median(bulk[table]), 1),
                    }
                    for table in TABLES
                },
                indent=2,
            )
        )
    finally:
        for table in TABLES:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
