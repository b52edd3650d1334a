"""Journey definitions and the workflow's input, result and queryable state."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

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
    # The request may have reached the provider and cannot be repeated safely (no
    # idempotency key there): treated like a send without a receipt.
    UNKNOWN = "unknown"


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


Operator = Literal[
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "missing", "contains", "older_than", "within"
]


class Condition(BaseModel):
    """One test on a profile field, a custom attribute or an event property.

    `field` is a typed profile field (`purchase_count`, `city`, `last_purchase_at`), a
    custom attribute (`attributes.shoe_size` or just `shoe_size`) or an event property
    (`event.cart_value`). `older_than`/`within` take a duration and test a timestamp:
    `{field: last_purchase_at, op: older_than, value: 180d}`.
    """

    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1, max_length=128)
    op: Operator = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("older_than", "within"):
            parsed = parse_duration(self.value)
            if isinstance(self.value, int | float) and not isinstance(self.value, bool):
                # Already seconds (a stored spec read back from a workflow's input).
                parsed = timedelta(seconds=self.value)
            if not isinstance(parsed, timedelta):
                raise ValueError(f"{self.op} needs a duration such as 30d or 6w, got {self.value!r}")
            self.value = parsed.total_seconds()
        elif self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"{self.op} needs a list value")
        elif self.op not in ("exists", "missing") and self.value is None:
            raise ValueError(f"{self.op} needs a value")
        return self


class Trigger(BaseModel):
    """The events that start a journey (`cart_abandoned`, `registered`, `purchase` ...)."""

    model_config = ConfigDict(extra="forbid")

    events: list[str] = Field(min_length=1)
    key_property: str | None = Field(
        default=None, description="Event property that keys the run, so one journey per cart/order may run"
    )
    deadline_property: str | None = Field(
        default=None, description="Event property holding the deadline (e.g. the promo code's expiry)"
    )
    reentry: timedelta | None = Field(
        default=None,
        description="A customer may enter again this long after their last entry (same key); without it a"
        " keyed journey runs once per key, ever, and an unkeyed one again once the last run ended",
    )

    # --- Audiences (#13): start when the customer enters or leaves a segment. Each adds
    # the event `segment_entered:<name>` / `segment_exited:<name>` to `events`, which is
    # what membership changes are routed as.
    segment_entered: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    segment_exited: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")

    _parse_reentry = field_validator("reentry", mode="before")(parse_duration)

    @model_validator(mode="before")
    @classmethod
    def _segment_events(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("segment_entered") or data.get("segment_exited")):
            events = list(data.get("events") or [])
            for kind in ("segment_entered", "segment_exited"):
                name = data.get(kind)
                if isinstance(name, str) and f"{kind}:{name}" not in events:
                    events.append(f"{kind}:{name}")
            data = {**data, "events": events}
        return data

    @model_serializer(mode="wrap")
    def _leave_out_unset_reentry(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec without re-entry serialises as before it existed: workers of the previous
        # release (a rolling deploy, a rollback) still read the journeys this one starts,
        # and an unchanged file keeps its content hash.
        data: dict[str, Any] = handler(self)
        if data.get("reentry") is None:
            data.pop("reentry", None)
        for kind in ("segment_entered", "segment_exited"):
            if data.get(kind) is None:
                data.pop(kind, None)
        return data

    @field_validator("reentry")
    @classmethod
    def _reentry_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be positive (e.g. 180d)")
        return value


class EntryRules(BaseModel):
    """Who may enter: every condition must hold on the profile (and the triggering event)."""

    model_config = ConfigDict(extra="forbid")

    conditions: list[Condition] = Field(default_factory=list)


class FrequencyCap(BaseModel):
    """At most `max` marketing messages per `per` to one customer, over all journeys."""

    model_config = ConfigDict(extra="forbid")

    max: int = Field(ge=1, le=1000)
    per: timedelta

    _parse_per = field_validator("per", mode="before")(parse_duration)

    @field_validator("per")
    @classmethod
    def _per_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive (e.g. 7d)")
        return value


class QuietHours(BaseModel):
    """No sends between `start` and `end` in the customer's own time zone."""

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time
    channels: list[ChannelName] | None = Field(default=None, description="Only these channels (default: all)")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class LoyaltyLoop(BaseModel):
    """Makes a journey a loop: each purchase accrues points and starts the chain again."""

    model_config = ConfigDict(extra="forbid")

    points_per_purchase: int = Field(default=100, ge=0)
    idle_timeout: timedelta = Field(
        default=timedelta(days=90), description="The loop ends after this long without a purchase"
    )
    max_rounds: int | None = Field(default=None, ge=1)

    _parse_idle = field_validator("idle_timeout", mode="before")(parse_duration)


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
    delay: timedelta | None = Field(
        default=None, description="A plain wait before this step (e.g. 1h after the cart was left)"
    )
    when: list[Condition] = Field(
        default_factory=list,
        alias="if",
        description="Send this step only when every condition holds on the profile and event data;"
        " two steps with opposite conditions make a branch",
    )

    _parse_wait = field_validator("wait", "delay", mode="before")(parse_duration)

    @field_validator("wait", "delay")
    @classmethod
    def _wait_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
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
    version: str = Field(default="1", max_length=32, description="Bump when editing; kept in the memo")
    trigger: Trigger | None = None
    entry: EntryRules = Field(default_factory=EntryRules)
    exit_on: list[str] = Field(default_factory=list, description="Events that end a running journey (cancel)")
    convert_on: list[str] = Field(
        default_factory=list, description="Events that count as the journey's conversion (e.g. purchase)"
    )
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    stay_active_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="A customer who reacted in a channel within this many days is kept there",
    )
    loop: LoyaltyLoop | None = None
    # --- Audiences (#13): only members of this segment enter (segments/*.yaml or built-in).
    audience: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Only members of this segment enter"
    )

    _parse_valid_for = field_validator("valid_for", mode="before")(parse_duration)

    @model_serializer(mode="wrap")
    def _leave_out_unset_audience(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # As Trigger.reentry: a spec without an audience serialises as before the field
        # existed, so older workers read it and an unchanged file keeps its content hash.
        data: dict[str, Any] = handler(self)
        if data.get("audience") is None:
            data.pop("audience", None)
        return data

    def content_hash(self) -> str:
        """A short hash of the whole definition: which version a running journey uses."""
        return hashlib.sha256(self.model_dump_json(by_alias=True).encode()).hexdigest()[:12]

    @property
    def uses_rules(self) -> bool:
        """True when any step rule or new step feature is in use (old specs stay on the old path)."""
        return bool(
            self.frequency_cap
            or self.quiet_hours
            or self.stay_active_days
            or any(s.delay or s.when for s in self.steps)
        )

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
