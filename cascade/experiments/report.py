"""The experiment results report: per-arm funnel and the statistics over it (issue 14).

Data shapes of the report that `cascade experiments show` prints and the Python API
returns; they live beside the queries because they carry analytics' statistics, which
the wire models in models/ must not depend on.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from analytics.stats import ExperimentStats


class VariantFunnel(BaseModel):
    """Per arm: the customers at each stage, and money."""

    variant: str
    recipients: int
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int
    revenue: float
    cost: float


class ExperimentReport(BaseModel):
    """`cascade experiments show`: the funnel per arm and its statistics."""

    experiment: str
    journey: str
    mode: str
    created_at: datetime
    planned_split: dict[str, float]
    window_days: float
    funnel: list[VariantFunnel]
    stats: ExperimentStats | None = Field(description="None until two arms have customers")
    note: str | None = None
