"""Segment counts over a big synthetic base: the compiled query against hand-written SQL.

    python bench/segments.py [--customers 1000000] [--events 10000000] [--repeats 3]
                             [--reuse | --schema NAME [--keep]] [--explain]

Builds a PostgreSQL schema at CASCADE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) with the migrations, then bulk-loads it: one
INSERT ... SELECT FROM generate_series per table (no Python per row), the events into a
table made UNLOGGED (no WAL: the bench's data can be regenerated, and a read is the same
read of the same pages logged or not), with the secondary indexes dropped during
the load and built once after it (1 GB maintenance_work_mem, parallel builds), then
VACUUM ANALYZE. The data: customers (10% without a purchase, last purchases spread over
800 days), an email address for each (10% invalid), a telegram chat for a third,
marketing consent on email for half, and events whose customers are skewed (a few heavy
buyers, a long tail) with purchases carrying an `amount`, email opens and clicks, SMS
clicks and page views over two years.

Then, for every built-in segment and every shipped example (`segments/*.yaml`), it times
the compiled COUNT (what `cascade segments count --exact` runs) and a hand-written SQL
count of the same set, alternately, in the same run, checks both give the same number,
and prints the best and median of each and their ratio (compiled / hand-written;
1.0 = as fast as hand-written). Before that it refreshes every segment's memberships
for everyone at the load's clock (what the `SegmentRefresh` Schedule runs; `refresh_s`,
per segment) and then also times the count `cascade segments count` answers without
`--exact`: the open memberships that refresh recorded (`stored_*`), checked equal to the
hand-written count. `--explain` adds the compiled query's EXPLAIN ANALYZE plan.
`--drift --schema NAME` (a loaded schema) measures the exact count `--exact` answers (the
last refresh's memberships corrected for the customers touched since,
cascade/audiences/corrected.py) against the compiled query: it refreshes `--segments` an
hour after the load's clock, times both one minute later, writes a day of drift
(`--drift-events` events received through the day, one in ten late; `--drift-edits`
profile edits; a previous run's drift is removed first) and times both a day after the
refresh, printing the touched customers and whether the counts are equal.
`--reuse` loads into `bench_segments_<customers>_<events>` once and keeps it for the
next run (which migrates it and skips the load); `--schema NAME --keep` does the same
with a name of your own. Unlogged tables come back empty after a PostgreSQL crash or
restart: the next run then sees no customers and loads again. JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import text

from cascade.audiences.compiler import count_query
from cascade.audiences.membership import refresh_memberships
from cascade.audiences.service import count_members, count_segment, load_segments
from cascade.events.recency import rebuild_event_recency, refresh_event_recency
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from tests.conftest import asyncpg_dsn

POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LIVE = "c.merged_into IS NULL AND c.erased_at IS NULL"
# The loyal rule by hand: 3 purchases in 365 days and the last one within 90 (the defaults).
LOYAL = (
    "c.last_purchase_at IS NOT NULL AND c.last_purchase_at >= :active"
    " AND c.id IN (SELECT customer_id FROM engagement_events WHERE type = 'purchase'"
    " AND occurred_at >= :year GROUP BY customer_id HAVING count(*) >= :loyal_n)"
)
# What someone who knows the schema would write for each segment, over the same data.
RAW: dict[str, str] = {
    "new": f"SELECT count(*) FROM customers c WHERE {LIVE} AND c.created_at >= :new AND NOT ({LOYAL})",
    "loyal": f"SELECT count(*) FROM customers c WHERE {LIVE} AND {LOYAL}",
    "active": f"SELECT count(*) FROM customers c WHERE {LIVE} AND c.last_purchase_at >= :active AND NOT ({LOYAL})",
    "dormant": f"SELECT count(*) FROM customers c WHERE {LIVE}"
    " AND c.last_purchase_at < :active AND c.last_purchase_at >= :churn",
    "churned": f"SELECT count(*) FROM customers c WHERE {LIVE} AND c.last_purchase_at < :churn",
    "big_spenders": f"SELECT count(*) FROM customers c JOIN (SELECT customer_id FROM engagement_events"
    " WHERE type = 'purchase' AND occurred_at >= :year GROUP BY customer_id"
    " HAVING sum(amount) > 300) s ON s.customer_id = c.id"
    f" WHERE {LIVE} AND EXISTS (SELECT 1 FROM contact_points p JOIN consents k ON k.customer_id = p.customer_id"
    " AND k.channel = p.channel AND k.topic = 'marketing' AND k.granted"
    " WHERE p.customer_id = c.id AND p.channel IN ('email', 'telegram', 'whatsapp') AND p.status = 'valid')",
    "email_engaged": f"SELECT count(*) FROM customers c WHERE {LIVE}"
    " AND EXISTS (SELECT 1 FROM engagement_events e WHERE e.customer_id = c.id AND e.type = 'opened'"
    " AND e.channel = 'email' AND e.occurred_at >= :month)"
    " AND NOT EXISTS (SELECT 1 FROM engagement_events e WHERE e.customer_id = c.id AND e.type = 'clicked'"
    " AND e.channel = 'sms') AND NOT (c.last_purchase_at IS NOT NULL AND c.last_purchase_at < :churn)",
    "lapsed_buyers": f"SELECT count(*) FROM customers c JOIN (SELECT customer_id FROM engagement_events"
    " WHERE type = 'purchase' AND occurred_at >= :year GROUP BY customer_id HAVING count(*) >= 2) s"
    f" ON s.customer_id = c.id WHERE {LIVE} AND NOT EXISTS (SELECT 1 FROM engagement_events e"
    " WHERE e.customer_id = c.id AND e.type = 'purchase' AND e.occurred_at >= :quarter)",
}

# The same sets by hand over event_recency (migration 0016: each customer's 3 latest events
# of a type), for the segments whose compiled count reads it: what someone who knows that
# table would write.
RAW_RECENCY: dict[str, str] = {
    "lapsed_buyers": f"SELECT count(*) FROM customers c WHERE {LIVE}"
    " AND EXISTS (SELECT 1 FROM event_recency r WHERE r.customer_id = c.id AND r.type = 'purchase'"
    " AND r.channel = '' AND r.rank = 2 AND r.occurred_at >= :year)"
    " AND NOT EXISTS (SELECT 1 FROM event_recency r WHERE r.customer_id = c.id AND r.type = 'purchase'"
    " AND r.channel = '' AND r.rank = 1 AND r.occurred_at >= :quarter)",
}

CUSTOMERS_SQL = """
INSERT INTO customers (id, name, timezone, children_ages, favourite_categories, purchase_count,
                       loyalty_points, attributes, created_at, last_purchase_at)
SELECT 'c' || lpad(g::text, 8, '0'), 'Ann', 'UTC', '[]', '[]', g % 7, 0, '{}',
       CAST(:now AS timestamptz) - (g % 1000) * interval '1 day',
       CASE WHEN g % 10 = 0 THEN NULL ELSE CAST(:now AS timestamptz) - ((g * 37) % 800) * interval '1 day' END
FROM generate_series(1, CAST(:n AS integer)) AS g
"""
CONTACTS_SQL = """
INSERT INTO contact_points (customer_id, channel, address, status, created_at)
SELECT 'c' || lpad(g::text, 8, '0'), 'email', 'c' || g || '@example.com',
       CASE WHEN g % 10 = 3 THEN 'invalid' ELSE 'valid' END, CAST(:now AS timestamptz)
FROM generate_series(1, CAST(:n AS integer)) AS g
UNION ALL
SELECT 'c' || lpad(g::text, 8, '0'), 'telegram', g::text, 'valid', CAST(:now AS timestamptz)
FROM generate_series(3, CAST(:n AS integer), 3) AS g
"""
CONSENTS_SQL = """
INSERT INTO consents (customer_id, channel, topic, granted, changed_at)
SELECT 'c' || lpad(g::text, 8, '0'), 'email', 'marketing', g % 4 <> 1, CAST(:now AS timestamptz)
FROM generate_series(1, CAST(:n AS integer), 2) AS g
"""
# The customer (skewed towards low ids: a few heavy buyers, a long tail), channel, type and
# amount of a generated event, shared by the load and the drift (`r` draws them).
_EVENT_MIX = """
INSERT INTO engagement_events (customer_id, channel, type, source, properties, occurred_at, received_at)
SELECT 'c' || lpad((1 + floor(CAST(:customers AS integer) * r.a * r.a))::int::text, 8, '0'),
       CASE WHEN r.k < 0.45 THEN 'email' WHEN r.k < 0.50 THEN 'sms' END,
       CASE WHEN r.k < 0.30 THEN 'opened' WHEN r.k < 0.50 THEN 'clicked'
            WHEN r.k < 0.65 THEN 'purchase' ELSE 'page_viewed' END,
       :source,
       CASE WHEN r.k >= 0.50 AND r.k < 0.65 THEN json_build_object('amount', floor(r.m * 200))
            ELSE CAST('{}' AS json) END,
"""
# random() after setseed() in one statement of one backend: the same data every run.
# Squaring the uniform draw skews events towards low ids: a few heavy buyers, a long tail.
EVENTS_SQL = (
    _EVENT_MIX.replace(":source", "'bench'")
    + """
       CAST(:now AS timestamptz) - r.d * interval '730 days', CAST(:now AS timestamptz)
FROM (SELECT random() AS a, random() AS k, random() AS m, random() AS d
      FROM generate_series(1, CAST(:n AS bigint))) AS r
"""
)


async def _indexes(conn: Any, table: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the table's indexes that no constraint owns."""
    rows = await conn.execute(
        text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema()"
            " AND i.tablename = :t AND NOT EXISTS (SELECT 1 FROM pg_constraint k"
            " WHERE k.conname = i.indexname AND k.connamespace = to_regnamespace(current_schema()))"
        ),
        {"t": table},
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def _bulk(db: Database, schema: str, table: str, sql: str, params: dict[str, Any]) -> float:
    """One INSERT ... SELECT into the (unlogged) table with its secondary indexes dropped, then rebuilt."""
    began = time.perf_counter()
    async with db.engine.begin() as conn:
        saved = await _indexes(conn, table)
        for name, _ in saved:
            await conn.execute(text(f'DROP INDEX "{name}"'))
        if table == "engagement_events":
            # No WAL for the 10M rows: the load is regenerated, never recovered. (Only the
            # events: the customers' tables are tied by foreign keys to logged ones.)
            await conn.execute(text(f'ALTER TABLE "{table}" SET UNLOGGED'))
        await conn.execute(text("SELECT setseed(0.42)"))
        await conn.execute(text(sql), params)
        # One sort per index in memory, with the parallel workers the server allows.
        await conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        await conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 2"))
        for _, create in saved:
            await conn.execute(text(create))
    await _vacuum(schema, table)
    return round(time.perf_counter() - began, 1)


async def _vacuum(schema: str, table: str, tries: int = 30) -> float:
    """VACUUM ANALYZE until the visibility map covers the table; the share of pages all-visible.

    VACUUM (outside a transaction) sets the visibility map as autovacuum would in a while:
    without it no scan is index-only and every count reads the table. It can only mark
    rows no open snapshot might still miss, so on a database shared with other work (a
    long transaction of someone else's) the first pass may mark nothing: try again.
    """
    pg = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    share = 0.0
    try:
        for _ in range(tries):
            await pg.execute(f'VACUUM ANALYZE "{schema}"."{table}"')
            row = await pg.fetchrow(
                "SELECT relallvisible, relpages FROM pg_class WHERE oid = to_regclass($1)", f'"{schema}"."{table}"'
            )
            share = 1.0 if not row["relpages"] else row["relallvisible"] / row["relpages"]
            if share >= 0.99:
                break
            await asyncio.sleep(10)
    finally:
        await pg.close()
    if share < 0.99:
        print(f"{table}: only {share:.0%} of pages all-visible; counts will read the table", file=sys.stderr)
    return share


async def _exists(schema: str) -> bool:
    """Whether the schema holds a loaded base (an unlogged table is empty after a crash)."""
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'customers'",
            schema,
        )
        if not found:
            return False
        return bool(await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{schema}".customers)'))
    finally:
        await conn.close()


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def load(db: Database, schema: str, customers: int, events: int, now: datetime) -> dict[str, float]:
    """Bulk-load the synthetic base; seconds per table."""
    params = {"n": customers, "now": now}
    out = {"customers_s": await _bulk(db, schema, "customers", CUSTOMERS_SQL, params)}
    out["contact_points_s"] = await _bulk(db, schema, "contact_points", CONTACTS_SQL, params)
    out["consents_s"] = await _bulk(db, schema, "consents", CONSENTS_SQL, params)
    sizes = {"n": events, "customers": customers, "now": now}
    out["events_s"] = await _bulk(db, schema, "engagement_events", EVENTS_SQL, sizes)
    # The bulk load bypasses the event path that keeps event_recency: derive it once.
    began = time.perf_counter()
    async with db.engine.begin() as conn:
        await conn.execute(text("SET LOCAL work_mem = '256MB'"))
        await rebuild_event_recency(conn)
    await _vacuum(schema, "event_recency")
    out["event_recency_s"] = round(time.perf_counter() - began, 1)
    return out


def _raw_params(settings: Settings, now: datetime) -> dict[str, Any]:
    day = timedelta(days=1)
    return {
        "new": now - settings.segment_new_days * day,
        "active": now - settings.segment_active_days * day,
        "churn": now - settings.segment_churned_days * day,
        "year": now - 365 * day,
        "quarter": now - 90 * day,
        "month": now - 30 * day,
        "loyal_n": settings.segment_loyal_purchases,
    }


async def _time(conn: Any, query: Any, params: dict[str, Any] | None = None) -> tuple[int, float]:
    began = time.perf_counter()
    count = (await conn.execute(query, params or {})).scalar_one()
    return int(count), time.perf_counter() - began


async def run(
    customers: int, events: int, repeats: int, schema: str | None, keep: bool, explain: bool
) -> dict[str, Any]:
    """Load (unless the schema is there), then time compiled against hand-written counts."""
    schema = schema or f"bench_seg_{uuid.uuid4().hex[:6]}"
    settings = Settings(database_url=POSTGRES_URL, database_schema=schema)
    if settings.segment_loyal_window_days != 365:
        raise SystemExit("the hand-written loyal count assumes CASCADE_SEGMENT_LOYAL_WINDOW_DAYS=365")
    db = Database.from_settings(settings)
    # The machine is shared: the load average says what the figures were measured under.
    out: dict[str, Any] = {"schema": schema, "loadavg_start": os.getloadavg()}
    try:
        # The load's own clock: windows are measured from it, so a reused schema stays comparable.
        now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        loaded = await _exists(schema)
        began = time.perf_counter()
        await migrate(db.engine)
        # On a reused base, the migrations it had not run yet (0016 derives event_recency).
        out["migrate_s"] = round(time.perf_counter() - began, 1)
        if not loaded:
            out["load"] = await load(db, schema, customers, events, now)
            out["load_s"] = round(sum(out["load"].values()), 1)
        else:
            # A reused base: make sure its visibility map is whole (a load interrupted, or
            # vacuumed while another transaction was open).
            for table in ("customers", "contact_points", "consents", "engagement_events", "event_recency"):
                await _vacuum(schema, table)
        async with db.engine.connect() as conn:
            out["customers"] = (await conn.execute(text("SELECT count(*) FROM customers"))).scalar_one()
            out["events"] = (await conn.execute(text("SELECT count(*) FROM engagement_events"))).scalar_one()
        catalog = load_segments(settings)
        params = _raw_params(settings, now)
        results: dict[str, Any] = {}
        refreshed: dict[str, float] = {}
        for name in catalog.names():
            # The Schedule's work, one segment at a time: the count without --exact reads what it records.
            began = time.perf_counter()
            await refresh_memberships(db, catalog, now=now, segments=[name])
            refreshed[name] = round(time.perf_counter() - began, 2)
            print(name, "refresh_s", refreshed[name], file=sys.stderr, flush=True)
        # As autovacuum would in a while: the stored counts' index-only scans need the
        # visibility map of the rows the refresh just wrote.
        await _vacuum(schema, "segment_memberships")
        for name in catalog.names():
            if name not in RAW:
                continue
            compiled = count_query(catalog, name, dialect="postgresql", now=now)
            raw = text(RAW[name])
            mine: list[float] = []
            theirs: list[float] = []
            by_hand_recency: list[float] = []
            stored_s: list[float] = []
            stored_members: set[int] = set()
            async with db.engine.connect() as conn:
                for _ in range(repeats):
                    began = time.perf_counter()
                    stored = await count_segment(db, catalog, name)
                    stored_s.append(time.perf_counter() - began)
                    stored_members.add(stored.members if not stored.exact else -1)
                    members, seconds = await _time(conn, compiled)
                    mine.append(seconds)
                    expected, seconds = await _time(conn, raw, params)
                    theirs.append(seconds)
                    if name in RAW_RECENCY:
                        again, seconds = await _time(conn, text(RAW_RECENCY[name]), params)
                        by_hand_recency.append(seconds)
                        if again != expected:
                            print(f"{name}: event_recency by hand gives {again}", file=sys.stderr)
                entry: dict[str, Any] = {"members": members, "raw_members": expected}
                stored_s.sort()
                entry.update(
                    refresh_s=refreshed[name],
                    stored_members=sorted(stored_members),
                    stored_best_s=round(stored_s[0], 4),
                    stored_median_s=round(stored_s[len(stored_s) // 2], 4),
                )
                if by_hand_recency:
                    by_hand_recency.sort()
                    entry["raw_recency_median_s"] = round(by_hand_recency[len(by_hand_recency) // 2], 3)
                if explain:
                    sql = compiled.compile(db.engine, compile_kwargs={"literal_binds": True})
                    entry["plan"] = [r[0] for r in await conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"))]
            mine.sort()
            theirs.sort()
            entry.update(
                best_s=round(mine[0], 3),
                median_s=round(mine[len(mine) // 2], 3),
                raw_best_s=round(theirs[0], 3),
                raw_median_s=round(theirs[len(theirs) // 2], 3),
                ratio=round(mine[len(mine) // 2] / theirs[len(theirs) // 2], 2),
            )
            if members != expected or entry["stored_members"] != [expected]:
                entry["mismatch"] = True
            results[name] = entry
            print(name, {k: v for k, v in entry.items() if k != "plan"}, file=sys.stderr, flush=True)
        out["segments"] = results
        out["loadavg_end"] = os.getloadavg()
        return out
    finally:
        await db.dispose()
        if not keep:
            await _drop(schema)


# A day of traffic after the refresh (`--drift`): events received through the day, most
# occurring when received, one in ten late (it happened up to 100 days earlier), with the
# load's skew and mix of types. Tagged by `source` so the next run removes them first.
DRIFT_SQL = (
    _EVENT_MIX.replace(":source", "'bench-drift'")
    + """
       CAST(:start AS timestamptz) + r.d * interval '1 day'
           - CASE WHEN r.late < 0.1 THEN r.late * interval '1000 days' ELSE interval '0' END,
       CAST(:start AS timestamptz) + r.d * interval '1 day'
FROM (SELECT random() AS a, random() AS k, random() AS m, random() AS d, random() AS late
      FROM generate_series(1, CAST(:n AS bigint))) AS r
RETURNING customer_id
"""
)
# Profiles edited during that day (an `updated_at` stamp is all a corrected count looks at).
EDITS_SQL = """
UPDATE customers SET updated_at = CAST(:start AS timestamptz) + (g % 86400) * interval '1 second'
FROM generate_series(7, CAST(:customers AS integer), CAST(:step AS integer)) AS g
WHERE customers.id = 'c' || lpad(g::text, 8, '0')
"""


async def _undo_drift(db: Database) -> int:
    """Remove a previous run's drift (its events, their event_recency rows, the edit stamps)."""
    async with db.engine.begin() as conn:
        gone = [
            r[0]
            for r in await conn.execute(
                text("DELETE FROM engagement_events WHERE source = 'bench-drift' RETURNING customer_id")
            )
        ]
        await conn.execute(text("UPDATE customers SET updated_at = NULL WHERE updated_at IS NOT NULL"))
    await rebuild_recency_of(db, gone)
    return len(gone)


async def rebuild_recency_of(db: Database, customer_ids: list[str]) -> None:
    """event_recency of these customers from their events (the event path's own maintenance),
    2,000 customers per transaction (it takes an advisory lock per customer)."""
    ids = sorted(set(customer_ids))
    for start in range(0, len(ids), 2000):
        async with db.engine.begin() as conn:
            await refresh_event_recency(conn, ids[start : start + 2000])


async def _time_counts(
    db: Database, catalog: Any, names: list[str], now: datetime, repeats: int, settings: Settings
) -> dict[str, Any]:
    """Per segment: the corrected exact count (`count_segment(exact=True)`, what
    `cascade segments count --exact` runs) against the compiled query, alternately, at `now`."""
    found: dict[str, Any] = {}
    for name in names:
        corrected_s: list[float] = []
        compiled_s: list[float] = []
        answers: set[tuple[int, str, int | None]] = set()
        compiled_members: set[int] = set()
        for _ in range(repeats):
            began = time.perf_counter()
            got = await count_segment(db, catalog, name, exact=True, now=now, settings=settings)
            corrected_s.append(time.perf_counter() - began)
            answers.add((got.members, got.method, got.touched))
            began = time.perf_counter()
            compiled_members.add(await count_members(db, catalog, name, now=now))
            compiled_s.append(time.perf_counter() - began)
        corrected_s.sort()
        compiled_s.sort()
        entry = {
            "members": sorted(a[0] for a in answers),
            "method": sorted({a[1] for a in answers}),
            "touched": sorted({a[2] or 0 for a in answers}),
            "compiled_members": sorted(compiled_members),
            "corrected_best_s": round(corrected_s[0], 3),
            "corrected_median_s": round(corrected_s[len(corrected_s) // 2], 3),
            "compiled_best_s": round(compiled_s[0], 3),
            "compiled_median_s": round(compiled_s[len(compiled_s) // 2], 3),
            "equal": sorted(a[0] for a in answers) == sorted(compiled_members) and len(compiled_members) == 1,
            "loadavg": os.getloadavg(),
        }
        found[name] = entry
        print(name, now.isoformat(), entry, file=sys.stderr, flush=True)
    return found


async def run_drift(schema: str, names: list[str], repeats: int, events: int, edits: int) -> dict[str, Any]:
    """The corrected exact count right after a refresh and after a day of drift, against the
    compiled query, on a loaded schema (kept)."""
    settings = Settings(database_url=POSTGRES_URL, database_schema=schema)
    db = Database.from_settings(settings)
    out: dict[str, Any] = {"schema": schema, "loadavg_start": os.getloadavg()}
    try:
        if not await _exists(schema):
            raise SystemExit(f"schema {schema} is not loaded: run the bench with --schema {schema} --keep first")
        await migrate(db.engine)
        load_clock = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        # An hour after the load: the loaded rows (received at the load's clock) are older
        # than the refresh minus corrected.CHANGE_MARGIN, as a shop's history would be.
        refreshed = load_clock + timedelta(hours=1)
        out["undone_drift_events"] = await _undo_drift(db)
        async with db.engine.connect() as conn:
            customers = int((await conn.execute(text("SELECT count(*) FROM customers"))).scalar_one())
        catalog = load_segments(settings)
        out["refresh_s"] = {}
        for name in names:
            began = time.perf_counter()
            await refresh_memberships(db, catalog, now=refreshed, segments=[name])
            out["refresh_s"][name] = round(time.perf_counter() - began, 1)
            print(name, "refresh_s", out["refresh_s"][name], file=sys.stderr, flush=True)
        # Two tries at most: a few pages the refresh just wrote may stay short of all-visible.
        await _vacuum(schema, "segment_memberships", tries=2)
        out["after_refresh"] = await _time_counts(
            db, catalog, names, refreshed + timedelta(minutes=1), repeats, settings
        )
        began = time.perf_counter()
        params = {"customers": customers, "start": refreshed, "n": events, "step": max(1, customers // max(1, edits))}
        async with db.engine.begin() as conn:
            await conn.execute(text("SELECT setseed(0.13)"))
            touched = [r[0] for r in await conn.execute(text(DRIFT_SQL), params)]
            await conn.execute(text(EDITS_SQL), params)
        await rebuild_recency_of(db, touched)
        out["drift_write_s"] = round(time.perf_counter() - began, 1)
        for table in ("engagement_events", "event_recency", "customers"):
            await _vacuum(schema, table, tries=2)
        out["drift"] = {"events": events, "event_customers": len(set(touched)), "profile_edits": edits}
        out["after_a_day"] = await _time_counts(db, catalog, names, refreshed + timedelta(days=1), repeats, settings)
        out["loadavg_end"] = os.getloadavg()
        return out
    finally:
        await db.dispose()


def main() -> None:
    """Parse the arguments and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--schema", help="reuse this schema if it is loaded (else load it)")
    parser.add_argument("--keep", action="store_true", help="keep the schema at the end")
    parser.add_argument(
        "--reuse", action="store_true", help="load into bench_segments_<customers>_<events> once, keep it, reuse it"
    )
    parser.add_argument("--explain", action="store_true", help="add EXPLAIN ANALYZE of each compiled count")
    parser.add_argument(
        "--drift",
        action="store_true",
        help="on a loaded --schema: refresh, then time the corrected exact count against the compiled "
        "query right after the refresh and after a day of drift (--drift-events, --drift-edits)",
    )
    parser.add_argument("--drift-events", type=int, default=50_000)
    parser.add_argument("--drift-edits", type=int, default=1_000)
    parser.add_argument(
        "--segments", default="big_spenders,lapsed_buyers,email_engaged", help="with --drift: which segments"
    )
    args = parser.parse_args()
    if args.drift:
        if not args.schema:
            raise SystemExit("--drift needs --schema (a loaded one; it is kept)")
        names = [n for n in args.segments.split(",") if n]
        drift = run_drift(args.schema, names, args.repeats, args.drift_events, args.drift_edits)
        print(json.dumps(asyncio.run(drift), indent=1))
        return
    if args.reuse:
        args.schema = args.schema or f"bench_segments_{args.customers}_{args.events}"
        args.keep = True
    result = asyncio.run(run(args.customers, args.events, args.repeats, args.schema, args.keep, args.explain))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
