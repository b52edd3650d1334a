"""Database tables (sqlmodel): customers, contact points, the delivery log, events.

Shapes only; reads and writes live in activities/ and webhooks/.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Computed, DateTime, Dialect, Float, Index, UniqueConstraint, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnClause, FunctionElement
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (the only clock the tables use)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp column that always reads back aware, in UTC.

    PostgreSQL keeps the zone; SQLite hands timestamps back without one. Every timestamp
    the tables store is UTC, so a zone-less value read back is UTC: said once here rather
    than by every reader that compares a stored time with now.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to a zone-less timestamp read back (SQLite)."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JsonNumber(FunctionElement[float]):
    """The number at `key` of a JSON column, NULL when absent or not a number (never an error).

    A construct of its own because each database spells it differently, and because it is
    the expression of a generated column (`engagement_events.amount`), where only
    immutable, per-row SQL is allowed.
    """

    type = Float()
    inherit_cache = True
    name = "json_number"

    def __init__(self, column: Any, key: str) -> None:
        super().__init__(column)
        self.key = key


@compiles(JsonNumber, "postgresql")
def _json_number_pg(element: JsonNumber, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return (
        f"CASE WHEN json_typeof({column} -> '{element.key}') = 'number'"
        f" THEN CAST({column} ->> '{element.key}' AS DOUBLE PRECISION) END"
    )


@compiles(JsonNumber, "sqlite")
def _json_number_sqlite(element: JsonNumber, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return (
        f"CASE WHEN json_type({column}, '$.{element.key}') IN ('integer', 'real')"
        f" THEN json_extract({column}, '$.{element.key}') END"
    )


def _created() -> Any:
    # A column default (not only a Python one) so bulk INSERT ... VALUES gets it too.
    return Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime(), nullable=False, default=utcnow),
    )


def _ts() -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class ContactStatus(StrEnum):
    """Whether a contact point can receive messages."""

    VALID = "valid"
    INVALID = "invalid"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    BLOCKED = "blocked"


class Topic(StrEnum):
    """Why a message is sent; consent and frequency caps are kept per topic.

    Transactional messages (order status, receipts) are part of a service the customer
    asked for; marketing messages need the customer's consent and count against caps.
    """

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class DeliveryStatus(StrEnum):
    """Where one message is in its life."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    FAILED = "failed"
    # The provider may have it: the request went out and no answer came back, on a
    # provider that cannot be asked again with the same key. Never sent again.
    UNKNOWN = "unknown"


def _json(factory: type[dict[str, Any]] | type[list[Any]]) -> Any:
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


class Customer(SQLModel, table=True):
    """One person, keyed by the shop's own customer id; the single customer view.

    The typed columns are what segments and templates use most; anything else the
    shop knows lives in `attributes` (free-form JSON).
    """

    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=128)
    name: str | None = Field(default=None, max_length=200)
    gender: str | None = Field(default=None, max_length=16)
    birth_date: date | None = None
    timezone: str = Field(default="UTC", max_length=64)
    city: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=16)
    children_ages: list[int] = _json(list)
    favourite_categories: list[str] = _json(list)
    purchase_count: int = 0
    last_purchase_at: datetime | None = _ts()
    loyalty_points: int = 0
    preferred_channel: str | None = Field(default=None, max_length=32)
    attributes: dict[str, Any] = _json(dict)
    # Set when this profile was merged into another one: look-ups by the old id
    # (a journey started before the merge) follow it to the surviving profile.
    merged_into: str | None = Field(default=None, foreign_key="customers.id", index=True, max_length=128)
    erased_at: datetime | None = _ts()
    created_at: datetime = _created()
    updated_at: datetime | None = _ts()


class ExternalId(SQLModel, table=True):
    """An id of the customer in another system of the shop (CRM, loyalty cards, shop engine)."""

    __tablename__ = "customer_external_ids"
    # external_id first: look-ups by id (import, merge) use the index whatever the source.
    __table_args__ = (UniqueConstraint("external_id", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    source: str = Field(max_length=64)
    external_id: str = Field(max_length=256)
    created_at: datetime = _created()


class Consent(SQLModel, table=True):
    """The customer's decision for one channel and topic, with where and when it was given.

    No row means: transactional allowed, marketing not (nobody is marketed to by default).
    """

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("customer_id", "channel", "topic"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    channel: str = Field(max_length=32)
    topic: str = Field(default=Topic.MARKETING, max_length=32)
    granted: bool
    source: str | None = Field(default=None, max_length=200)
    changed_at: datetime = _created()


class CustomerMerge(SQLModel, table=True):
    """A record of two profiles merged into one: who survived, why, and what moved."""

    __tablename__ = "customer_merges"

    id: int | None = Field(default=None, primary_key=True)
    survivor_id: str = Field(index=True, max_length=128)
    merged_id: str = Field(index=True, max_length=128)
    reason: str = Field(max_length=500)
    details: dict[str, Any] = _json(dict)
    merged_at: datetime = _created()


class ContactPoint(SQLModel, table=True):
    """An address on one channel (email, phone, chat id, push token) and its state."""

    __tablename__ = "contact_points"
    __table_args__ = (
        UniqueConstraint("customer_id", "channel", "address"),
        # Merging finds other profiles that share an email or phone through this index.
        Index("ix_contact_points_address", "address"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    channel: str = Field(max_length=32)
    address: str = Field(max_length=2048)
    status: str = Field(default=ContactStatus.VALID, max_length=32)
    status_reason: str | None = Field(default=None, max_length=500)
    status_changed_at: datetime | None = _ts()
    created_at: datetime = _created()


class Delivery(SQLModel, table=True):
    """The delivery log: one row per message, keyed by its idempotency key."""

    __tablename__ = "deliveries"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=600)
    workflow_id: str = Field(index=True, max_length=512)
    # The run that sent it: a journey id can be reused later, and an event about an
    # old message must reach the run that sent it, not the current one.
    run_id: str = Field(max_length=64)
    journey: str = Field(index=True, max_length=64)
    step: int
    customer_id: str = Field(index=True, max_length=128)
    channel: str = Field(max_length=32)
    topic: str = Field(default=Topic.MARKETING, max_length=32)
    contact_point_id: int | None = Field(default=None, foreign_key="contact_points.id", ondelete="SET NULL")
    provider_message_id: str | None = Field(default=None, index=True, max_length=256)
    status: str = Field(default=DeliveryStatus.QUEUED, max_length=32)
    # The provider's own words (may quote the address; erasure clears it) ...
    failure_reason: str | None = Field(default=None, max_length=1000)
    # ... and the reason code the workflow is told instead (models.activities.FailureCode).
    failure_code: str | None = Field(default=None, max_length=32)
    content_hash: str | None = Field(default=None, max_length=64)
    cost: float = 0.0
    currency: str = Field(default="USD", max_length=3)
    created_at: datetime = _created()
    sent_at: datetime | None = _ts()
    delivered_at: datetime | None = _ts()
    opened_at: datetime | None = _ts()
    clicked_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    # The attempt that holds this until-time is the only one allowed to call the provider.
    claimed_until: datetime | None = _ts()
    attempts: int = 0
    # The experiment arm of the journey that sent it (issue 14); None outside experiments.
    variant: str | None = Field(default=None, max_length=32)


class ChannelHealth(SQLModel, table=True):
    """The last configuration error of one channel (a refused token, account or sender).

    Written by the send activity when a provider refuses our credentials; `recovered_at`
    is set by the next send that goes through. `python starter.py channels` shows it.
    """

    __tablename__ = "channel_health"

    channel: str = Field(primary_key=True, max_length=32)
    last_error: str = Field(max_length=1000)
    last_error_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Configuration errors since the channel last worked.
    errors: int = 0
    recovered_at: datetime | None = _ts()


class EngagementEvent(SQLModel, table=True):
    """An event about a message (open, click, bounce) or a customer (purchase, page view)."""

    __tablename__ = "engagement_events"

    id: int | None = Field(default=None, primary_key=True)
    # The sender's own id for the event: the same event delivered twice is stored once.
    event_id: str | None = Field(default=None, unique=True, max_length=256)
    delivery_id: int | None = Field(default=None, foreign_key="deliveries.id", index=True)
    workflow_id: str | None = Field(default=None, index=True, max_length=512)
    customer_id: str | None = Field(default=None, index=True, max_length=128)
    channel: str | None = Field(default=None, max_length=32)
    type: str = Field(max_length=32)
    source: str = Field(default="api", max_length=64)
    properties: dict[str, Any] = _json(dict)
    # properties["amount"] when it is a number, computed by the database on every write
    # (insert, merge, erasure's blanking), so a segment's "amount spent" sums a typed
    # column from an index instead of parsing each event's JSON (#13, migration 0014).
    amount: float | None = Field(
        default=None,
        sa_column=Column(Float(), Computed(JsonNumber(ColumnClause("properties"), "amount")), nullable=True),
    )
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    received_at: datetime = _created()
    # When the event was routed to the journeys it triggers or ends; None until then,
    # so a sender's retry after a failed routing routes it again instead of dropping it.
    routed_at: datetime | None = _ts()


class JourneyRun(SQLModel, table=True):
    """A journey started for a customer: how events about the customer find their journeys.

    The workflow records its own start and finish (activities/runs.py), so a row exists
    for every run even when the starter died right after starting it; `start_journey`
    writes the same row too (first writer wins), so an event right after the start finds
    the run before its first workflow task has run. Runs of older code are marked finished
    lazily, when a signal finds them gone.

    A loyalty loop is one row for its whole continue-as-new chain (`run_id` is the first
    run's), signalled by workflow id. `convert_on`/`exit_on` are the run's own snapshot of
    its definition (None on rows written before they were recorded: the journey file
    then decides).
    """

    __tablename__ = "journey_runs"
    __table_args__ = (UniqueConstraint("workflow_id", "run_id"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=512)
    run_id: str = Field(max_length=64)
    journey: str = Field(index=True, max_length=64)
    customer_id: str = Field(index=True, max_length=128)
    campaign: str | None = Field(default=None, max_length=128)
    workflow_type: str = Field(default="CascadeJourney", max_length=64)
    convert_on: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    exit_on: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    started_at: datetime = _created()
    finished_at: datetime | None = _ts()
    outcome: str | None = Field(default=None, max_length=32)


class OutboxSignal(SQLModel, table=True):
    """A signal an event implies, stored in the event's own transaction; the relay sends it.

    At least once: a row is deleted only after Temporal took the signal (or the journey
    was found finished), so a crash in between sends it again, and the journey ignores
    an `event_id` it has already seen. `not_before` is both the lease of the process that
    is sending it and the back-off after a failed attempt.
    """

    __tablename__ = "signal_outbox"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=256)
    workflow_id: str = Field(max_length=512)
    # None: the current run of the workflow id (a loyalty loop's continue-as-new chain).
    run_id: str | None = Field(default=None, max_length=64)
    signal: str = Field(max_length=32)
    payload: dict[str, Any] = _json(dict)
    created_at: datetime = _created()
    not_before: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=True))
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)


class SandboxMessage(SQLModel, table=True):
    """The outbox of the sandbox channels: what a real provider would have delivered.

    Unique by idempotency key, like a provider that honours one: a repeated call
    returns the first message's id instead of delivering again.
    """

    __tablename__ = "sandbox_outbox"

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(index=True, max_length=32)
    idempotency_key: str = Field(unique=True, max_length=600)
    provider_message_id: str = Field(unique=True, max_length=256)
    to_address: str = Field(max_length=2048)
    subject: str | None = Field(default=None, max_length=1000)
    body: str
    html: str | None = None
    created_at: datetime = _created()


class TrackedMessage(SQLModel, table=True):
    """The tracking identity of one message and the original links it carries.

    Written by `send_message` before the provider call. Tracking tokens name the message
    by `tracking_id` (a hash of the idempotency key: short enough for an SMS, and no
    customer id in a URL); the click redirect follows only `links`, never a URL from the
    request, so a tracking link can never become an open redirect.
    """

    __tablename__ = "tracked_messages"

    tracking_id: str = Field(primary_key=True, max_length=32)
    idempotency_key: str = Field(unique=True, max_length=600)
    links: list[str] = _json(list)
    created_at: datetime = _created()


class ApiKey(SQLModel, table=True):
    """A tenant's key for POST /v1/events: only a hash is stored, the key is shown once."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(index=True, max_length=64)
    name: str = Field(default="default", max_length=128)
    # The public part of the key, used to find the row; the rest is checked against the hash.
    prefix: str = Field(unique=True, max_length=32)
    key_hash: str = Field(max_length=128)
    created_at: datetime = _created()
    revoked_at: datetime | None = _ts()


class ReceiptToken(SQLModel, table=True):
    """A provider's one-time webhook token that has been used (Mailgun's `signature.token`).

    Mailgun signs the timestamp and token only, not the body: a token is bound to the
    first body it came with (its sha256), so a replay with another body is refused and
    the provider's own retry of the same body still goes through. Rows older than the
    signature's age window can never match again and are pruned as new ones arrive.
    """

    __tablename__ = "receipt_tokens"

    provider: str = Field(primary_key=True, max_length=32)
    token: str = Field(primary_key=True, max_length=128)
    body_sha256: str = Field(max_length=64)
    seen_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class RoutingDecision(SQLModel, table=True):
    """Why a step went out on its channel (optichannel routing, issue 16).

    One row per routed step, keyed like the step's delivery row (`idempotency_key`), so
    the delivery log joins to the decision and its reasons; written before the send,
    also when no channel was usable (`chosen` None).
    """

    __tablename__ = "routing_decisions"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=600)
    workflow_id: str = Field(index=True, max_length=512)
    journey: str = Field(max_length=64)
    step: int
    customer_id: str = Field(index=True, max_length=128)
    chosen: str | None = Field(default=None, max_length=32)
    explored: bool = False
    summary: str = Field(max_length=2000)
    ranking: list[dict[str, Any]] = _json(list)
    model_version: str = Field(max_length=32)
    decided_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class PreferenceChange(SQLModel, table=True):
    """A preference the customer stated (preferred channel), with where and when: the audit trail.

    The current value lives on the profile (`customers.preferred_channel`, read by
    routing); consents keep their own source and time in `consents`.
    """

    __tablename__ = "preference_changes"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(index=True, max_length=128)
    name: str = Field(max_length=64)
    value: str | None = Field(default=None, max_length=200)
    source: str = Field(max_length=200)
    changed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ExperimentDefinition(SQLModel, table=True):
    """An experiment as its first entrant saw it: the planned split the reports check against.

    Written once (insert-or-ignore) by the assignment activity; a later edit of the
    journey file does not change it, so the sample-ratio check compares with the split
    customers were really assigned under.
    """

    __tablename__ = "experiments"

    name: str = Field(primary_key=True, max_length=64)
    journey: str = Field(max_length=64)
    journey_version: str = Field(max_length=32)
    mode: str = Field(max_length=16)
    control_share: float
    planned_split: dict[str, float] = _json(dict)
    convert_on: list[str] = _json(list)
    window_seconds: float
    created_at: datetime = _created()


class ExperimentAssignment(SQLModel, table=True):
    """Which arm a customer is in: one row per (experiment, customer), whatever re-enters.

    `allocation` is the bandit's traffic split at the decision (None for a fixed split),
    kept so every bandit decision can be checked afterwards.
    """

    __tablename__ = "experiment_assignments"
    __table_args__ = (UniqueConstraint("experiment", "customer_id", name="uq_experiment_assignments_customer"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment: str = Field(index=True, max_length=64)
    customer_id: str = Field(index=True, max_length=128)
    variant: str = Field(max_length=32)
    journey: str = Field(max_length=64)
    workflow_id: str = Field(max_length=512)
    run_id: str = Field(max_length=64)
    assigned_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    allocation: dict[str, float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


# --- Analytics indexes (issue 15; migration 0010) ---------------------------------------
# Declared here, after the tables, so the tables' own definitions stay as they are.
# Last-touch attribution looks up a customer's messages by send time.
Index("ix_deliveries_customer_sent", Delivery.__table__.c.customer_id, Delivery.__table__.c.sent_at)  # type: ignore[attr-defined]
# The funnel's date range.
Index("ix_deliveries_created_at", Delivery.__table__.c.created_at)  # type: ignore[attr-defined]
# One journey's recent messages (the console's journey page; migration 0014).
Index("ix_deliveries_journey_created_at", Delivery.__table__.c.journey, Delivery.__table__.c.created_at)  # type: ignore[attr-defined]
# Conversions are events of one type (purchase) by customer.
Index("ix_engagement_events_type_customer", EngagementEvent.__table__.c.type, EngagementEvent.__table__.c.customer_id)  # type: ignore[attr-defined]
# The events received since the last refresh of the recent rollups (analytics/changes.py; migration 0018).
Index("ix_engagement_events_received_at", EngagementEvent.__table__.c.received_at)  # type: ignore[attr-defined]
Index("ix_journey_runs_started_at", JourneyRun.__table__.c.started_at)  # type: ignore[attr-defined]
# Runs a closed day's rollup (runs_daily) cannot hold: still running, or ended 34+ days
# after their start. analytics.funnel.OPEN_OR_LONG writes the same predicate (migration 0014).
OPEN_OR_LONG_PG = "outcome IS NULL OR finished_at IS NULL OR finished_at - started_at >= interval '34 days'"
OPEN_OR_LONG_SQLITE = "outcome IS NULL OR finished_at IS NULL OR julianday(finished_at) - julianday(started_at) >= 34"
Index(
    "ix_journey_runs_open_or_long",
    JourneyRun.__table__.c.journey,  # type: ignore[attr-defined]
    JourneyRun.__table__.c.started_at,  # type: ignore[attr-defined]
    postgresql_where=text(OPEN_OR_LONG_PG),
    sqlite_where=text(OPEN_OR_LONG_SQLITE),
)


# --- Audiences (#13) ---------------------------------------------------------------------
# Segment queries test a customer's events by type and time ("purchases in 90 days") and
# the funnel by the age of the last purchase or sign-up: these indexes answer them without
# a scan of the events table.
Index(
    "ix_engagement_events_customer_type_time",
    EngagementEvent.__table__.c.customer_id,  # type: ignore[attr-defined]
    EngagementEvent.__table__.c.type,  # type: ignore[attr-defined]
    EngagementEvent.__table__.c.occurred_at,  # type: ignore[attr-defined]
)
Index("ix_customers_last_purchase_at", Customer.__table__.c.last_purchase_at)  # type: ignore[attr-defined]
Index("ix_customers_created_at", Customer.__table__.c.created_at)  # type: ignore[attr-defined]
# Segment speed (#13, migration 0012): a behaviour rule is one grouped subquery over the
# events of a type; these hand it a customer's events in order (long windows) or only the
# recent ones (short windows) without reading the table, channel included.
_EVENTS = EngagementEvent.__table__  # type: ignore[attr-defined]
# Migration 0014 appends the typed amount, so a sum rule reads the index only.
Index(
    "ix_engagement_events_type_customer_time_amount",
    _EVENTS.c.type,
    _EVENTS.c.customer_id,
    _EVENTS.c.occurred_at,
    _EVENTS.c.channel,
    _EVENTS.c.amount,
)
Index(
    "ix_engagement_events_type_time_customer",
    _EVENTS.c.type,
    _EVENTS.c.occurred_at,
    _EVENTS.c.customer_id,
    _EVENTS.c.channel,
)
# An exact count corrects the last refresh's memberships for the customers changed since
# (cascade/audiences/corrected.py, migration 0020): each change is a range of one of these.
Index("ix_customers_updated_at", Customer.__table__.c.updated_at)  # type: ignore[attr-defined]
Index("ix_contact_points_created_at", ContactPoint.__table__.c.created_at)  # type: ignore[attr-defined]
Index("ix_contact_points_status_changed_at", ContactPoint.__table__.c.status_changed_at)  # type: ignore[attr-defined]
Index("ix_consents_changed_at", Consent.__table__.c.changed_at)  # type: ignore[attr-defined]
Index("ix_customer_merges_merged_at", CustomerMerge.__table__.c.merged_at)  # type: ignore[attr-defined]


class Broadcast(SQLModel, table=True):
    """A campaign to a whole segment: one cascade per member of its frozen audience."""

    __tablename__ = "broadcasts"

    id: str = Field(primary_key=True, max_length=128)
    segment: str = Field(max_length=64)
    journey: str = Field(max_length=64)
    send_at: datetime | None = _ts()
    local_time: str | None = Field(default=None, max_length=8)
    # Set in the same transaction that writes the audience snapshot: None until then.
    audience: int | None = None
    created_at: datetime = _created()


class BroadcastRecipient(SQLModel, table=True):
    """One member of a broadcast's frozen audience and what the broadcast did for them.

    `status` None is pending; it is set once (started, skipped or failed) by an UPDATE
    that only touches pending rows, so a retried page counts nobody twice.
    """

    __tablename__ = "broadcast_recipients"

    broadcast_id: str = Field(primary_key=True, max_length=128)
    customer_id: str = Field(primary_key=True, max_length=128)
    status: str | None = Field(default=None, max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    workflow_id: str | None = Field(default=None, max_length=512)


class SegmentMembership(SQLModel, table=True):
    """A stretch of time a customer was in a segment: entered, and exited (None while a member).

    Kept current by the event path (the customer an event is about) and by a Temporal
    Schedule (transitions caused by time alone, such as becoming dormant).
    """

    __tablename__ = "segment_memberships"
    __table_args__ = (
        # Who is in a segment now, and one customer's open memberships.
        Index("ix_segment_memberships_open", "segment", "exited_at", "customer_id"),
        Index("ix_segment_memberships_customer", "customer_id", "segment"),
    )

    id: int | None = Field(default=None, primary_key=True)
    segment: str = Field(max_length=64)
    customer_id: str = Field(max_length=128)
    entered_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    exited_at: datetime | None = _ts()


class SegmentRefresh(SQLModel, table=True):
    """When a segment's memberships were last brought up to date for everyone, and for which definition.

    A count read from the open memberships is exact as of `refreshed_at`, and since then
    current for the customers whose events came through the events API (the event path
    keeps their memberships); time alone, profile edits, merges and erasures show at the
    next refresh. `definition` is a digest of the segment's compiled
    query: a count is read from the memberships only while it matches the definition in
    force, so editing a segment's file (or a threshold) falls back to counting by the query
    until the next refresh (#13).
    """

    __tablename__ = "segment_refreshes"

    segment: str = Field(primary_key=True, max_length=64)
    definition: str = Field(max_length=64)
    refreshed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# How many of a customer's latest events of a type `event_recency` keeps (see below).
RECENCY_DEPTH = 3


class EventRecency(SQLModel, table=True):
    """When a customer's n-th latest event of a type happened (n = 1..RECENCY_DEPTH).

    "At least n purchases in 365 days" holds exactly when the n-th latest purchase is
    within 365 days, and "none in 90 days" when the latest is not: a segment count reads
    one row per customer from here instead of every event in the window (#13). `channel`
    is "" for the events of every channel together, else the events of that channel.
    Derived from `engagement_events` and rewritten, for the customers and types an event
    write touches, in that write's transaction (cascade/events/recency.py).
    """

    __tablename__ = "event_recency"
    __table_args__ = (
        # A count reads one range: the n-th latest of a type (and channel) since a moment.
        Index("ix_event_recency_type_rank_time", "type", "channel", "rank", "occurred_at", "customer_id"),
    )

    customer_id: str = Field(primary_key=True, max_length=128)
    type: str = Field(primary_key=True, max_length=32)
    channel: str = Field(primary_key=True, max_length=32)
    rank: int = Field(primary_key=True)
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class StepSkip(SQLModel, table=True):
    """A journey step that sent nothing, and why (no usable contact, a condition, a cap...).

    A skipped step leaves no row in the delivery log; its reason lives in the journey's
    state. The journey writes its skipped steps here when it ends (activities/runs.py),
    so the funnel can count them by reason. `skipped_at` is the run's end: the state does
    not time each skip.
    """

    __tablename__ = "step_skips"
    __table_args__ = (
        UniqueConstraint("workflow_id", "run_id", "step"),
        Index("ix_step_skips_journey_time", "journey", "skipped_at"),
        Index("ix_step_skips_time", "skipped_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(max_length=512)
    run_id: str = Field(max_length=64)
    journey: str = Field(max_length=64)
    campaign: str | None = Field(default=None, max_length=128)
    variant: str | None = Field(default=None, max_length=32)
    customer_id: str = Field(index=True, max_length=128)
    step: int
    channel: str = Field(max_length=32)
    reason: str = Field(max_length=200)
    skipped_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class FunnelDaily(SQLModel, table=True):
    """The funnel's figures per day and journey/step/channel/campaign/variant, for closed days.

    A day is rolled up once it is older than `analytics_freeze_days` (by then its messages'
    reactions and attributed purchases are in); the funnel reads these rows for such days
    and the delivery log for the rest (analytics.funnel). Conversions are counted with the
    default attribution (7 days, `purchase`); a funnel asked with other ones reads the log.
    """

    __tablename__ = "funnel_daily"
    __table_args__ = (Index("ix_funnel_daily_day_journey", "day", "journey"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date
    journey: str = Field(max_length=64)
    step: int
    channel: str = Field(max_length=32)
    campaign: str | None = Field(default=None, max_length=128)
    variant: str | None = Field(default=None, max_length=32)
    messages: int = 0
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    failed: int = 0
    unknown: int = 0
    unsubscribed: int = 0
    converted: int = 0
    revenue: float = 0.0
    cost: float = 0.0


class ReactionDaily(SQLModel, table=True):
    """Time to react per day and journey/channel/campaign/variant, as a histogram, for closed days.

    Built like funnel_daily (analytics.funnel.refresh_reaction_rollup): `bucket` is one of
    analytics.funnel.REACT_BUCKETS' labels, `reactions` the messages whose first reaction
    fell in it and `seconds` the sum of their delays (for the mean).
    """

    __tablename__ = "reaction_daily"
    __table_args__ = (Index("ix_reaction_daily_day_journey", "day", "journey"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date
    journey: str = Field(max_length=64)
    channel: str = Field(max_length=32)
    campaign: str | None = Field(default=None, max_length=128)
    variant: str | None = Field(default=None, max_length=32)
    bucket: str = Field(max_length=16)
    reactions: int = 0
    seconds: float = 0.0


class RunsDaily(SQLModel, table=True):
    """Journey runs started on one day per journey/campaign and outcome, for closed days.

    Only runs that ended within 34 days of their start (by then known when a day is rolled
    up); the others, and those still running, are always counted from journey_runs
    through the partial index ix_journey_runs_open_or_long (analytics.funnel.entries).
    """

    __tablename__ = "runs_daily"
    __table_args__ = (Index("ix_runs_daily_day_journey", "day", "journey"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date
    journey: str = Field(max_length=64)
    campaign: str | None = Field(default=None, max_length=128)
    outcome: str = Field(max_length=32)
    runs: int = 0


class RollupState(SQLModel, table=True):
    """How far a rollup has been built: everything before `until` is in it, final (closed
    days); the days from `until` to `recent_until` are in it too, provisionally, as the log
    was at `recent_until` (replaced by each refresh; None: no recent rows)."""

    __tablename__ = "rollup_state"

    name: str = Field(primary_key=True, max_length=64)
    until: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    recent_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class SavingsDaily(SQLModel, table=True):
    """Savings of the journey runs started on one day, per journey and campaign, for closed days.

    Built like funnel_daily (analytics.money): the counterfactuals are judged with the
    prices, journey files and contacts of the time the day was rolled up.
    """

    __tablename__ = "savings_daily"
    __table_args__ = (Index("ix_savings_daily_day_journey", "day", "journey"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date
    journey: str = Field(max_length=64)
    campaign: str | None = Field(default=None, max_length=128)
    runs: int = 0
    actual: float = 0.0
    all_usable: float = 0.0
    dearest: float = 0.0
