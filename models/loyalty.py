"""Inputs, results and state of the loyalty loop and of the scheduled scans."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from models.journey import JourneyInput, Outcome


class LoyaltyInput(BaseModel):
    """Input of LoyaltyLoop: the snapshotted journey and which round this run plays."""

    journey: JourneyInput
    round: int = Field(default=1, ge=1)
    points_accrued: int = Field(default=0, ge=0, description="Points accrued by this loop in earlier rounds")
    seen_event_ids: list[str] = Field(
        default_factory=list,
        description="Ids of the latest events taken, so a repeat sent after a round ended is dropped",
    )


class LoyaltyState(BaseModel):
    """Where a loyalty loop stands (the `state` query) and, at the end, its result."""

    customer_id: str
    round: int
    points_accrued: int
    status: str = "running"
    purchased: bool = False
    purchases: int = Field(default=0, description="Purchases counted in this round (each accrues points)")
    round_outcome: Outcome | None = None
    outcome_reason: str | None = None


class LoyaltyResult(LoyaltyState):
    """The loop's result: its final state."""


class AccruePointsInput(BaseModel):
    """Add points to the customer once per `idempotency_key`."""

    customer_id: str
    points: int = Field(ge=0)
    idempotency_key: str
    at: datetime


class AccruePointsResult(BaseModel):
    """The customer's balance after the accrual; `duplicate` when it was already done."""

    balance: int
    duplicate: bool = False


class ScanInput(BaseModel):
    """Input of a scan workflow (BirthdayScan, WinbackScan); `journey` names the file to start."""

    journey: str
    at: datetime | None = Field(
        default=None, description="Scan as of this time (default: the schedule's time for this run)"
    )


class ScanResult(BaseModel):
    """How many customers one scan looked at, and what routing them did (counts, so the
    result stays small whatever the size of the shop)."""

    scanned: int = 0
    started: int = 0
    exited: int = 0
    not_entered: int = 0
    at: datetime | None = Field(default=None, description="The time the scan judged by")

    @field_validator("started", "exited", mode="before")
    @classmethod
    def _count_ids(cls, value: Any) -> Any:
        # Scans of older code returned every workflow id; their histories still replay.
        return len(value) if isinstance(value, list) else value
