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


def _check_template(value: str | None) -> str | None:
    if value is not None:
        try:
            _TEMPLATES.parse(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on line {exc.lineno}: {exc.message}") from exc
    return value


class Button(BaseModel):
    """A link button under a messenger message or push notification (templates allowed)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=1)

    _templates = field_validator("text", "url")(_check_template)


class PushContent(BaseModel):
    """The push-notification variant (web push, FCM): short title and body, optional images."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, description="Defaults to the subject")
    body: str | None = Field(default=None, description="Defaults to the message body")
    icon: str | None = None
    image: str | None = None

    _templates = field_validator("title", "body", "icon", "image")(_check_template)


class WhatsAppTemplate(BaseModel):
    """An approved WhatsApp message template: business-initiated messages must use one."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$")
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    params: list[str] = Field(default_factory=list, description="Body parameters {{1}}, {{2}}, ... as templates")

    @field_validator("params")
    @classmethod
    def _params_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            _check_template(item)
        return value


class MessageContent(BaseModel):
    """One message, with per-channel variants. Text fields are Jinja2 templates over the profile.

    `body` is the default text everywhere; a variant replaces it on its channel:
    `sms` (short text), `messenger` (Telegram/VK/Viber/WhatsApp text), `push`
    (title/body/icon/image), `voice` (the text-to-speech script), `whatsapp` (an
    approved template). `buttons` go under messenger messages and push notifications.
    """

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, description="Email subject / push title")
    body: str = Field(min_length=1, description="Plain text: SMS, messenger, push, voice")
    html: str | None = Field(default=None, description="Rich HTML body of an email")
    url: str | None = Field(default=None, description="Where a click should lead")
    sms: str | None = Field(default=None, description="Short SMS variant of the body")
    messenger: str | None = Field(default=None, description="Messenger variant of the body")
    voice: str | None = Field(default=None, description="Text-to-speech script of a call")
    push: PushContent | None = None
    buttons: list[Button] = Field(default_factory=list, max_length=10)
    whatsapp: WhatsAppTemplate | None = None

    @field_validator("subject", "body", "html", "url", "sms", "messenger", "voice")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        return _check_template(value)

    def template_sources(self) -> list[tuple[str, str]]:
        """Every template in this content as (field path, source), e.g. ("buttons.0.url", ...)."""
        sources: list[tuple[str, str | None]] = [
            ("subject", self.subject),
            ("body", self.body),
            ("html", self.html),
            ("url", self.url),
            ("sms", self.sms),
            ("messenger", self.messenger),
            ("voice", self.voice),
        ]
        if self.push is not None:
            sources += [(f"push.{k}", getattr(self.push, k)) for k in ("title", "body", "icon", "image")]
        for i, button in enumerate(self.buttons):
            sources += [(f"buttons.{i}.text", button.text), (f"buttons.{i}.url", button.url)]
        if self.whatsapp is not None:
            sources += [(f"whatsapp.params.{i}", p) for i, p in enumerate(self.whatsapp.params)]
        return [(path, source) for path, source in sources if source is not None]


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
