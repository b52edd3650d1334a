"""Segment membership refresh: the workflow's and activity's input and result."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class RefreshMembershipsInput(BaseModel):
    """Refresh everyone's memberships (or one customer's) as of `at` (default: now)."""

    customer_id: str | None = None
    at: datetime | None = None


class RefreshMembershipsResult(BaseModel):
    """Who entered and left which segment, and the journeys that started because of it."""

    entered: dict[str, int] = Field(default_factory=dict)
    exited: dict[str, int] = Field(default_factory=dict)
    started: list[str] = Field(default_factory=list)
