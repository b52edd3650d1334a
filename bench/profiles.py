"""Profile storage: bulk import rate and the per-step eligibility check, with baselines.

    python bench/profiles.py [-n 100000] [--checks 500] [--no-postgres]

1. Import: N generated customers (email + phone + custom attributes) through
   `cascade.profiles.importer.import_profiles` (validation, normalisation, one transaction), on
   SQLite and on PostgreSQL at 127.0.0.1:5432/test when it answers. Each import runs in
   a child process so its peak memory (max RSS) is its own. Baseline in the same run:
   the same rows written by bare multi-row INSERTs with no validation.
2. Eligibility: `check_contact` (one query: customer + contact point + consent) run by a
   real worker against the dev server, p50/p99 of each round trip, against a no-op
   activity through the same server in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import insert
from temporalio import activity
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.activity_loop import ActivityLoop
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.profiles.importer import import_profiles
from models.activities import CheckContactInput
from models.tables import ContactPoint, Customer
from tests.conftest import binary, quiet_runtime
from worker import build_worker

POSTGRES = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CITIES = ["Moscow", "Kazan", "Omsk", "Riga", "Berlin", "London"]


def write_csv(path: Path, n: int) -> None:
    """N plausible customers: every one with an email, two in three with a valid phone."""
    with path.open("w") as out:
        out.write("id,name,email,phone,city,marketing_consent,children_ages,attr.segment,ext.crm\n")
        for i in range(n):
            phone = f"+7912{i:07d}" if i % 3 else ""
            kids = "3;7" if i % 5 == 0 else ""
            out.write(f"b{i},Name {i},user{i}@example.com,{phone},{CITIES[i % 6]},yes,{kids},s{i % 10},X{i}\n")


async def _database(url: str) -> tuple[Database, str | None]:
    if not url.startswith("postgresql"):
        return Database.from_url(url), None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    return Database.from_url(url, schema=schema), schema


async def _drop(url: str, schema: str | None) -> None:
    if schema:
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def child_import(url: str, csv_path: Path, mode: str) -> dict[str, float]:
    """Run one import in this (child) process; report its rate and this process's peak memory."""
    db, schema = await _database(url)
    try:
        await migrate(db.engine)
        rows = sum(1 for _ in csv_path.open()) - 1
        started = time.perf_counter()
        if mode == "cascade":
            report = await import_profiles(db, csv_path)
            assert report.created == rows, report
        else:
            await _bare_insert(db, csv_path)
        seconds = time.perf_counter() - started
    finally:
        await db.dispose()
        await _drop(url, schema)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "peak_mb": peak_mb}


async def _bare_insert(db: Database, csv_path: Path) -> None:
    """The floor: the same customers and contact points, no parsing beyond split(',')."""
    lines = csv_path.read_text().splitlines()[1:]  # noqa: ASYNC240 (a bench, read before timing matters)
    async with db.session() as session:
        connection = await session.connection()
        for start in range(0, len(lines), 2000):
            customers, points = [], []
            for line in lines[start : start + 2000]:
                cid, name, email, phone, city, *_ = line.split(",")
                customers.append(
                    {
                        "id": cid,
                        "name": name,
                        "city": city,
                        "timezone": "UTC",
                        "children_ages": [],
                        "favourite_categories": [],
                        "attributes": {},
                        "purchase_count": 0,
                        "loyalty_points": 0,
                    }
                )
                points.append({"customer_id": cid, "channel": "email", "address": email, "status": "valid"})
                if phone:
                    points.append({"customer_id": cid, "channel": "sms", "address": phone, "status": "valid"})
            await connection.execute(insert(Customer), customers)
            await connection.execute(insert(ContactPoint), points)


def run_child(url: str, csv_path: Path, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--url", url, "--csv", str(csv_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@activity.defn(name="noop")
async def noop(arg: object) -> None:
    """The raw-Temporal floor: an activity that does nothing."""


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def eligibility(checks: int, tmp: Path) -> dict[str, dict[str, float]]:
    settings = Settings(database_url=f"sqlite:///{tmp / 'elig.db'}", task_queue="bench-elig")
    db = Database.from_settings(settings)
    await migrate(db.engine)
    csv_path = tmp / "elig.csv"
    write_csv(csv_path, 1000)
    await import_profiles(db, csv_path)
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        runtime=quiet_runtime(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
    )
    results: dict[str, dict[str, float]] = {}
    try:
        worker = build_worker(env.client, settings, db)
        # The loop runs on a worker of its own, and each activity on another queue, so
        # both sides take the same path through the server (no eager dispatch).
        loop = Worker(env.client, task_queue="bench-raw", workflows=[ActivityLoop])
        raw = Worker(env.client, task_queue="bench-noop", activities=[noop])
        async with worker, loop, raw:
            for name, queue, activity_name, arg in (
                ("raw Temporal (no-op activity)", "bench-noop", "noop", None),
                (
                    "check_contact",
                    settings.task_queue,
                    "check_contact",
                    CheckContactInput(customer_id="b7", channel="sms"),
                ),
            ):
                # A short warm-up, then the measured loop.
                # The loop runs on the raw worker either way; only the activity's queue differs.
                for count in (20, checks):  # a short warm-up, then the measured loop
                    trips = await env.client.execute_workflow(
                        ActivityLoop.run,
                        args=[activity_name, arg, queue, count],
                        id=f"loop-{uuid.uuid4()}",
                        task_queue="bench-raw",
                    )
                results[name] = {"p50_ms": _pct(trips, 50), "p99_ms": _pct(trips, 99)}
        # The activity's own cost, without the server round trip.
        from activities.journey import JourneyActivities
        from channels.registry import build_channels

        acts = JourneyActivities(db, build_channels(settings, db), settings)
        direct = []
        for i in range(checks):
            started = time.perf_counter()
            await acts.check_contact(CheckContactInput(customer_id=f"b{i % 1000}", channel="sms"))
            direct.append((time.perf_counter() - started) * 1000)
        results["check_contact query alone"] = {"p50_ms": _pct(direct, 50), "p99_ms": _pct(direct, 99)}
    finally:
        await env.shutdown()
        await db.dispose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="customers to import")
    parser.add_argument("--checks", type=int, default=500, help="eligibility checks to time")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", choices=["cascade", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(await child_import(args.url, args.csv, args.child)))
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = tmp / "customers.csv"
        write_csv(csv_path, args.n)
        targets = [("SQLite", f"sqlite:///{tmp / 'import.db'}")]
        if not args.no_postgres:
            try:
                conn = await asyncpg.connect(POSTGRES, timeout=3)
                await conn.close()
                targets.append(("PostgreSQL", POSTGRES))
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                print(f"PostgreSQL skipped: {exc}")
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        print(f"Import of {args.n:,} customers (email + phone for 2 in 3), one transaction each")
        print(f"{'database':<11} {'Cascade rows/s':>15} {'peak MB':>8} {'bare INSERT rows/s':>19} {'ratio':>6}")
        for label, url in targets:
            (tmp / "import.db").unlink(missing_ok=True)
            ours = run_child(url, csv_path, "cascade")
            (tmp / "import.db").unlink(missing_ok=True)
            bare = run_child(url, csv_path, "bare")
            print(
                f"{label:<11} {ours['rate']:>15,.0f} {ours['peak_mb']:>8.0f} {bare['rate']:>19,.0f}"
                f" {ours['rate'] / bare['rate']:>6.2f}"
            )
        print(f"\nPer-step eligibility check, {args.checks} sequential round trips through the dev server")
        results = await eligibility(args.checks, tmp)
        floor = results["raw Temporal (no-op activity)"]
        for name, r in results.items():
            print(
                f"{name:<32} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                f"   (x{r['p50_ms'] / floor['p50_ms']:.2f} / x{r['p99_ms'] / floor['p99_ms']:.2f} of raw)"
            )


if __name__ == "__main__":
    asyncio.run(main())
