"""Broadcasts: the workflow's input, its signals, its activities' inputs and results, its progress."""

from __future__ import annotations

import re
from datetime import datetime, time

from pydantic import BaseModel, Field, model_validator

from models.journey import JourneySpec
from models.workflow_types import BROADCAST_WORKFLOW as BROADCAST_WORKFLOW

BROADCAST_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class BroadcastCounts(BaseModel):
    """What a broadcast did so far: started, skipped (by reason) and failed recipients."""

    started: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    failed: int = 0

    def add(self, other: BroadcastCounts) -> None:
        """Add another page's counts to these."""
        self.started += other.started
        self.failed += other.failed
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    @property
    def done(self) -> int:
        """Recipients handled one way or another."""
        return self.started + self.failed + sum(self.skipped.values())


class BroadcastInput(BaseModel):
    """Input of BroadcastWorkflow; `continue_as_new` carries the cursor and counts forward.

    `journey` is the definition snapshotted at start (editing the file changes nothing
    for a running broadcast). `send_at` delays the start to a moment; `local_time` starts
    each recipient's cascade at that time of day in the customer's own time zone.
    """

    broadcast_id: str = Field(pattern=BROADCAST_ID_PATTERN)
    segment: str
    journey: JourneySpec
    send_at: datetime | None = None
    local_time: time | None = None
    rate_per_second: float = Field(default=100.0, gt=0, description="Cascades started per second at most")
    page_size: int = Field(default=200, ge=1, le=5000)
    pages_per_run: int = Field(default=50, ge=1, description="continue_as_new after this many pages")
    # Carried across continue_as_new.
    audience: int | None = None
    cursor: str | None = None
    counts: BroadcastCounts = Field(default_factory=BroadcastCounts)
    paused: bool = False
    runs: int = 0

    @model_validator(mode="after")
    def _aware(self) -> BroadcastInput:
        if self.send_at is not None and self.send_at.tzinfo is None:
            raise ValueError("send_at must carry a time zone (e.g. 2026-12-01T10:00:00+00:00)")
        return self


class BroadcastSignalInput(BaseModel):
    """Input of the pause, resume and cancel signals: who asked and why (for the record)."""

    reason: str = Field(default="operator", max_length=200)


class BroadcastProgress(BaseModel):
    """The `progress` query and the workflow's result."""

    broadcast_id: str
    segment: str
    journey: str
    status: str
    audience: int | None = None
    started: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    cancelled_journeys: int = 0
    cursor: str | None = None
    runs: int = 0


class SnapshotAudienceInput(BaseModel):
    """Freeze a segment's members as the broadcast's audience (once; a repeat reads it back)."""

    broadcast_id: str
    segment: str
    journey: str
    send_at: datetime | None = None
    local_time: time | None = None


class SnapshotAudienceResult(BaseModel):
    """How many recipients the frozen audience has, and what was done for them already."""

    audience: int
    counts: BroadcastCounts = Field(default_factory=BroadcastCounts)


class StartRecipientsInput(BaseModel):
    """Start the cascades of the next page of pending recipients after `cursor`."""

    broadcast_id: str
    journey: JourneySpec
    cursor: str | None = None
    limit: int = Field(ge=1, le=5000)
    local_time: time | None = None


class StartRecipientsResult(BaseModel):
    """What this page did (rows already handled by an earlier attempt count there, not here)."""

    counts: BroadcastCounts
    cursor: str | None
    done: bool


class CancelUnsentInput(BaseModel):
    """Cancel the broadcast's journeys that have not sent a message yet."""

    broadcast_id: str
    reason: str = "broadcast cancelled"


class CancelUnsentResult(BaseModel):
    """How many journeys were told to stop."""

    cancelled: int


def broadcast_workflow_id(broadcast_id: str) -> str:
    """`broadcast/<id>`: one workflow per broadcast."""
    return f"broadcast/{broadcast_id}"


def broadcast_run_key(broadcast_id: str) -> str:
    """The run key of a recipient's journey: the journey id names the broadcast it came from."""
    return f"broadcast-{broadcast_id}"


def check_broadcast_id(value: str) -> str:
    """`value` if it can be a broadcast id, else a ValueError saying what is allowed."""
    if not re.match(BROADCAST_ID_PATTERN, value):
        raise ValueError(f"broadcast id {value!r}: 1-63 characters of a-z, 0-9, _ and -, starting with a letter/digit")
    return value
