"""Engagement events: signal inputs of a journey and the webhook request that carries them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngagementType(StrEnum):
    """What a provider, our tracking links or the shop reported about a message."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    CONVERTED = "converted"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"


class EngagementInput(BaseModel):
    """Signal input: one event, tied to the step whose message it concerns when known."""

    type: EngagementType
    step: int | None = Field(default=None, ge=0, description="Step index of the message, if known")
    message_id: str | None = None
    occurred_at: datetime | None = None


class CancelInput(BaseModel):
    """Signal input: stop the journey now, with a reason for the record."""

    reason: str = "cancelled by operator"


class EngagementRequest(BaseModel):
    """Body of POST /v1/engagement: name the message or the journey, and what happened."""

    model_config = ConfigDict(extra="forbid")

    event: EngagementType
    message_id: str | None = Field(
        default=None, max_length=256, description="Provider message id from the delivery log"
    )
    workflow_id: str | None = Field(
        default=None, max_length=512, description="Journey workflow id (e.g. for conversions)"
    )
    occurred_at: datetime | None = None

    @model_validator(mode="after")
    def _exactly_one_target(self) -> EngagementRequest:
        if (self.message_id is None) == (self.workflow_id is None):
            raise ValueError("give exactly one of message_id or workflow_id")
        return self


class EngagementResponse(BaseModel):
    """Answer of POST /v1/engagement."""

    workflow_id: str
    step: int | None
    signalled: bool
    detail: str
