"""Inputs and results of the activities a journey calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from models.journey import ChannelName, Condition, FrequencyCap, MessageContent, QuietHours
from models.tables import Topic


class CheckContactInput(BaseModel):
    """Is the customer reachable on `channel` right now?"""

    customer_id: str
    channel: ChannelName
    topic: Topic = Topic.MARKETING
    rules: StepRules | None = Field(default=None, description="Step rules to apply (None: contact only)")


class StepRules(BaseModel):
    """The rules a step obeys besides consent, with the workflow's clock."""

    at: datetime = Field(description="workflow.now(): the rules judge the journey's time")
    conditions: list[Condition] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict, description="Event data the conditions may test")
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    stay_active_days: int | None = None
    journey_channels: list[ChannelName] = Field(default_factory=list)


class CheckContactResult(BaseModel):
    """Usable or not, and why not. No address: personal data stays out of the history.

    `wake_at` set: not now, but try again then (quiet hours, a full frequency cap) --
    the workflow sleeps on a durable timer instead of failing or skipping.
    """

    usable: bool
    reason: str | None = None
    contact_point_id: int | None = None
    wake_at: datetime | None = None
    stay_channels: list[ChannelName] | None = Field(
        default=None, description="The channels the customer is kept on (stay where active)"
    )


class SendMessageInput(BaseModel):
    """Send one step's message; `idempotency_key` makes every retry the same message."""

    idempotency_key: str
    workflow_id: str
    run_id: str
    journey: str
    step: int
    customer_id: str
    channel: ChannelName
    topic: Topic = Topic.MARKETING
    content: MessageContent
    context: dict[str, Any] = Field(default_factory=dict)


class SendMessageResult(BaseModel):
    """`sent`, or `failed` for a permanent failure (the contact point was marked)."""

    status: str
    message_id: str | None = None
    reason: str | None = None
    cost: float = 0.0
    duplicate: bool = Field(default=False, description="True when an earlier attempt had sent it")
