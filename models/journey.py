"""Journey definitions and the workflow's input, result and queryable state: the wire types.

These shapes cross Temporal (a workflow's input snapshots the spec), so they decode
leniently whatever an in-flight journey's input carries. The authoring checks (templates
parse, durations positive, a condition's value fits its operator, ...) live in
cascade/journeys/definition.py and run when a journey file or a JourneySpec is started.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
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
    # In an experiment's control group: sent nothing, its conversion window observed.
    HELD_OUT = "held_out"


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


def parse_duration(value: Any) -> Any:
    """Accept "90s", "15m", "36h", "2d", "1w" besides what pydantic reads (seconds, ISO 8601)."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        amount, unit = match.groups()
        return timedelta(seconds=float(amount) * _UNIT_SECONDS[unit.lower()])
    return value


class Button(BaseModel):
    """A link button under a messenger message or push notification (templates allowed)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=1)


class PushContent(BaseModel):
    """The push-notification variant (web push, FCM): short title and body, optional images."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, description="Defaults to the subject")
    body: str | None = Field(default=None, description="Defaults to the message body")
    icon: str | None = None
    image: str | None = None


class WhatsAppTemplate(BaseModel):
    """An approved WhatsApp message template: business-initiated messages must use one."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$")
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    params: list[str] = Field(default_factory=list, description="Body parameters {{1}}, {{2}}, ... as templates")


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
    def _duration_in_seconds(self) -> Condition:
        # A readable duration is stored as seconds; a value that is no duration stays as it
        # is (the authoring check in cascade/journeys/definition.py refuses it at load).
        if self.op in ("older_than", "within"):
            parsed = parse_duration(self.value)
            if isinstance(self.value, int | float) and not isinstance(self.value, bool):
                # Already seconds (a stored spec read back from a workflow's input).
                parsed = timedelta(seconds=self.value)
            if isinstance(parsed, timedelta):
                self.value = parsed.total_seconds()
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


class QuietHours(BaseModel):
    """No sends between `start` and `end` in the customer's own time zone."""

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time
    channels: list[ChannelName] | None = Field(default=None, description="Only these channels (default: all)")


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


class AdaptiveWait(BaseModel):
    """`wait: adaptive`: wait as long as this customer (or the channel) takes to react, within bounds.

    In YAML: `wait: adaptive` with `wait_bounds: {min: 10m, max: 2d}` (both optional).
    """

    model_config = ConfigDict(extra="forbid")

    min: timedelta = Field(default=timedelta(minutes=10), description="Never escalate sooner than this")
    max: timedelta = Field(default=timedelta(days=2), description="Never wait longer than this")
    default: timedelta = Field(default=timedelta(days=1), description="The wait without enough history")
    percentile: float = Field(default=90.0, gt=0, le=100, description="Of the reaction delays")

    _parse = field_validator("min", "max", "default", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveWait:
        if not timedelta(0) < self.min <= self.max:
            raise ValueError(f"need 0 < min <= max, got min {self.min}, max {self.max}")
        return self


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

    # --- optichannel routing (issue 16): `wait: adaptive` ---
    adaptive_wait: AdaptiveWait | None = Field(
        default=None, description="Set by `wait: adaptive`; the step's `wait` is then its upper bound"
    )

    @model_validator(mode="before")
    @classmethod
    def _adaptive_wait(cls, data: Any) -> Any:
        # `wait: adaptive` + `wait_bounds` is the YAML form; the stored form (a spec read
        # back from a workflow's input) has `adaptive_wait` and a plain `wait`.
        if not isinstance(data, dict) or ("wait_bounds" not in data and data.get("wait") != "adaptive"):
            return data
        data = dict(data)
        bounds = data.pop("wait_bounds", None)
        if data.get("wait") != "adaptive":
            raise ValueError("wait_bounds needs `wait: adaptive`")
        if bounds is not None and not isinstance(bounds, dict):
            raise ValueError("wait_bounds must be a mapping such as {min: 10m, max: 2d}")
        data["adaptive_wait"] = AdaptiveWait.model_validate(bounds or {})
        data["wait"] = data["adaptive_wait"].max
        return data

    # --- send-time optimisation (issue 16): `send_at: best` within `send_within` ---
    send_at: Literal["now", "best"] = Field(
        default="now", description="best: at the hour of week this customer reacts, within `send_within`"
    )
    send_within: timedelta = Field(default=timedelta(hours=24), description="The window `send_at: best` looks in")

    _parse_send_within = field_validator("send_within", mode="before")(parse_duration)

    @field_validator("send_within")
    @classmethod
    def _window_sane(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(days=14):
            raise ValueError("must be positive and at most 14d (e.g. 24h)")
        return value

    @model_serializer(mode="wrap")
    def _leave_out_fixed_wait(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A step without adaptive wait or send time serialises as before they existed
        # (content hashes, workers of the previous release reading the spec).
        data: dict[str, Any] = handler(self)
        if data.get("adaptive_wait") is None:
            data.pop("adaptive_wait", None)
        if data.get("send_at") == "now":
            data.pop("send_at", None)
            data.pop("send_within", None)
        return data

    _parse_wait = field_validator("wait", "delay", mode="before")(parse_duration)


# --- experiments (issue 14) -------------------------------------------------------------

_ARM_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
CONTROL_ARM = "control"


def _parse_share(value: Any) -> Any:
    """Accept "10%" besides 0.1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            return value
    return value


class ContentChange(BaseModel):
    """The fields a content variant replaces in one step's message; the rest stay as in the step."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = None
    body: str | None = Field(default=None, min_length=1)
    html: str | None = None
    url: str | None = None
    sms: str | None = None
    messenger: str | None = None
    voice: str | None = None
    push: PushContent | None = None
    buttons: list[Button] | None = Field(default=None, max_length=10)
    whatsapp: WhatsAppTemplate | None = None

    def apply(self, content: MessageContent) -> MessageContent:
        """`content` with this variant's fields in place of the step's own."""
        changed = {name: getattr(self, name) for name in self.model_fields_set if getattr(self, name) is not None}
        return content.model_copy(update=changed)


class ExperimentVariant(BaseModel):
    """One arm: a weight, and either its own step chain or content changes per step (or neither:
    the journey as written, e.g. the baseline of a subject-line test)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_ARM_NAME, description="Used in reports, the Variant attribute and utm_content")
    weight: float = Field(default=1.0, gt=0, le=1000)
    steps: list[JourneyStep] | None = Field(
        default=None, min_length=1, description="Journey-level variant: this chain instead of the journey's steps"
    )
    content: dict[int, ContentChange] = Field(
        default_factory=dict, description="Content variant: step index -> the message fields to replace"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ExperimentVariant:
        if self.steps is not None and self.content:
            raise ValueError("give either steps (its own chain) or content (changes per step), not both")
        return self


class Experiment(BaseModel):
    """An A/B or multivariate test inside a journey, with a control group that is sent nothing.

    Customers are assigned by a hash of the experiment name and their id (the same arm on
    every retry, replay and re-entry). `mode: bandit` moves traffic between content
    variants by Thompson sampling; the control group keeps its share either way.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="The experiment id (reports, hashing)")
    mode: Literal["ab", "bandit"] = "ab"
    control: float = Field(default=0.0, ge=0.0, le=0.9, description="Share held out and sent nothing (0.1 or 10%)")
    window: timedelta = Field(default=timedelta(days=7), description="Conversions count this long after entry")
    floor: float = Field(default=0.05, ge=0.0, le=0.5, description="Bandit: least traffic share per variant")
    variants: list[ExperimentVariant] = Field(min_length=1, max_length=20)

    _parse_control = field_validator("control", mode="before")(_parse_share)
    _parse_window = field_validator("window", mode="before")(parse_duration)

    @field_validator("window")
    @classmethod
    def _window_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive (e.g. 7d)")
        return value

    @field_validator("variants")
    @classmethod
    def _names_unique(cls, value: list[ExperimentVariant]) -> list[ExperimentVariant]:
        names = [v.name for v in value]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dupes)}")
        if CONTROL_ARM in names:
            raise ValueError(f"{CONTROL_ARM!r} is the control group's name; set `control: 10%` instead")
        return value

    @model_validator(mode="after")
    def _arms(self) -> Experiment:
        if len(self.variants) + (self.control > 0) < 2:
            raise ValueError("an experiment needs two arms: add a variant or a control share")
        if self.mode == "bandit":
            if any(v.steps is not None for v in self.variants):
                raise ValueError("bandit mode is for content variants; a variant with its own steps needs mode: ab")
            if len(self.variants) < 2:
                raise ValueError("bandit mode needs at least two variants")
            if self.floor * len(self.variants) > 1.0:
                raise ValueError(f"floor {self.floor} is more than 1/{len(self.variants)} of the traffic")
        return self

    @property
    def weights(self) -> dict[str, float]:
        """Variant name -> relative weight (the control share aside)."""
        return {v.name: v.weight for v in self.variants}

    def planned_split(self) -> dict[str, float]:
        """Every arm's planned share of entrants, the control group included (sums to 1)."""
        total = sum(v.weight for v in self.variants)
        split = {v.name: (1.0 - self.control) * v.weight / total for v in self.variants}
        return ({CONTROL_ARM: self.control} if self.control > 0 else {}) | split

    def steps_for(self, arm: str, steps: list[JourneyStep]) -> list[JourneyStep]:
        """The chain a customer in `arm` walks: the variant's own, or `steps` with its content changes.

        The control group walks none.
        """
        if arm == CONTROL_ARM:
            return []
        variant = next(v for v in self.variants if v.name == arm)
        if variant.steps is not None:
            return list(variant.steps)
        return [
            s.model_copy(update={"content": variant.content[i].apply(s.content)}) if i in variant.content else s
            for i, s in enumerate(steps)
        ]


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
    # --- optichannel routing (issue 16) ---
    route: Literal["fixed", "optichannel"] = Field(
        default="fixed",
        description="optichannel: the steps are a pool; each step sends on the customer's cheapest"
        " channel per expected reaction instead of the next in order",
    )
    max_steps: int | None = Field(default=None, ge=1, le=20, description="optichannel: send at most this many steps")
    max_cost_per_reaction: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="optichannel: what one reaction is worth; a channel dearer than this per expected"
        " reaction (judged on the customer's own history there) is not sent",
    )
    experiment: Experiment | None = Field(default=None, description="A/B, multivariate or bandit test")

    @field_validator("route")
    @classmethod
    def _pool_channels_once(cls, value: str, info: ValidationInfo) -> str:
        steps = info.data.get("steps") or []
        if value == "optichannel":
            seen: dict[str, int] = {}
            for i, step in enumerate(steps):
                if step.channel in seen:
                    raise ValueError(
                        f"optichannel needs each channel once in steps: {step.channel.value}"
                        f" is at steps {seen[step.channel]} and {i}"
                    )
                seen[step.channel] = i
        return value

    @field_validator("max_cost_per_reaction")
    @classmethod
    def _ceiling_needs_a_pool(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("route") != "optichannel":
            raise ValueError("max_cost_per_reaction needs route: optichannel")
        return value

    @model_serializer(mode="wrap")
    def _leave_out_unused_features(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec that uses no routing, experiment or audience serialises as before they
        # existed: its content hash stays, and workers of the previous release still read
        # its input.
        data: dict[str, Any] = handler(self)
        if data.get("route") == "fixed":
            data.pop("route", None)
        if data.get("max_steps") is None:
            data.pop("max_steps", None)
        if data.get("max_cost_per_reaction") is None:
            data.pop("max_cost_per_reaction", None)
        if data.get("experiment") is None:
            data.pop("experiment", None)
        if data.get("audience") is None:
            data.pop("audience", None)
        return data

    # --- Audiences (#13): only members of this segment enter (segments/*.yaml or built-in).
    audience: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Only members of this segment enter"
    )

    _parse_valid_for = field_validator("valid_for", mode="before")(parse_duration)

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

    @field_validator("experiment")
    @classmethod
    def _experiment_fits_steps(cls, value: Experiment | None, info: ValidationInfo) -> Experiment | None:
        steps = info.data.get("steps")
        if value is None or steps is None:
            return value
        for variant in value.variants:
            for index in variant.content:
                if not 0 <= index < len(steps):
                    raise ValueError(
                        f"variant {variant.name!r} changes the content of step {index},"
                        f" but the journey has steps 0-{len(steps) - 1}"
                    )
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
    triggered_at: datetime | None = Field(
        default=None,
        description="When the trigger happened, if before the start request: the first step's delay counts "
        "from it (default: from the start request, never from when a worker first ran the journey)",
    )


class StepRecord(BaseModel):
    """What happened at one step, as seen by the workflow."""

    index: int
    channel: ChannelName
    status: StepStatus = StepStatus.PENDING
    reason: str | None = None
    message_id: str | None = None
    sent_at: datetime | None = None
    reaction: Reaction | None = None
    # Why this step's channel and wait were chosen (optichannel routing, adaptive wait).
    routing: str | None = None
    wait_reason: str | None = None
    send_reason: str | None = None


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
    variant: str | None = Field(default=None, description="The experiment arm (or `control`), if any")


class JourneyResult(JourneyState):
    """The workflow's result: its final state."""
