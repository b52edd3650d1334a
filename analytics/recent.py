"""The recent days of the rollups: refreshed in the background, and how fresh they are.

A closed day (older than ``ROLLUP_AFTER``) is rolled up once and for all. The days after it
-- a shop's busiest, last month -- would otherwise be read from the delivery log on every
report. :func:`refresh_recent_rollups` writes them into the same daily tables as
*provisional* rows: the log as it is at the refresh, per day, replacing the previous
refresh's rows (never adding to them). A report then reads the closed days and the recent
rows from the tables and only the messages (runs) created since the refresh from the log,
in one snapshot. What the recent rows say is the log at the refresh time, ``recent_until``:
a reaction, purchase or run end that came after it to a message (run) from before it is
counted by the next refresh, so the console says "as of HH:MM" (:func:`data_as_of`).

Run by the ``AnalyticsRefresh`` workflow on a Temporal Schedule (``cascade report
schedule``, every ``CASCADE_ANALYTICS_REFRESH_MINUTES``), or once with ``cascade report
refresh``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from temporalio.client import (
    Client,
    Schedule,
)

from analytics.funnel import (
    REACTION_ROLLUP,
    ROLLUP_NAME,
    RUNS_ROLLUP,
    Snapshot,
    refresh_reaction_rollup,
    refresh_recent_funnel,
    refresh_recent_reactions,
    refresh_recent_runs,
    refresh_rollup,
    refresh_runs_rollup,
    snapshot,
)
from analytics.money import SAVINGS_ROLLUP, refresh_recent_savings, refresh_savings_rollup
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.infra.temporal import delete_schedule, interval_schedule, upsert_schedule
from models.analytics import RefreshRollupsInput
from models.journey import JourneySpec
from models.workflow_types import ANALYTICS_REFRESH

ROLLUPS = (ROLLUP_NAME, REACTION_ROLLUP, RUNS_ROLLUP, SAVINGS_ROLLUP)
REFRESH_SCHEDULE_ID = "cascade-analytics-refresh"


class RecentRefresh(BaseModel):
    """What one refresh did: the time its rows are as of, and which rollups it rebuilt
    (a rollup another refresher had just rebuilt is left alone)."""

    as_of: datetime
    refreshed: list[str]


async def refresh_recent_rollups(
    db: Database,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None = None,
    *,
    now: datetime | None = None,
) -> RecentRefresh:
    """Close the days that closed, then rebuild every rollup's recent days as the log is at `now`."""
    at = now or datetime.now(UTC)
    done = []
    if await refresh_recent_funnel(db, now=at):
        done.append(ROLLUP_NAME)
    if await refresh_recent_reactions(db, now=at):
        done.append(REACTION_ROLLUP)
    if await refresh_recent_runs(db, now=at):
        done.append(RUNS_ROLLUP)
    if await refresh_recent_savings(db, prices, specs, now=at):
        done.append(SAVINGS_ROLLUP)
    return RecentRefresh(as_of=at, refreshed=done)


async def data_as_of(db: Database) -> datetime | None:
    """The oldest time the rollups' recent rows are as of; None when no rollup has recent
    rows (the reports read the recent days from the log: live)."""
    async with snapshot(db, ROLLUPS) as snap:
        return snap.as_of()


@asynccontextmanager
async def page_snapshot(
    db: Database,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None = None,
    *,
    now: datetime | None = None,
) -> AsyncIterator[Snapshot]:
    """One snapshot for every report of a page (:class:`analytics.funnel.Snapshot`): the
    days that closed are rolled up first (known built: no database work), then where every
    rollup reaches is read in one statement; ``snap.as_of()`` is what the page says."""
    await refresh_rollup(db, now=now)
    await refresh_reaction_rollup(db, now=now)
    await refresh_runs_rollup(db, now=now)
    await refresh_savings_rollup(db, prices, specs, now=now)
    async with snapshot(db, ROLLUPS) as snap:
        yield snap


def refresh_schedule(settings: Settings, every: timedelta) -> Schedule:
    """The Schedule that starts AnalyticsRefresh every `every` (a slow one is never run twice at once)."""
    return interval_schedule(
        ANALYTICS_REFRESH, RefreshRollupsInput(), REFRESH_SCHEDULE_ID, settings.task_queue, every, timedelta(minutes=30)
    )


async def apply_refresh_schedule(client: Client, settings: Settings, every: timedelta | None = None) -> str:
    """Create the analytics refresh schedule, or update it, to run every `every` (default: the settings)."""
    every = every if every is not None else timedelta(minutes=settings.analytics_refresh_minutes)
    created = await upsert_schedule(client, REFRESH_SCHEDULE_ID, refresh_schedule(settings, every))
    minutes = int(every.total_seconds() // 60)
    verb = "created" if created else "updated"
    return f"{verb} {REFRESH_SCHEDULE_ID}: {ANALYTICS_REFRESH} every {minutes} min on {settings.task_queue}"


async def delete_refresh_schedule(client: Client) -> str:
    """Delete the analytics refresh schedule; LookupError when there is none. The recent rows
    stay as of their last refresh until the next day closes them, so the console keeps
    saying "as of"."""
    return await delete_schedule(client, REFRESH_SCHEDULE_ID)
