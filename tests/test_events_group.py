"""POST /v1/events' fast path (issue 17 B6): single events of concurrent requests stored in a
shared transaction (group commit), API keys trusted for a few seconds, segment refreshes
after the answer, coalesced per customer. SQLite and PostgreSQL where the database matters."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlmodel import col, select, update
from temporalio.client import Client

import cascade.events.group as group
import cascade.events.ingest as ingest
from cascade.audiences.membership import current_segments, refresh_customers_memberships, refresh_memberships
from cascade.audiences.refresher import SegmentRefresher
from cascade.audiences.service import load_segments
from cascade.events.group import EventGroupCommit
from cascade.events.ingest import record_app_event
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.events import AppEvent
from models.tables import ApiKey, Customer, EngagementEvent, EventRecency, OutboxSignal
from tests.conftest import seed
from tests.helpers import app_event as event
from tests.test_events_batch import seed_ann_running_and_bob
from tests.test_segments import NOW, _people
from webhooks.keys import create_key, revoke_key, tenant_of_key

FUNNEL = ["new", "active", "loyal", "dormant", "churned"]
LEASE = timedelta(seconds=30)


@pytest.mark.postgres
async def test_concurrent_events_share_one_transaction_and_answer_as_one_by_one(any_db: Database) -> None:
    await seed_ann_running_and_bob(any_db)
    committer = EventGroupCommit(any_db, lease=LEASE, journeys=[])
    sent = [
        ("shop", event("e1", "ann", "purchase", amount=10)),
        ("shop", event("e1", "ann", "purchase", amount=10)),  # the same event, concurrently
        ("shop", event("e2", "bob", "page_viewed", url="https://s/p")),
        ("other", event("e1", "ann", "purchase", amount=5)),  # another tenant's own e1
        ("shop", event("e3", "nobody", "page_viewed")),
    ]
    recorded = await asyncio.gather(*(committer.record(tenant, e) for tenant, e in sent))
    assert [r.result.status for r in recorded] == ["accepted", "duplicate", "accepted", "accepted", "unknown_customer"]
    assert committer.groups == 1  # all five arrived before the first transaction began
    assert recorded[0].result.signalled == recorded[3].result.signalled == ["journey/x/ann"]
    async with any_db.session() as session:
        ann = await session.get(Customer, "ann")
        stored = sorted(str(s) for s in (await session.exec(select(EngagementEvent.event_id))).all())
        outbox = (await session.exec(select(OutboxSignal).order_by(col(OutboxSignal.id)))).all()
    assert ann is not None and ann.purchase_count == 2
    assert stored == ["other:e1", "shop:e1", "shop:e2"]
    # The rows handed to the relay carry the ids they were stored under (one INSERT for all).
    handed = [row for r in recorded for row in r.rows]
    assert sorted((row.id, row.event_id) for row in handed) == [(row.id, row.event_id) for row in outbox]
    assert [row.event_id for row in outbox] == ["shop:e1", "other:e1"]

    # The same events again: nothing is stored or signalled twice.
    again = await asyncio.gather(*(committer.record(tenant, e) for tenant, e in sent))
    assert [r.result.status for r in again] == ["duplicate"] * 4 + ["unknown_customer"]
    async with any_db.session() as session:
        assert len((await session.exec(select(OutboxSignal))).all()) == 2


@pytest.mark.postgres
async def test_a_failed_group_is_stored_one_by_one_and_only_the_bad_event_fails(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(any_db, "ann")

    async def group_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the shared transaction failed")

    async def one_fails(db: Database, tenant: str, e: AppEvent, **kwargs: Any) -> Any:
        if e.event_id == "bad":
            raise RuntimeError("this event cannot be stored")
        return await record_app_event(db, tenant, e, **kwargs)

    monkeypatch.setattr(group, "record_app_events_of_tenants", group_fails)
    monkeypatch.setattr(group, "record_app_event", one_fails)
    committer = EventGroupCommit(any_db, lease=LEASE, journeys=[])
    good, bad = await asyncio.gather(
        committer.record("shop", event("good", "ann", "purchase", amount=3)),
        committer.record("shop", event("bad", "ann", "purchase", amount=4)),
        return_exceptions=True,
    )
    assert not isinstance(good, BaseException) and good.result.status == "accepted"
    assert isinstance(bad, RuntimeError) and "cannot be stored" in str(bad)
    async with any_db.session() as session:
        ann = await session.get(Customer, "ann")
        stored = (await session.exec(select(EngagementEvent.event_id))).all()
    assert ann is not None and ann.purchase_count == 1
    assert [str(s) for s in stored] == ["shop:good"]


async def test_a_key_found_valid_is_trusted_a_while_and_a_revocation_here_applies_at_once(db: Database) -> None:
    key, row = await create_key(db, "shop1")
    assert await tenant_of_key(db, key, cache_seconds=60) == "shop1"
    # Revoked by another process (the CLI): this one trusts what it saw for the cache's life...
    async with db.session() as session:
        await session.exec(update(ApiKey).where(col(ApiKey.prefix) == row.prefix).values(revoked_at=NOW))
    assert await tenant_of_key(db, key, cache_seconds=60) == "shop1"
    # ... a key it has not cached is looked up, and a revocation in this process clears the cache.
    other, other_row = await create_key(db, "shop1")
    assert await tenant_of_key(db, other, cache_seconds=60) == "shop1"
    assert await revoke_key(db, other_row.prefix)
    assert await tenant_of_key(db, other, cache_seconds=60) is None
    assert await tenant_of_key(db, key, cache_seconds=60) is None  # the cache was emptied
    # Without a cache every request looks the key up; unknown keys are never trusted.
    fresh, fresh_row = await create_key(db, "shop2")
    assert await tenant_of_key(db, fresh, cache_seconds=0) == "shop2"
    async with db.session() as session:
        await session.exec(update(ApiKey).where(col(ApiKey.prefix) == fresh_row.prefix).values(revoked_at=NOW))
    assert await tenant_of_key(db, fresh, cache_seconds=0) is None
    assert await tenant_of_key(db, fresh[:-2] + "xx", cache_seconds=60) is None


@pytest.mark.postgres
async def test_several_customers_refreshed_at_once_record_what_one_by_one_would(any_db: Database) -> None:
    await _people(any_db)
    catalog = load_segments(Settings(), Path("/nonexistent"))
    ids = ["ann", "bob", "cat", "dan", "nobody", "ann"]
    together = await refresh_customers_memberships(any_db, catalog, ids, now=NOW, segments=FUNNEL)
    assert together.entered == {"new": ["cat"], "loyal": ["ann"], "dormant": ["bob"], "churned": ["dan"]}
    assert together.exited == {}
    # Recorded once: a second refresh (or the full one) finds nothing left to write.
    again = await refresh_customers_memberships(any_db, catalog, ids, now=NOW + timedelta(minutes=1), segments=FUNNEL)
    assert (again.entered, again.exited) == ({}, {})
    full = await refresh_memberships(any_db, catalog, now=NOW + timedelta(minutes=2), segments=FUNNEL)
    assert (full.entered, full.exited) == ({}, {})


async def test_the_refresher_judges_a_customers_queued_events_in_one_round(db: Database) -> None:
    await _people(db)
    # No delay between rounds: the test waits for them, and a round runs as soon as woken.
    settings = Settings(segments_dir=Path("/nonexistent"), segment_refresh_delay_seconds=0)
    # No journey in journeys/ starts on a segment transition, so Temporal is never called.
    async with SegmentRefresher(cast(Client, None), db, settings) as refresher:
        refresher.submit(["ann", "bob"])
        refresher.submit(["ann"])  # more events of ann's before the refresher ran
        await refresher.idle()
        assert refresher.rounds == 1
        # Judged at the real clock, the hand-made customers (dated around NOW) have aged.
        assert "dormant" in await current_segments(db, "ann")
        assert await current_segments(db, "bob") == ["churned"]
        assert await current_segments(db, "dan") == []  # not submitted: not refreshed
        refresher.submit(["dan"])
    # Leaving the block refreshes what is still queued.
    assert refresher.rounds == 2
    assert await current_segments(db, "dan") == ["churned"]


async def test_a_group_that_starts_no_journey_is_stored_in_one_hop_as_the_async_path_stores_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_ann_running_and_bob(db)
    sent = [
        ("shop", event("e1", "ann", "purchase", amount=10)),
        ("shop", event("e1", "ann", "purchase", amount=10)),  # the same event in the same group
        ("shop", event("e2", "bob", "page_viewed", url="https://s/p")),
        ("other", event("e1", "ann", "purchase", amount=5)),
    ]

    async def no_async_path(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a group of known customers starting no journey takes the one-hop path")

    # Only the one-hop transaction (Database.transaction on the SQLite file) may store them.
    monkeypatch.setattr(ingest, "_record_batch", no_async_path)
    committer = EventGroupCommit(db, lease=LEASE, journeys=[])
    recorded = await asyncio.gather(*(committer.record(tenant, e) for tenant, e in sent))
    assert [r.result.status for r in recorded] == ["accepted", "duplicate", "accepted", "accepted"]
    assert committer.groups == 1  # stored as a group, not one by one after a failed group
    assert recorded[0].result.signalled == recorded[3].result.signalled == ["journey/x/ann"]
    async with db.session() as session:
        ann = await session.get(Customer, "ann")
        bob = await session.get(Customer, "bob")
        stored = sorted(str(s) for s in (await session.exec(select(EngagementEvent.event_id))).all())
        outbox = (await session.exec(select(OutboxSignal).order_by(col(OutboxSignal.id)))).all()
        ladder = (await session.exec(select(EventRecency.customer_id, EventRecency.type, EventRecency.rank))).all()
    assert ann is not None and ann.purchase_count == 2
    assert bob is not None and (bob.attributes or {}).get("last_page_viewed_url") == "https://s/p"
    assert stored == ["other:e1", "shop:e1", "shop:e2"]
    handed = [row for r in recorded for row in r.rows]
    assert sorted((row.id, row.event_id) for row in handed) == [(row.id, row.event_id) for row in outbox]
    assert sorted(ladder) == [("ann", "purchase", 1), ("ann", "purchase", 2), ("bob", "page_viewed", 1)]


async def test_a_group_with_an_unknown_customer_leaves_the_one_hop_path_and_stores_nothing_twice(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_ann_running_and_bob(db)
    calls: list[int] = []
    real = ingest._record_batch

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_record_batch", counted)
    committer = EventGroupCommit(db, lease=LEASE, journeys=[])
    sent = [event("e1", "ann", "purchase", amount=10), event("e2", "nobody", "page_viewed")]
    recorded = await asyncio.gather(*(committer.record("shop", e) for e in sent))
    assert [r.result.status for r in recorded] == ["accepted", "unknown_customer"]
    assert calls  # the async path stored the group, after the one-hop transaction rolled back
    async with db.session() as session:
        ann = await session.get(Customer, "ann")
        outbox = (await session.exec(select(OutboxSignal))).all()
        stored = (await session.exec(select(EngagementEvent.event_id))).all()
    assert ann is not None and ann.purchase_count == 1
    assert len(outbox) == 1 and [str(s) for s in stored] == ["shop:e1"]
