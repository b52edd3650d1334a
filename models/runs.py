"""Inputs of the activities a journey records its own run with (journey_runs)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class RecordRunStartedInput(BaseModel):
    """A journey run began: what events find it by, and which events convert or end it."""

    workflow_id: str
    run_id: str
    journey: str
    customer_id: str
    campaign: str | None = None
    workflow_type: str
    convert_on: list[str] = Field(default_factory=list)
    exit_on: list[str] = Field(default_factory=list)
    started_at: datetime


class SkippedStep(BaseModel):
    """A step of the run that sent nothing, and the reason the journey's state gives."""

    step: int
    channel: str
    reason: str


class RecordRunFinishedInput(BaseModel):
    """A journey run ended, and how (an outcome, not a reason text); its skipped steps for the funnel."""

    workflow_id: str
    run_id: str
    outcome: str = Field(max_length=32)
    finished_at: datetime
    # Empty from journeys that ended before skips were recorded (patch `record-skips`).
    journey: str | None = None
    customer_id: str | None = None
    campaign: str | None = None
    variant: str | None = None
    skipped: list[SkippedStep] = Field(default_factory=list)
