"""Journey definitions and the workflow's input, result and queryable state."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.tables import Topic


class ChannelName(StrEnum):
    """Every channel a cascade step can use, cheapest first by convention."""

    EMAIL = "email"
    TELEGRAM = "telegram"
    VK = "vk"
    VIBER = "viber"
    WHATSAPP = "whatsapp"
    WEBPUSH = "webpush"
    FCM = "fcm"
    SMS = "sms"
    VOICE = "voice"


class Reaction(StrEnum):
    """What a step waits for; each level implies the ones before it."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    CONVERTED = "converted"


REACTION_RANK: dict[str, int] = {r.value: i for i, r in enumerate(Reaction, start=1)}


class Outcome(StrEnum):
    """How a journey ended."""

    REACTED = "reacted"
    EXHAUSTED = "exhausted"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    UNSUBSCRIBED = "unsubscribed"
    UNREACHABLE = "unreachable"


class StepStatus(StrEnum):
    """What happened to one cascade step."""

    PENDING = "pending"
    SKIPPED = "skipped"
    SENT = "sent"
    FAILED = "failed"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_TEMPLATES = SandboxedEnvironment(autoescape=False)


def parse_duration(value: Any) -> Any:
    """Accept "90s", "15m", "36h", "2d", "1w" besides what pydantic reads (seconds, ISO 8601)."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        amount, unit = match.groups()
        return timedelta(seconds=float(amount) * _UNIT_SECONDS[unit.lower()])
    return value


class MessageContent(BaseModel):
    """One message for one channel. Text fields are Jinja2 templates over the profile."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, description="Email subject / push title")
    body: str = Field(min_length=1, description="Plain text: SMS, messenger, push, voice")
    html: str | None = Field(default=None, description="Rich HTML body of an email")
    url: str | None = Field(default=None, description="Where a click should lead")

    @field_validator("subject", "body", "html")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _TEMPLATES.parse(value)
            except TemplateSyntaxError as exc:
                raise ValueError(f"template error on line {exc.lineno}: {exc.message}") from exc
        return value


class JourneyStep(BaseModel):
    """One rung of the cascade: send on `channel`, then wait `wait` for `await_reaction`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    channel: ChannelName
    content: MessageContent
    wait: timedelta = Field(default=timedelta(days=1), description="How long to wait for a reaction")
    await_reaction: Reaction = Field(default=Reaction.OPENED, alias="await")

    _parse_wait = field_validator("wait", mode="before")(parse_duration)

    @field_validator("wait")
    @classmethod
    def _wait_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive (e.g. 30s, 15m, 36h, 2d)")
        return value


class JourneySpec(BaseModel):
    """A named cascade: ordered steps, an optional campaign tag and time limit."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Used in workflow ids")
    description: str = ""
    campaign: str | None = None
    topic: Topic = Field(
        default=Topic.MARKETING, description="transactional: order status, receipts (no marketing consent needed)"
    )
    steps: list[JourneyStep] = Field(min_length=1)
    valid_for: timedelta | None = Field(
        default=None, description="Deadline relative to the start, e.g. a promo code's life"
    )

    _parse_valid_for = field_validator("valid_for", mode="before")(parse_duration)

    @field_validator("valid_for")
    @classmethod
    def _valid_for_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be positive")
        return value


class JourneyInput(BaseModel):
    """Input of the CascadeJourney workflow: the snapshotted definition and the customer.

    The spec is copied into the workflow at start, so editing a journey file never
    changes a journey that is already running.
    """

    spec: JourneySpec
    customer_id: str = Field(min_length=1, max_length=128)
    deadline: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict, description="Extra template fields")

    @model_validator(mode="after")
    def _deadline_aware(self) -> JourneyInput:
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("deadline must carry a time zone (e.g. 2026-12-31T23:59:00+00:00)")
        return self


class StepRecord(BaseModel):
    """What happened at one step, as seen by the workflow."""

    index: int
    channel: ChannelName
    status: StepStatus = StepStatus.PENDING
    reason: str | None = None
    message_id: str | None = None
    sent_at: datetime | None = None
    reaction: Reaction | None = None


class JourneyState(BaseModel):
    """Where a journey stands: returned by the `state` query and, at the end, the result."""

    journey: str
    customer_id: str
    status: str
    current_step: int | None = None
    current_channel: ChannelName | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    reaction: Reaction | None = None
    reacted_step: int | None = None
    outcome: Outcome | None = None
    outcome_reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JourneyResult(JourneyState):
    """The workflow's result: its final state."""
