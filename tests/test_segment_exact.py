"""Exact counts from corrected memberships (cascade/audiences/corrected.py): after a refresh
of everyone, time moves (customers cross window edges both ways), events arrive (late ones
too), profiles, contact points and consents change, customers merge and are erased; each
time every segment's corrected count must equal its compiled query's count at that moment.
SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from cascade.audiences.compiler import CUSTOMERS, segment_edges
from cascade.audiences.definition import SegmentCatalog
from cascade.audiences.membership import refresh_memberships
from cascade.audiences.service import count_members, count_segment, load_segments
from cascade.events.store import insert_event
from cascade.infra.db import Database
from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.profiles.privacy import erase_customer
from cascade.profiles.service import mark_contact_point, merge_customers, upsert_customer
from models.profiles import CustomerProfile
from models.tables import ContactPoint, ContactStatus
from tests.test_segments import CASES, NOW, _people, _write

# The test data is stamped at NOW; a refresh two hours later finds none of it "changed since".
REFRESHED = NOW + timedelta(hours=2)
# Allow the corrections far from the refresh: time is moved by up to 300 days.
LIMITS = Settings(segment_exact_max_age_hours=24 * 365)
# dan turns 18 (6570 days) ten days after the refresh: a date column crossing its edge.
ADULT = 6570


@pytest.fixture
async def people(any_db: Database) -> Database:
    await _people(any_db)
    async with any_db.engine.begin() as conn:
        # A raw write before the refresh, without `updated_at`: only the edge can find dan later.
        born = (REFRESHED - timedelta(days=ADULT - 10)).date()
        await conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id == "dan").values(birth_date=born))
    return any_db


def _catalog(tmp_path: Path) -> SegmentCatalog:
    """The built-in funnel, the shipped segments, one segment per operator case, and a few
    more: a birth date edge, and `loyalty_points`, which a writer changes without a stamp."""
    folder = tmp_path / "segments"
    folder.mkdir()
    for shipped in (PROJECT_ROOT / "segments").glob("*.yaml"):
        shutil.copy(shipped, folder / shipped.name)
    _write(folder, "berliners", [{"field": "city", "op": "eq", "value": "Berlin"}])
    for i, (_, rule, _) in enumerate(CASES):
        _write(folder, f"case{i}", [rule])
    _write(folder, "adults", [{"field": "birth_date", "op": "older_than", "value": f"{ADULT}d"}])
    _write(folder, "minors", [{"field": "birth_date", "op": "within", "value": f"{ADULT}d"}])
    _write(folder, "points", [{"field": "loyalty_points", "op": "gt", "value": 10}])
    return load_segments(Settings(), folder)


async def _compare(db: Database, catalog: SegmentCatalog, now: datetime) -> tuple[list[str], dict[str, int], set[str]]:
    """Every segment's `count_segment(exact=True)` at `now` against its query: the wrong ones
    (or those not corrected when they could be), how many customers each touched, and the
    stale ones (whose stored count, as of the refresh, is no longer the query's)."""
    wrong, touched, stale = [], {}, set()
    for name in catalog.names():
        got = await count_segment(db, catalog, name, exact=True, now=now, settings=LIMITS)
        expected = await count_members(db, catalog, name, now=now)
        method = "corrected" if segment_edges(catalog, name).bounded else "query"
        if (got.members, got.exact, got.as_of, got.method) != (expected, True, now, method):
            wrong.append(f"{name}: {got} != {expected} ({method})")
        touched[name] = got.touched if got.touched is not None else -1
        if (await count_segment(db, catalog, name)).members != expected:
            stale.add(name)
    return wrong, touched, stale


@pytest.mark.postgres
async def test_time_alone_moves_customers_both_ways_and_the_corrected_count_follows(
    people: Database, tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path)
    await refresh_memberships(people, catalog, now=REFRESHED)
    wrong, touched, stale = await _compare(people, catalog, REFRESHED)
    assert wrong == [] and stale == set()
    # Nothing changed since the refresh: nobody is re-judged.
    assert {n for n, t in touched.items() if t != 0} == {"points"}
    assert touched["points"] == -1  # loyalty_points is unstamped: counted by the query
    for days in (11, 95, 300):
        now = REFRESHED + timedelta(days=days)
        wrong, touched, moved = await _compare(people, catalog, now)
        assert wrong == [], f"{days} days after the refresh"
        stale |= moved
    # The corrections were needed: customers left and entered segments by time alone
    # (cat stops being new, dan becomes an adult, ann's email open leaves the 30-day window,
    # ann becomes a lapsed buyer once her last purchase is 90 days old).
    assert {"new", "adults", "minors", "email_engaged", "lapsed_buyers"} <= stale


@pytest.mark.postgres
async def test_events_profiles_consents_merges_and_erasures_are_corrected(people: Database, tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    await refresh_memberships(people, catalog, now=REFRESHED)
    now = REFRESHED + timedelta(days=3)
    stale: set[str] = set()

    async def check(step: str) -> None:
        wrong, _, moved = await _compare(people, catalog, now)
        assert wrong == [], step
        stale.update(moved)

    async def event(event_id: str, customer: str, kind: str, days_ago: float, **extra: object) -> None:
        async with people.session() as session:
            assert await insert_event(
                people,
                session,
                type=kind,
                occurred_at=now - timedelta(days=days_ago),
                event_id=event_id,
                customer_id=customer,
                **extra,  # type: ignore[arg-type]
            )

    # dan spends 400: over 300 in the year, but not reachable for marketing (no consent) yet.
    await event("x1", "dan", "purchase", 1, properties={"amount": 400})
    await check("a purchase")
    # A late purchase of bob's, 100 days ago, received now.
    await event("x2", "bob", "purchase", 100, properties={"amount": 5})
    await check("a late event")
    # ann clicks an SMS: no longer "never clicked an SMS" (email_engaged).
    await event("x3", "ann", "clicked", 0.5, channel="sms")
    await check("a click")
    # dan consents to email marketing: reachable, so a big spender now.
    await upsert_customer(
        people, CustomerProfile.model_validate({"id": "dan", "consents": [{"channel": "email", "granted": True}]})
    )
    await check("a consent")
    # bob moves to Berlin; a new customer signs up.
    await upsert_customer(people, CustomerProfile(id="bob", city="Berlin"))
    await upsert_customer(people, CustomerProfile(id="gus", city="Berlin"))
    await check("profile edits")
    # ann's telegram bounces: not reachable on telegram any more.
    async with people.session() as session:
        point = (
            await session.exec(
                select(ContactPoint.id).where(ContactPoint.customer_id == "ann", ContactPoint.channel == "telegram")
            )
        ).one()
        await mark_contact_point(session, point, ContactStatus.BOUNCED, "test")
        await session.commit()
    await check("a contact point")
    # cat is merged into ann (cat is no member of anything any more; ann gains cat's rows).
    async with people.session() as session:
        await merge_customers(session, "ann", "cat", reason="test")
        await session.commit()
    await check("a merge")
    await erase_customer(people, "bob")
    await check("an erasure")
    assert {"big_spenders", "email_engaged", "berliners", "new"} <= stale


@pytest.mark.postgres
async def test_the_corrected_count_falls_back_to_the_query_past_its_limits(people: Database, tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    await refresh_memberships(people, catalog, now=REFRESHED)
    later = REFRESHED + timedelta(days=8)
    expected = await count_members(people, catalog, "new", now=later)
    # Older than segment_exact_max_age_hours (7 days by default): the query.
    old = await count_segment(people, catalog, "new", exact=True, now=later)
    assert (old.members, old.method, old.touched) == (expected, "query", None)
    # Too many touched customers (cat crosses created_at's 30-day edge): the query.
    crowded = Settings(segment_exact_max_age_hours=24 * 365, segment_exact_max_touched=0)
    at_day_30 = REFRESHED + timedelta(days=30)
    busy = await count_segment(people, catalog, "new", exact=True, now=at_day_30, settings=crowded)
    assert busy.method == "query" and busy.members == await count_members(people, catalog, "new", now=at_day_30)
    allowed = await count_segment(people, catalog, "new", exact=True, now=at_day_30, settings=LIMITS)
    assert (allowed.method, allowed.touched, allowed.members) == ("corrected", 1, busy.members)
    # Before the refresh (a clock behind it): the query.
    early = await count_segment(people, catalog, "new", exact=True, now=NOW, settings=LIMITS)
    assert early.method == "query"
    # Without exact, the stored count as of the refresh, as before.
    stored = await count_segment(people, catalog, "new")
    assert (stored.exact, stored.as_of, stored.method) == (False, REFRESHED, "memberships")
