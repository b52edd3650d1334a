"""Payloads of the experiment activity and the results report (issue 14)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from models.journey import Experiment


class AssignVariantInput(BaseModel):
    """Put one customer entering a journey into an arm of the journey's experiment."""

    experiment: Experiment
    journey: str
    journey_version: str
    convert_on: list[str] = Field(default_factory=list)
    customer_id: str
    workflow_id: str
    run_id: str


class AssignVariantResult(BaseModel):
    """The customer's arm (a variant name or `control`) and whether it was decided now."""

    variant: str
    new: bool = Field(description="False when the customer had an arm already (retry, re-entry)")
    allocation: dict[str, float] | None = Field(default=None, description="Bandit: the split the decision used")
