"""Activities of the analytics refresh: the rollups' recent days, rebuilt from the log."""

from __future__ import annotations

from temporalio import activity

from analytics.recent import refresh_recent_rollups
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from models.analytics import RefreshRollupsInput, RefreshRollupsResult

log = get_logger(__name__)


class AnalyticsActivities:
    """Database work of AnalyticsRefresh; dependencies come in here."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn
    async def refresh_recent_rollups(self, input: RefreshRollupsInput) -> RefreshRollupsResult:
        """Close the days that closed and rebuild every rollup's recent days as the log is now.

        Safe to retry or to run beside another refresh: each rollup's recent rows are
        replaced, never added to, under a compare-and-set (analytics.funnel.refresh_recent).
        """
        done = await refresh_recent_rollups(self.db, self.settings.channel_costs, now=input.at)
        log.info("analytics_refreshed", as_of=done.as_of.isoformat(), refreshed=done.refreshed)
        return RefreshRollupsResult(as_of=done.as_of, refreshed=done.refreshed)
