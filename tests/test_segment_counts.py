"""Segment counts read from the memberships (`segment_refreshes`, migration 0018): after a
refresh of everyone they equal the segment's query at that moment, move with the event
path, and fall back to the query when the definition changed (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cascade.audiences import service
from cascade.audiences.compiler import CUSTOMERS, definition_digest
from cascade.audiences.membership import refresh_memberships
from cascade.audiences.service import count_members, count_segment, load_segments, stored_count
from cascade.events.store import insert_event
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from tests.test_segments import NOW, _people, _write, ago, case_catalog


@pytest.fixture
async def people(any_db: Database) -> Database:
    await _people(any_db)
    return any_db


@pytest.mark.postgres
async def test_without_a_refresh_a_count_runs_the_query(people: Database) -> None:
    catalog = load_segments(Settings(), Path("/nonexistent"))
    assert await stored_count(people, catalog, "dormant") is None
    counted = await count_segment(people, catalog, "dormant")
    assert counted.exact and counted.members == await count_members(people, catalog, "dormant")


@pytest.mark.postgres
async def test_after_a_refresh_every_count_is_the_querys_at_that_moment(people: Database, tmp_path: Path) -> None:
    catalog = case_catalog(tmp_path)
    await refresh_memberships(people, catalog, now=NOW)
    wrong = []
    for name in catalog.names():
        stored = await stored_count(people, catalog, name)
        expected = await count_members(people, catalog, name, now=NOW)
        if stored is None or stored.members != expected or stored.as_of != NOW or stored.exact:
            wrong.append(f"{name}: {stored} != {expected} at {NOW}")
        counted = await count_segment(people, catalog, name)
        assert (counted.members, counted.exact, counted.as_of) == (expected, False, NOW)
    assert wrong == []
    # The cases have members of every size, so equal counts are not all zeros.
    assert len({(await count_segment(people, catalog, n)).members for n in catalog.names()}) >= 3


@pytest.mark.postgres
async def test_the_event_path_moves_the_stored_count_and_time_alone_waits_for_the_next_refresh(
    people: Database,
) -> None:
    catalog = load_segments(Settings(), Path("/nonexistent"))
    await refresh_memberships(people, catalog, now=NOW)
    assert (await count_segment(people, catalog, "loyal")).members == 1  # ann
    # bob buys twice more: three purchases in the year and the last within 90 days.
    for i, days in enumerate([3, 2]):
        async with people.session() as session:
            assert await insert_event(
                people, session, type="purchase", occurred_at=ago(days), event_id=f"bob{i}", customer_id="bob"
            )
    async with people.engine.begin() as conn:
        await conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id == "bob").values(last_purchase_at=ago(2)))
    # What the event path does for the customer an event was about.
    await refresh_memberships(people, catalog, now=NOW + timedelta(seconds=1), customer_id="bob")
    loyal = await count_segment(people, catalog, "loyal")
    assert (loyal.members, loyal.exact, loyal.as_of) == (2, False, NOW)
    assert loyal.members == await count_members(people, catalog, "loyal", now=NOW + timedelta(seconds=1))
    # bob's purchases also took him out of dormant. 100 days later ann's and bob's last
    # purchases are 110 and 102 days old: dormant by the query, not yet by the memberships
    # (time alone moved them), until the Schedule's next refresh.
    later = NOW + timedelta(days=100)
    assert await count_members(people, catalog, "dormant", now=later) == 2
    assert (await count_segment(people, catalog, "dormant")).members == 0
    await refresh_memberships(people, catalog, now=later)
    dormant = await count_segment(people, catalog, "dormant")
    assert (dormant.members, dormant.as_of) == (2, later)


@pytest.mark.postgres
async def test_a_changed_definition_or_exact_counts_by_the_query(people: Database, tmp_path: Path) -> None:
    folder = tmp_path / "segments"
    folder.mkdir()
    _write(folder, "berliners", [{"field": "city", "op": "eq", "value": "Berlin"}])
    _write(folder, "fans", [{"segment": "berliners"}, {"reachable": "telegram"}])
    catalog = load_segments(Settings(), folder)
    await refresh_memberships(people, catalog, now=NOW)
    assert (await count_segment(people, catalog, "berliners")).members == 2
    # exact=True ignores the memberships.
    exact = await count_segment(people, catalog, "berliners", exact=True)
    assert exact.exact and exact.members == 2 and exact.as_of > NOW
    # Editing berliners changes its definition and that of fans, which refers to it.
    _write(folder, "berliners", [{"field": "city", "op": "in", "value": ["Berlin", "Paris"]}])
    edited = load_segments(Settings(), folder)
    assert await stored_count(people, edited, "berliners") is None
    assert await stored_count(people, edited, "fans") is None
    assert (await count_segment(people, edited, "berliners")).members == 3
    # A threshold setting is part of the definition too.
    funnel = load_segments(Settings(), Path("/nonexistent"))
    stricter = load_segments(Settings(segment_loyal_purchases=4), Path("/nonexistent"))
    dialect = people.engine.dialect
    assert definition_digest(funnel, "loyal", dialect=dialect) != definition_digest(stricter, "loyal", dialect=dialect)
    assert definition_digest(funnel, "dormant", dialect=dialect) == definition_digest(
        stricter, "dormant", dialect=dialect
    )
    assert definition_digest(funnel, "new", dialect=dialect) != definition_digest(stricter, "new", dialect=dialect)


@pytest.mark.postgres
async def test_a_refresh_between_the_two_reads_of_a_stored_count_does_not_mislabel_it(
    people: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = load_segments(Settings(), Path("/nonexistent"))
    await refresh_memberships(people, catalog, now=NOW)
    # bob becomes loyal (as in the test above); the next refresh of everyone records it.
    for i, days in enumerate([3, 2]):
        async with people.session() as session:
            assert await insert_event(
                people, session, type="purchase", occurred_at=ago(days), event_id=f"bob{i}", customer_id="bob"
            )
    async with people.engine.begin() as conn:
        await conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id == "bob").values(last_purchase_at=ago(2)))
    later = NOW + timedelta(minutes=1)

    # The count reads when the last refresh was, then the memberships; here a refresh of
    # everyone commits between the two reads. In one snapshot the count is still the first
    # refresh's, labelled with its time; in two it would be the second's count under the
    # first's time.
    read_refresh = service._refreshed_at
    refreshed: list[datetime] = []

    async def read_then_refresh(*args: Any, **kwargs: Any) -> datetime | None:
        found = await read_refresh(*args, **kwargs)
        if not refreshed:
            await refresh_memberships(people, catalog, now=later)
            refreshed.append(later)
        return found

    monkeypatch.setattr(service, "_refreshed_at", read_then_refresh)
    stored = await stored_count(people, catalog, "loyal")
    assert refreshed == [later]
    assert stored is not None and (stored.members, stored.as_of) == (1, NOW)
    again = await stored_count(people, catalog, "loyal")
    assert again is not None and (again.members, again.as_of) == (2, later)
