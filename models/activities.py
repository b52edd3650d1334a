"""Inputs and results of the activities a journey calls."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from models.journey import ChannelName, MessageContent
from models.tables import Topic


class CheckContactInput(BaseModel):
    """Is the customer reachable on `channel` right now?"""

    customer_id: str
    channel: ChannelName
    topic: Topic = Topic.MARKETING


class CheckContactResult(BaseModel):
    """Usable or not, and why not. No address: personal data stays out of the history."""

    usable: bool
    reason: str | None = None
    contact_point_id: int | None = None


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
