"""event_recency stays exactly what the events say, through every writer of events, and the
counts that read it select the same customers as counting the events (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import insert, select

from cascade.audiences.compiler import CUSTOMERS, EVENTS, RECENCY
from cascade.audiences.service import count_members, load_segments
from cascade.events.ingest import record_app_events
from cascade.events.recency import rebuild_event_recency
from cascade.events.store import insert_event
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.profiles.privacy import erase_customer, pseudonym
from cascade.profiles.service import merge_customers
from models.events import AppEvent
from models.tables import RECENCY_DEPTH

NOW = datetime.now(UTC).replace(microsecond=0)
PEOPLE = ["ann", "bob", "cat", "dan", "eve"]


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


async def _people(db: Database) -> None:
    async with db.engine.begin() as conn:
        for cid in PEOPLE:
            await conn.execute(
                insert(CUSTOMERS).values(
                    id=cid,
                    name=cid,
                    timezone="UTC",
                    children_ages=[],
                    favourite_categories=[],
                    purchase_count=0,
                    loyalty_points=0,
                    attributes={},
                    created_at=ago(1000),
                )
            )


async def _event(
    db: Database, event_id: str, customer: str, kind: str, days: float, channel: str | None = None
) -> bool:
    async with db.session() as session:
        return await insert_event(
            db, session, type=kind, occurred_at=ago(days), event_id=event_id, customer_id=customer, channel=channel
        )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _expected(db: Database) -> set[tuple[str, str, str, int, datetime]]:
    """The rows computed in Python from every event: the n latest per customer and type,
    for all channels ("") and for each channel."""
    async with db.engine.connect() as conn:
        events = list(
            await conn.execute(
                select(EVENTS.c.id, EVENTS.c.customer_id, EVENTS.c.type, EVENTS.c.channel, EVENTS.c.occurred_at)
            )
        )
    groups: defaultdict[tuple[str, str, str], list[tuple[datetime, int]]] = defaultdict(list)
    for id_, customer, kind, channel, at in events:
        if customer is None:
            continue
        groups[(customer, kind, "")].append((_aware(at), id_))
        if channel is not None:
            groups[(customer, kind, channel)].append((_aware(at), id_))
    rows = set()
    for (customer, kind, channel), times in groups.items():
        for rank, (at, _) in enumerate(sorted(times, reverse=True)[:RECENCY_DEPTH], start=1):
            rows.add((customer, kind, channel, rank, at))
    return rows


async def _stored(db: Database) -> set[tuple[str, str, str, int, datetime]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(RECENCY))
        return {(r.customer_id, r.type, r.channel, r.rank, _aware(r.occurred_at)) for r in rows}


async def test_insert_event_keeps_the_latest_three_per_type_late_events_included(any_db: Database) -> None:
    await _people(any_db)
    assert await _event(any_db, "p1", "ann", "purchase", 10)
    assert await _event(any_db, "p2", "ann", "purchase", 5)
    assert await _event(any_db, "p3", "ann", "purchase", 1)
    assert await _event(any_db, "p4", "ann", "purchase", 0.5)
    # A late event, older than all kept: nothing it displaces; then one between two kept.
    assert await _event(any_db, "p5", "ann", "purchase", 400)
    assert await _event(any_db, "p6", "ann", "purchase", 3)
    assert not await _event(any_db, "p6", "ann", "purchase", 0.1)  # a retry: stored once
    assert await _event(any_db, "o1", "ann", "opened", 2, channel="email")
    assert await _event(any_db, "o2", "ann", "opened", 1, channel="telegram")
    assert await _event(any_db, "b1", "bob", "purchase", 20)
    stored = await _stored(any_db)
    assert stored == await _expected(any_db)
    ann = sorted((r[3], r[4]) for r in stored if r[:3] == ("ann", "purchase", ""))
    assert ann == [(1, ago(0.5)), (2, ago(1)), (3, ago(3))]
    assert ("ann", "opened", "email", 1, ago(2)) in stored and ("ann", "opened", "", 1, ago(1)) in stored


async def test_a_batch_a_merge_and_an_erasure_keep_it_exact(any_db: Database) -> None:
    await _people(any_db)
    rng = random.Random(7)
    batch = [
        AppEvent(
            event_id=f"a{i}",
            customer_id=rng.choice(PEOPLE),
            type=rng.choice(["purchase", "page_viewed"]),
            occurred_at=ago(rng.uniform(0, 500)),
        )
        for i in range(40)
    ]
    await record_app_events(any_db, "shop", batch, journeys=[])
    assert await _stored(any_db) == await _expected(any_db)
    # The same batch again (a retry) changes nothing.
    await record_app_events(any_db, "shop", batch, journeys=[])
    assert await _stored(any_db) == await _expected(any_db)
    async with any_db.session() as session:
        await merge_customers(session, "ann", "bob", reason="test")
    stored = await _stored(any_db)
    assert stored == await _expected(any_db)
    assert not [r for r in stored if r[0] == "bob"]
    await erase_customer(any_db, "cat")
    stored = await _stored(any_db)
    assert stored == await _expected(any_db)
    assert not [r for r in stored if r[0] == "cat"]
    # Pseudonymised events keep their times, under the pseudonym.
    assert [r for r in stored if r[0] == pseudonym("cat")] or not [e for e in batch if e.customer_id == "cat"]


async def test_counts_read_from_it_select_what_counting_the_events_selects(any_db: Database, tmp_path: Path) -> None:
    """Every count rule event_recency answers (at least n, fewer than n, none, any, with and
    without a channel and a window) against the same count computed in Python."""
    await _people(any_db)
    rng = random.Random(13)
    events: list[tuple[str, str, str | None, float]] = []
    for i in range(120):
        customer = rng.choice(PEOPLE)
        kind = rng.choice(["purchase", "opened"])
        channel = rng.choice(["email", "sms"]) if kind == "opened" else None
        days = rng.uniform(0, 400)
        events.append((customer, kind, channel, days))
        assert await _event(any_db, f"r{i}", customer, kind, days, channel)
    rules: list[dict[str, Any]] = []
    for op, value in [("gte", 1), ("gte", 2), ("gte", 3), ("gt", 1), ("eq", 0), ("lt", 2), ("lte", 2), ("lt", 3)]:
        for within in (None, 30, 120):
            for kind, channel in (("purchase", None), ("opened", None), ("opened", "sms")):
                rules.append({"event": kind, "op": op, "value": value, "within": within, "channel": channel})
    folder = tmp_path / "segments"
    folder.mkdir()
    for i, rule in enumerate(rules):
        spec = {k: v for k, v in rule.items() if v is not None}
        if "within" in spec:
            spec["within"] = f"{spec['within']}d"
        (folder / f"r{i}.yaml").write_text(yaml.safe_dump({"name": f"r{i}", "where": [spec]}))
    catalog = load_segments(Settings(segments_dir=folder))
    tests = {
        "gte": lambda n, v: n >= v,
        "gt": lambda n, v: n > v,
        "eq": lambda n, v: n == v,
        "lt": lambda n, v: n < v,
        "lte": lambda n, v: n <= v,
    }
    wrong = []
    for i, rule in enumerate(rules):
        counts = {
            p: sum(
                1
                for c, k, ch, d in events
                if c == p
                and k == rule["event"]
                and (rule["channel"] is None or ch == rule["channel"])
                and (rule["within"] is None or d <= rule["within"])
            )
            for p in PEOPLE
        }
        expected = sum(1 for p in PEOPLE if tests[rule["op"]](counts[p], rule["value"]))
        got = await count_members(any_db, catalog, f"r{i}", now=NOW)
        if got != expected:
            wrong.append(f"{rule}: {got} != {expected} ({counts})")
    assert wrong == []


async def test_a_rebuild_equals_what_the_event_path_kept(any_db: Database) -> None:
    await _people(any_db)
    for i, days in enumerate([5, 50, 1, 9, 300]):
        await _event(any_db, f"x{i}", PEOPLE[i % 2], "purchase", days, channel="email" if i % 2 else None)
    kept = await _stored(any_db)
    async with any_db.engine.begin() as conn:
        await rebuild_event_recency(conn)
    assert await _stored(any_db) == kept == await _expected(any_db)


async def test_concurrent_writers_of_one_customer_neither_collide_nor_lose_an_event(any_db: Database) -> None:
    # Each writer reads the kept rows and writes the new three: without the per-customer
    # lock two transactions at once collide on the primary key (PostgreSQL) or drop one
    # event from the ladder. Many small batches of the same customers at once, plus single events.
    await _people(any_db)
    rng = random.Random(11)

    async def batch(n: int) -> None:
        events = [
            AppEvent(
                event_id=f"c{n}-{i}",
                customer_id=rng.choice(PEOPLE[:2]),
                type="purchase",
                occurred_at=ago(rng.uniform(0, 30)),
            )
            for i in range(5)
        ]
        await record_app_events(any_db, "shop", events, journeys=[])

    async def single(n: int) -> None:
        await _event(any_db, f"s{n}", "ann", "purchase", rng.uniform(0, 30))

    await asyncio.gather(*(batch(n) for n in range(8)), *(single(n) for n in range(8)))
    assert await _stored(any_db) == await _expected(any_db)
