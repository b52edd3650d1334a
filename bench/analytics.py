"""Analytics at scale: funnel, savings, console pages and the forecast backtest on PostgreSQL.

    python bench/analytics.py [--deliveries 1000000] [--shape busy|closed] [--dsn URL]
                              [--repeat 3] [--loads 20] [--keep | --reuse SCHEMA | --load-only]
                              [--schema NAME] [--console-only | --refresh-only]

1. **History**: customers with hidden per-channel habits (usable, delivered, opened,
   clicked, bought -- the rates below) go through the cascades of journeys/winback.yaml and
   journeys/abandoned_cart.yaml in campaigns, step by step as the engine does it (a step is
   sent only to those who did not give the awaited reaction; a step with no usable contact
   leaves no row), until about N deliveries exist. ``--shape busy`` (the default) is a
   growing shop: four monthly campaigns older than 35 days, then two larger ones spread over
   the last 30 days and still going (about half the messages; nothing after the moment of
   generation: later steps, reactions and purchases are not there yet, unfinished runs have
   no outcome). ``--shape closed`` is the first rounds' history, six equal monthly campaigns
   from March 2026, all older than 35 days. Loaded with COPY (asyncpg
   ``copy_records_to_table``) into a schema of its own in ``--dsn``, migrated first, indexes
   built after the load; then ANALYZE.
2. **Queries** (median of --repeat runs, wall time from the Python call): the closed days'
   rollups are built from nothing, then the recent days are rolled up as the background
   refresh (AnalyticsRefresh) does, as of 15 minutes before the newest message -- the
   messages since are what a report reads from the log between two refreshes. Then: the
   funnel by channel, by journey and step, time to react, runs by outcome, cost, savings,
   over all history and over the last 30 days (from midnight, as the console asks, and to
   the minute, whose first day's tail comes from the log); the same read from the log
   alone; and a raw-SQL baseline measured in the same run (one GROUP BY over every
   message), with each query's ratio to it.
3. **Console**: the overview, a journey page and the busiest customer's timeline served by
   uvicorn (the console router on the same database, an API key in X-API-Key; busy: the
   default 30 days), --loads loads each after one warm-up: p50 / p95, the Python CPU time per
   load (server and client, this process) and the load average.
4. **Backtest**: the last finished winback campaign forecast from the history before it, the
   error per figure against what the generated history did.

Prints one JSON document; the README quotes it. Drops its schema unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx
import numpy as np
from fastapi import FastAPI
from sqlalchemy import text

from analytics.forecast_model import ForecastSettings
from analytics.forecast_service import backtest_campaign
from analytics.funnel import (
    FunnelQuery,
    entries,
    funnel,
    reaction_times,
    refresh_reaction_rollup,
    refresh_rollup,
    refresh_runs_rollup,
)
from analytics.money import cost_report, refresh_savings_rollup, savings_report
from analytics.recent import refresh_recent_rollups
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from tests.helpers import serve_app
from webhooks.console import router as console_router
from webhooks.keys import create_key

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
START = datetime(2026, 3, 1, tzinfo=UTC)
CAMPAIGNS = 6
# Hidden habits: (usable, delivered, opened | delivered, clicked | opened, bought | clicked).
RATES: dict[str, tuple[float, float, float, float, float]] = {
    "email": (0.92, 0.97, 0.24, 0.18, 0.20),
    "telegram": (0.35, 0.99, 0.65, 0.22, 0.18),
    "fcm": (0.40, 0.93, 0.12, 0.30, 0.15),
    "sms": (0.75, 0.96, 0.90, 0.08, 0.25),
}
LEVEL = {"delivered": 1, "opened": 2, "clicked": 3, "converted": 4}
PRICES = {"email": 0.001, "telegram": 0.0, "fcm": 0.0, "sms": 0.05}


# Campaign shapes: (days before now it starts, days its runs start over, share of the runs).
# "busy" is a growing shop: four monthly campaigns older than the rollup's 35 days, then
# two large ones spread over the last 30 days, still going (about 45 % of the messages).
SHAPES: dict[str, list[tuple[float, float, float]]] = {
    "busy": [(185, 3, 0.10), (155, 3, 0.11), (125, 3, 0.12), (95, 3, 0.13), (30, 14, 0.25), (15, 14.9, 0.29)],
    # The first rounds' history: six equal monthly campaigns from March, all long closed.
    "closed": [(-1, 3, 1 / 6)] * 6,
}


def campaign_plan(shape: str, now: datetime) -> list[tuple[datetime, float, float]]:
    """(start, spread in days, share of the runs) of each campaign of `shape`."""
    if shape == "closed":
        return [(START + timedelta(days=30 * c), 3.0, share) for c, (_, _, share) in enumerate(SHAPES[shape])]
    return [(now - timedelta(days=back), spread, share) for back, spread, share in SHAPES[shape]]


def generate(
    deliveries_wanted: int, seed: int = 1, *, shape: str = "busy", now: datetime | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of customers, contact points, consents, journey runs, deliveries and events.

    Nothing happens after `now`: a step, reaction or purchase due later is not there yet
    and a run not over by then is still running (no outcome, no end)."""
    rng = np.random.default_rng(seed)
    now = now or datetime.now(UTC)
    plan = campaign_plan(shape, now)
    specs = [load_journey("winback"), load_journey("abandoned_cart")]
    # About 1.6 deliveries per run with these habits.
    runs_total = int(deliveries_wanted / 1.6)
    customers = max(1000, runs_total // 4)
    ids = [f"c{i}" for i in range(customers)]
    usable = {ch: rng.random(customers) < r[0] for ch, r in RATES.items()}
    tables: dict[str, list[tuple[Any, ...]]] = {
        k: [] for k in ("customers", "contacts", "consents", "runs", "deliveries", "events")
    }
    for i, cid in enumerate(ids):
        tables["customers"].append((cid, f"Customer {i}", "UTC", START - timedelta(days=400)))
        for ch in RATES:
            # A contact point on every channel; unusable ones are unsubscribed without consent.
            tables["contacts"].append((cid, ch, f"{cid}@{ch}", "valid" if usable[ch][i] else "unsubscribed", START))
            tables["consents"].append((cid, ch, "marketing", bool(usable[ch][i]), START))
    delivery_id = event_id = run_id = 0
    for c, (campaign_start, spread, share) in enumerate(plan):
        per_campaign = int(runs_total * share / len(specs))
        for spec in specs:
            who = rng.integers(0, customers, per_campaign)
            offsets = rng.integers(0, int(86400 * spread), per_campaign)
            base = np.array([campaign_start + timedelta(seconds=int(o)) for o in offsets], dtype=object)
            wf_ids = [f"{spec.name}-{ids[w]}-{c}" for w in who]
            first = run_id
            for k in range(per_campaign):
                run_id += 1
                tables["runs"].append((wf_ids[k], f"r{run_id}", spec.name, ids[who[k]], f"{spec.name}-{c}", base[k]))
            active = np.ones(per_campaign, dtype=bool)
            at = base.copy()
            outcome = np.array(["exhausted"] * per_campaign, dtype=object)
            for step_no, step in enumerate(spec.steps):
                ch = step.channel.value
                _, dl, op, cl, bu = RATES[ch]
                reach = active & usable[ch][who]
                rnd = rng.random((5, per_campaign))
                delivered = reach & (rnd[0] < dl)
                opened = delivered & (rnd[1] < op)
                clicked = opened & (rnd[2] < cl)
                bought = clicked & (rnd[3] < bu)
                open_delay = rng.exponential(3600 * (2 if ch == "email" else 0.3), per_campaign)
                level = delivered * 1 + opened * 1 + clicked * 1 + bought * 1
                reacted = reach & (level >= LEVEL[step.await_reaction.value])
                for k in np.flatnonzero(reach).tolist():
                    sent_at = at[k]
                    if sent_at > now:
                        continue  # the step is still waiting
                    delivery_id += 1
                    op_at = sent_at + timedelta(seconds=float(open_delay[k])) if opened[k] else None
                    cl_at = op_at + timedelta(seconds=60 + float(rnd[4][k]) * 600) if clicked[k] and op_at else None
                    if op_at is not None and op_at > now:
                        op_at = cl_at = None
                        opened[k] = clicked[k] = bought[k] = False
                    if cl_at is not None and cl_at > now:
                        cl_at = None
                        clicked[k] = bought[k] = False
                    if bought[k] and cl_at is not None and cl_at + timedelta(minutes=30) > now:
                        bought[k] = False
                    status = (
                        "clicked"
                        if clicked[k]
                        else "opened"
                        if opened[k]
                        else "delivered"
                        if delivered[k]
                        else "failed"
                    )
                    tables["deliveries"].append((
                        delivery_id, f"k{delivery_id}", wf_ids[k], f"r{first + k + 1}", spec.name, step_no,
                        ids[who[k]], ch, "marketing", status, PRICES[ch] if status != "failed" else 0.0, "USD",
                        sent_at, sent_at, sent_at + timedelta(seconds=4) if delivered[k] else None, op_at, cl_at,
                        None if delivered[k] else sent_at, 1,
                    ))  # fmt: skip
                    if bought[k] and cl_at is not None:
                        event_id += 1
                        amount = float(round(20 + rnd[4][k] * 80, 2))
                        tables["events"].append(
                            (
                                f"e{event_id}",
                                ids[who[k]],
                                "purchase",
                                "api",
                                json.dumps({"amount": amount}),
                                cl_at + timedelta(minutes=30),
                                cl_at + timedelta(minutes=30),
                            )
                        )
                outcome[reacted] = "reacted"
                active &= ~reacted
                at = at + step.wait
            for k in range(per_campaign):
                row = tables["runs"][first + k]
                ended = row[-1] + timedelta(days=14)
                if ended > now:
                    tables["runs"][first + k] = (*row, None, None, "CascadeJourney")
                else:
                    tables["runs"][first + k] = (*row, ended, str(outcome[k]), "CascadeJourney")
    return tables


COLUMNS = {
    "customers": ("customers", ["id", "name", "timezone", "last_purchase_at"]),
    "contacts": ("contact_points", ["customer_id", "channel", "address", "status", "created_at"]),
    "consents": ("consents", ["customer_id", "channel", "topic", "granted", "changed_at"]),
    "runs": (
        "journey_runs",
        [
            "workflow_id",
            "run_id",
            "journey",
            "customer_id",
            "campaign",
            "started_at",
            "finished_at",
            "outcome",
            "workflow_type",
        ],
    ),
    "deliveries": (
        "deliveries",
        [
            "id",
            "idempotency_key",
            "workflow_id",
            "run_id",
            "journey",
            "step",
            "customer_id",
            "channel",
            "topic",
            "status",
            "cost",
            "currency",
            "created_at",
            "sent_at",
            "delivered_at",
            "opened_at",
            "clicked_at",
            "failed_at",
            "attempts",
        ],
    ),
    "events": (
        "engagement_events",
        ["event_id", "customer_id", "type", "source", "properties", "occurred_at", "received_at"],
    ),
}


async def load(dsn: str, schema: str, tables: dict[str, list[tuple[Any, ...]]]) -> float:
    """COPY every table in; seconds taken (ANALYZE included)."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        # Bulk load: indexes other than primary keys are dropped first and built once after,
        # which is far cheaper than maintaining them row by row.
        indexes = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1 "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            schema,
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{schema}"."{index["indexname"]}"')
        # Default columns (customers' JSON lists, timestamps) are filled by the database.
        for key in ("customers", "contacts", "consents", "runs", "deliveries", "events"):
            table, columns = COLUMNS[key]
            records = tables[key]
            if key == "customers":
                await conn.execute(
                    "ALTER TABLE customers ALTER COLUMN children_ages SET DEFAULT '[]', "
                    "ALTER COLUMN favourite_categories SET DEFAULT '[]', ALTER COLUMN attributes SET DEFAULT '{}', "
                    "ALTER COLUMN created_at SET DEFAULT now(), ALTER COLUMN purchase_count SET DEFAULT 0, "
                    "ALTER COLUMN loyalty_points SET DEFAULT 0"
                )
            await conn.copy_records_to_table(table, records=records, columns=columns, schema_name=schema)
        for index in indexes:
            await conn.execute(index["indexdef"])
        # The loaded tables only: a bare ANALYZE covers every schema of the database (other
        # benches' and tests' too) and took 8 minutes on the shared one.
        for table, _ in COLUMNS.values():
            await conn.execute(f'ANALYZE "{schema}"."{table}"')
    finally:
        await conn.close()
    return time.perf_counter() - started


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def console_loads(db: Database, settings: Settings, paths: list[str], n: int = 20) -> dict[str, dict[str, float]]:
    """p50/p95 milliseconds of each console page, served by uvicorn, after one warm-up."""
    key, _ = await create_key(db, "bench")
    app = FastAPI()
    app.state.db, app.state.settings = db, settings
    app.include_router(console_router)
    out: dict[str, dict[str, float]] = {}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=120) as web:
        for path in paths:
            (await web.get(path)).raise_for_status()
            times = []
            # The server runs in this process: its CPU time (and the client's) per load is a
            # figure the machine's load does not inflate, unlike the wall time.
            cpu = time.process_time()
            for _ in range(n):
                started = time.perf_counter()
                (await web.get(path)).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
            cpu_ms = (time.process_time() - cpu) * 1000 / n
            times.sort()
            out[path] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[int(0.95 * (n - 1))], 1),
                "python_cpu_ms_per_load": round(cpu_ms, 1),
                "load_average": round(os.getloadavg()[0], 1),
            }
    return out


async def console_pages(db: Database, shape: str, loads: int) -> dict[str, dict[str, float]]:
    """The console's overview, winback page and the busiest customer's timeline (:func:`console_loads`)."""
    # Busy: the console's default look-back (30 days), which is the busy month; closed:
    # the look-back must cover the generated months.
    settings = Settings(channel_costs=PRICES, console_days=30 if shape == "busy" else 3650)
    # The customer with the most messages: the longest timeline.
    async with db.engine.connect() as conn:
        busiest = (
            await conn.execute(
                text("SELECT customer_id FROM deliveries GROUP BY customer_id ORDER BY count(*) DESC LIMIT 1")
            )
        ).scalar_one()
    paths = ["/console/", "/console/journeys/winback", f"/console/customers/{busiest}"]
    return await console_loads(db, settings, paths, loads)


async def refreshes(db: Database, more: int = 3) -> dict[str, float]:
    """Seconds of a refresh that rebuilds every recent day (as the first one does), then of
    `more` refreshes 10 minutes apart, which rebuild only the days that changed since the
    previous one (analytics.changes). The first is as of 15 minutes before the newest
    message, so the next ones find what was created after it (later steps of running
    campaigns, their reactions and purchases) as a live shop's refresh would."""
    async with db.engine.begin() as conn:
        newest = (await conn.execute(text("SELECT max(created_at) FROM deliveries"))).scalar_one()
        # No recent rows as far as the refresh knows: it rebuilds them all.
        await conn.execute(text("UPDATE rollup_state SET recent_until = NULL"))
    out: dict[str, float] = {}
    for k in range(more + 1):
        at = newest - timedelta(minutes=15) + timedelta(minutes=10 * k)
        started = time.perf_counter()
        await refresh_recent_rollups(db, PRICES, now=at)
        name = "every_recent_day" if k == 0 else f"only_changed_{k}"
        out[name] = round(time.perf_counter() - started, 1)
        out[f"{name}_load"] = round(os.getloadavg()[0], 1)
        print(name, out[name], file=sys.stderr, flush=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loads", type=int, default=20, help="console page loads per page (0: skip)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", metavar="SCHEMA", help="measure a schema kept by an earlier --keep run")
    parser.add_argument("--load-only", action="store_true", help="generate and load a kept schema, measure nothing")
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="busy",
        help="busy: a growing shop, the last 30 days hold about 45 %% of the messages; closed: all older than 35 days",
    )
    parser.add_argument("--dsn", default=POSTGRES, help="PostgreSQL to load into (a schema of its own)")
    parser.add_argument(
        "--console-only",
        action="store_true",
        help="with --reuse: only the console loads, over the rollups as an earlier run left them",
    )
    parser.add_argument(
        "--refresh-only",
        action="store_true",
        help="with --reuse: a refresh of every recent day, then three 10 minutes apart (only what changed)",
    )
    parser.add_argument("--schema", help="the new schema's name (default: bench_analytics_<shape>_<random>)")
    args = parser.parse_args()

    result: dict[str, Any] = {}
    shape = args.shape
    if args.reuse:
        schema = args.reuse
        db = Database.from_url(args.dsn, schema=schema)
        await migrate(db.engine)  # the indexes of a newer migration, if any
    else:
        started = time.perf_counter()
        tables = generate(args.deliveries, shape=args.shape)
        result["generate_s"] = round(time.perf_counter() - started, 1)
        schema = args.schema or f"bench_analytics_{args.shape}_{uuid.uuid4().hex[:8]}"
        db = Database.from_url(args.dsn, schema=schema)
        await migrate(db.engine)
        result["copy_load_s"] = round(await load(args.dsn, schema, tables), 1)
        del tables
        if args.load_only:
            await db.dispose()
            print(json.dumps({**result, "schema": schema}, indent=2))
            return
    if args.refresh_only:
        try:
            result["refresh_s"] = await refreshes(db)
        finally:
            await db.dispose()
        print(json.dumps(result, indent=2))
        return
    if args.console_only:
        try:
            result["console"] = await console_pages(db, shape, args.loads)
        finally:
            await db.dispose()
        print(json.dumps(result, indent=2))
        return
    try:
        async with db.engine.connect() as conn:
            for table in ("deliveries", "journey_runs", "customers", "engagement_events"):
                result[f"rows_{table}"] = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
        now = datetime.now(UTC)
        everything = FunnelQuery(since=now - timedelta(days=3650))
        # The last 30 days as the console asks them: from midnight (UTC), whole days. And
        # from this very minute 30 days ago: that first day's tail is read from the log.
        month = FunnelQuery(since=(now - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0))
        month_to_the_minute = FunnelQuery(since=now - timedelta(days=30))
        async with db.engine.connect() as conn:
            newest = (await conn.execute(text("SELECT max(created_at) FROM deliveries"))).scalar_one()
            recent_rows = (
                await conn.execute(
                    text("SELECT count(*) FROM deliveries WHERE created_at >= :t"), {"t": now - timedelta(days=35)}
                )
            ).scalar_one()
        result["deliveries_last_35_days"] = recent_rows
        # Baseline in the same run: the cheapest SQL that reads every message once (the load
        # of the machine weighs on it as on the reports; ratios below are against it).
        baseline = text("SELECT channel, count(*), sum(cost) FROM deliveries GROUP BY channel")

        async def scan() -> None:
            async with db.engine.connect() as conn:
                (await conn.execute(baseline)).all()

        result["baseline_scan_s"] = round(await timed(scan, args.repeat), 3)
        # The rollups, built from nothing once (later calls add only the days that closed).
        started = time.perf_counter()
        await refresh_rollup(db, rebuild=True)
        await refresh_reaction_rollup(db, rebuild=True)
        await refresh_runs_rollup(db, rebuild=True)
        await refresh_savings_rollup(db, PRICES, rebuild=True)
        result["rollup_build_s"] = round(time.perf_counter() - started, 1)
        print("rollup build", result["rollup_build_s"], file=sys.stderr, flush=True)
        # The background refresh of the recent days (what the AnalyticsRefresh schedule runs),
        # as of a quarter of an hour before the newest message: the messages since are what
        # each report reads from the log, as it would between two refreshes.
        as_of = newest - timedelta(minutes=15)
        async with db.engine.connect() as conn:
            result["deliveries_since_refresh"] = (
                await conn.execute(text("SELECT count(*) FROM deliveries WHERE created_at >= :t"), {"t": as_of})
            ).scalar_one()
        started = time.perf_counter()
        await refresh_recent_rollups(db, PRICES, now=as_of)
        result["recent_refresh_s"] = round(time.perf_counter() - started, 1)
        print("recent refresh", result["recent_refresh_s"], file=sys.stderr, flush=True)
        log_only: dict[str, Callable[[], Awaitable[Any]]] = {
            "funnel_by_channel": lambda: funnel(db, everything.model_copy(update={"by": ["channel"]}), rollup=False),
            "savings_one_campaign": lambda: savings_report(
                db, FunnelQuery(campaign=f"winback-{CAMPAIGNS - 1}"), PRICES, "USD", rollup=False
            ),
            "savings_all_runs": lambda: savings_report(db, everything, PRICES, "USD", rollup=False),
            "time_to_react": lambda: reaction_times(db, everything, rollup=False),
            "funnel_last_30_days_by_channel": lambda: funnel(
                db, month.model_copy(update={"by": ["channel"]}), rollup=False
            ),
            "time_to_react_last_30_days": lambda: reaction_times(db, month, rollup=False),
            "runs_by_outcome": lambda: entries(db, everything.model_copy(update={"by": ["journey"]}), rollup=False),
        }
        log_only["savings_last_30_days"] = lambda: savings_report(db, month, PRICES, "USD", rollup=False)
        result["log_only_s"] = {}
        for name, call in log_only.items():
            result["log_only_s"][name] = round(await timed(call, 1), 3)
            print("log only", name, result["log_only_s"][name], file=sys.stderr, flush=True)
        queries: dict[str, Callable[[], Awaitable[Any]]] = {
            "funnel_by_channel": lambda: funnel(db, everything.model_copy(update={"by": ["channel"]})),
            "funnel_by_journey_step": lambda: funnel(db, everything.model_copy(update={"by": ["journey", "step"]})),
            "funnel_winback_by_day": lambda: funnel(db, FunnelQuery(journey="winback", by=["day"])),
            "time_to_react": lambda: reaction_times(db, everything),
            "funnel_last_30_days_by_channel": lambda: funnel(db, month.model_copy(update={"by": ["channel"]})),
            "time_to_react_last_30_days": lambda: reaction_times(db, month),
            "savings_last_30_days": lambda: savings_report(db, month, PRICES, "USD"),
            "funnel_last_30_days_to_the_minute": lambda: funnel(
                db, month_to_the_minute.model_copy(update={"by": ["channel"]})
            ),
            "savings_last_30_days_to_the_minute": lambda: savings_report(db, month_to_the_minute, PRICES, "USD"),
            "time_to_react_winback": lambda: reaction_times(db, FunnelQuery(journey="winback")),
            "runs_by_outcome": lambda: entries(db, everything.model_copy(update={"by": ["journey"]})),
            "cost_by_channel": lambda: cost_report(db, everything.model_copy(update={"by": ["channel"]}), "USD"),
            "savings_all_runs": lambda: savings_report(db, everything, PRICES, "USD"),
            "savings_one_campaign": lambda: savings_report(
                db, FunnelQuery(campaign=f"winback-{CAMPAIGNS - 1}"), PRICES, "USD"
            ),
        }
        result["query_median_s"] = {}
        for name, call in queries.items():
            result["query_median_s"][name] = round(await timed(call, args.repeat), 3)
            print(name, result["query_median_s"][name], file=sys.stderr, flush=True)
        result["ratio_to_baseline"] = {
            name: round(seconds / result["baseline_scan_s"], 2) for name, seconds in result["query_median_s"].items()
        }
        savings = await savings_report(db, everything, PRICES, "USD")
        result["savings"] = {
            "actual": round(savings.total.actual, 2),
            "all_usable": round(savings.total.all_usable, 2),
            "saved_vs_all_pct": round(savings.total.saved_vs_all_pct or 0, 1),
            "dearest_usable": round(savings.total.dearest_usable, 2),
            "saved_vs_dearest_pct": round(savings.total.saved_vs_dearest_pct or 0, 1),
        }
        print(json.dumps(result), file=sys.stderr, flush=True)  # what was measured so far
        if args.loads > 0:
            result["console"] = await console_pages(db, shape, args.loads)
        # The last campaign that is over (busy: the last two are still going).
        last_closed = CAMPAIGNS - (3 if shape == "busy" else 1)
        bt = await backtest_campaign(
            db, load_journey("winback"), f"winback-{last_closed}", PRICES, ForecastSettings(seed=0)
        )
        result["backtest"] = {
            "campaign": bt.campaign,
            "audience": bt.audience,
            "inside_band_share": round(bt.result.inside_band_share, 2),
            "mean_rel_error": round(bt.result.mean_rel_error or 0, 3),
            "errors": {
                e.metric: {
                    "forecast": round(e.predicted, 1),
                    "low": round(e.low, 1),
                    "high": round(e.high, 1),
                    "actual": round(e.actual, 1),
                }
                for e in bt.result.errors
            },
        }
    finally:
        await db.dispose()
        if not (args.keep or args.reuse):
            conn = await asyncpg.connect(args.dsn.replace("postgresql://", "postgres://"))
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
