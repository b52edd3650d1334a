"""Wire types of the analytics refresh (AnalyticsRefresh workflow and its activity)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class RefreshRollupsInput(BaseModel):
    """Roll up the recent days as the log is at `at` (default: when the activity runs)."""

    at: datetime | None = None


class RefreshRollupsResult(BaseModel):
    """The time the recent rows are now as of, and the rollups this run rebuilt."""

    as_of: datetime
    refreshed: list[str] = Field(default_factory=list)
