"""Reading segments: the checked catalog, member counts, samples and pages of member ids."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from cascade.audiences.compiler import (
    CUSTOMERS,
    check_catalog,
    count_query,
    definition_digest,
    member_query,
    segment_edges,
)
from cascade.audiences.corrected import correct_count
from cascade.audiences.definition import SegmentCatalog, load_catalog, segment_files
from cascade.infra.db import Database, as_utc
from cascade.infra.settings import Settings
from models.tables import SegmentMembership, SegmentRefresh

MEMBERSHIPS: Table = SQLModel.metadata.tables[SegmentMembership.__tablename__]
REFRESHES: Table = SQLModel.metadata.tables[SegmentRefresh.__tablename__]

_CACHE: dict[tuple[object, ...], SegmentCatalog] = {}


def _fingerprint(settings: Settings, folder: Path) -> tuple[object, ...]:
    files = segment_files(folder) if folder.is_dir() else []
    stats = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    thresholds = (
        settings.segment_new_days,
        settings.segment_active_days,
        settings.segment_loyal_purchases,
        settings.segment_loyal_window_days,
        settings.segment_churned_days,
    )
    return (str(folder), stats, thresholds)


def load_segments(settings: Settings, directory: Path | None = None) -> SegmentCatalog:
    """The built-in funnel and the segment files, validated and compiled once per change.

    A file edit applies to the next call without a restart; unchanged files cost a stat.
    Raises SegmentDefinitionError (file, field, line) when any segment is invalid.
    """
    folder = directory if directory is not None else settings.segments_dir
    key = _fingerprint(settings, folder)
    cached = _CACHE.get(key)
    if cached is None:
        cached = load_catalog(settings, folder)
        check_catalog(cached)
        _CACHE.clear()
        _CACHE[key] = cached
    return cached


@dataclass
class SegmentCount:
    """How many customers a segment has now, out of how many live profiles."""

    name: str
    members: int
    customers: int


async def count_members(db: Database, catalog: SegmentCatalog, name: str, now: datetime | None = None) -> int:
    """The number of members of segment `name` (one COUNT query)."""
    query = count_query(catalog, name, dialect=db.engine.dialect.name, now=now or datetime.now(UTC))
    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            # JIT compiling the count cost more than it saved: `active` over 1M customers took
            # 0.48-0.63 s with it and 0.19-0.28 s without (bench/segments.py); the others moved
            # within their scatter. Local to this transaction.
            await conn.exec_driver_sql("SELECT set_config('jit', 'off', true)")
        count: int = (await conn.execute(query)).scalar_one()
        return count


# How a count was taken: the segment's query, the open memberships, or those corrected.
CountMethod = Literal["query", "memberships", "corrected"]


@dataclass(frozen=True)
class MemberCount:
    """A segment's member count and how it was taken.

    `exact`: the count of members at `as_of` (now), by the segment's query (`method`
    "query") or from the last refresh's memberships corrected for the `touched` customers
    whose verdict may have changed since ("corrected", cascade/audiences/corrected.py).
    Otherwise ("memberships") read from the open memberships: exact as of `as_of`, the last
    refresh of everyone (the `SegmentRefresh` Schedule), and since then current for the
    customers whose events came through the events API (the event path moves their
    memberships). What else changed since (time alone, such as becoming dormant; profile
    edits, merges and erasures without an event) shows at the next refresh.
    """

    members: int
    exact: bool
    as_of: datetime
    method: CountMethod = "query"
    touched: int | None = None


async def _refreshed_at(conn: AsyncConnection, catalog: SegmentCatalog, name: str) -> datetime | None:
    """When a refresh of everyone last recorded `name`'s memberships under its current definition."""
    digest = definition_digest(catalog, name, dialect=conn.dialect)
    refreshed = (
        await conn.execute(
            select(REFRESHES.c.refreshed_at).where(REFRESHES.c.segment == name, REFRESHES.c.definition == digest)
        )
    ).scalar_one_or_none()
    return None if refreshed is None else as_utc(refreshed)


async def stored_count(db: Database, catalog: SegmentCatalog, name: str) -> MemberCount | None:
    """Segment `name`'s open memberships counted, if a refresh of everyone recorded them under
    the definition in force; None when never refreshed, or the definition changed since.

    Two index reads (the refresh record, a range of `ix_segment_memberships_open`) where the
    segment's query reads every customer and event it tests.
    """
    # One snapshot: a refresh committing between the two reads would label its count with
    # the previous refresh's time.
    async with db.snapshot() as conn:
        refreshed = await _refreshed_at(conn, catalog, name)
        if refreshed is None:
            return None
        members = (
            await conn.execute(
                select(func.count())
                .select_from(MEMBERSHIPS)
                .where(MEMBERSHIPS.c.segment == name, MEMBERSHIPS.c.exited_at.is_(None))
            )
        ).scalar_one()
    return MemberCount(members=int(members), exact=False, as_of=refreshed, method="memberships")


async def corrected_count(
    db: Database,
    catalog: SegmentCatalog,
    name: str,
    *,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> MemberCount | None:
    """Segment `name`'s exact count at `now`: the last refresh's memberships corrected for the
    customers touched since (cascade/audiences/corrected.py). None when it cannot be: never
    refreshed or the definition changed, a rule whose changes leave no trace
    (`UNSTAMPED_COLUMNS`), a refresh older than `segment_exact_max_age_hours` or after
    `now`, or more than `segment_exact_max_touched` touched customers."""
    limits = settings or Settings()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    edges = segment_edges(catalog, name)
    if not edges.bounded:
        return None
    async with db.snapshot() as conn:
        refreshed = await _refreshed_at(conn, catalog, name)
        too_old = timedelta(hours=limits.segment_exact_max_age_hours)
        if refreshed is None or refreshed > now or now - refreshed > too_old:
            return None
        if not db.is_sqlite:
            # As for the full count: JIT compiling cost more than it saved (count_members).
            await conn.exec_driver_sql("SELECT set_config('jit', 'off', true)")
        found = await correct_count(
            conn,
            catalog,
            name,
            edges,
            refreshed_at=refreshed,
            now=now,
            max_touched=limits.segment_exact_max_touched,
        )
    if found is None:
        return None
    return MemberCount(members=found.members, exact=True, as_of=now, method="corrected", touched=found.touched)


async def count_segment(
    db: Database,
    catalog: SegmentCatalog,
    name: str,
    *,
    exact: bool = False,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> MemberCount:
    """Segment `name`'s member count: from the memberships when a refresh recorded them under
    the current definition (fast, as of that refresh); with `exact` (or without such a
    refresh), the count now: those memberships corrected for the customers touched since
    when that is possible, else the segment's query. `now` is for tests and benches."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if not exact:
        stored = await stored_count(db, catalog, name)
        if stored is not None:
            return stored
        # No refresh under the current definition: nothing to correct either.
    else:
        corrected = await corrected_count(db, catalog, name, now=now, settings=settings)
        if corrected is not None:
            return corrected
    return MemberCount(members=await count_members(db, catalog, name, now=now), exact=True, as_of=now)


async def count_customers(db: Database) -> int:
    """Live profiles (not merged into another, not erased)."""
    query = (
        select(func.count())
        .select_from(CUSTOMERS)
        .where(CUSTOMERS.c.merged_into.is_(None), CUSTOMERS.c.erased_at.is_(None))
    )
    async with db.engine.connect() as conn:
        count: int = (await conn.execute(query)).scalar_one()
        return count


async def member_page(
    db: Database,
    catalog: SegmentCatalog,
    name: str,
    *,
    after: str | None = None,
    limit: int = 1000,
    now: datetime | None = None,
) -> list[str]:
    """Up to `limit` member ids greater than `after`, in id order (a keyset page: no OFFSET)."""
    query = member_query(catalog, name, dialect=db.engine.dialect.name, now=now or datetime.now(UTC))
    if after is not None:
        query = query.where(CUSTOMERS.c.id > after)
    query = query.order_by(CUSTOMERS.c.id).limit(limit)
    async with db.engine.connect() as conn:
        return [str(row[0]) for row in await conn.execute(query)]


async def all_members(db: Database, catalog: SegmentCatalog, name: str, now: datetime | None = None) -> set[str]:
    """Every member id (tests and small segments; a broadcast pages instead)."""
    query = member_query(catalog, name, dialect=db.engine.dialect.name, now=now or datetime.now(UTC))
    async with db.engine.connect() as conn:
        return {str(row[0]) for row in await conn.execute(query)}
