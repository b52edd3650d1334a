"""Database tables (sqlmodel): customers, contact points, the delivery log, events.

Shapes only; reads and writes live in activities/ and webhooks/.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (the only clock the tables use)."""
    return datetime.now(UTC)


def _created() -> Any:
    # A column default (not only a Python one) so bulk INSERT ... VALUES gets it too.
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=False, default=utcnow),
    )


def _ts() -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class ContactStatus(StrEnum):
    """Whether a contact point can receive messages."""

    VALID = "valid"
    INVALID = "invalid"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    BLOCKED = "blocked"


class DeliveryStatus(StrEnum):
    """Where one message is in its life."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    FAILED = "failed"


class Customer(SQLModel, table=True):
    """One person, keyed by the shop's own customer id."""

    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=128)
    name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()


class ContactPoint(SQLModel, table=True):
    """An address on one channel (email, phone, chat id, push token) and its state."""

    __tablename__ = "contact_points"
    __table_args__ = (UniqueConstraint("customer_id", "channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    channel: str = Field(max_length=32)
    address: str = Field(max_length=2048)
    status: str = Field(default=ContactStatus.VALID, max_length=32)
    status_reason: str | None = Field(default=None, max_length=500)
    status_changed_at: datetime | None = _ts()
    consent: bool = True
    consent_source: str | None = Field(default=None, max_length=200)
    consent_at: datetime | None = _ts()


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
    contact_point_id: int | None = Field(default=None, foreign_key="contact_points.id")
    provider_message_id: str | None = Field(default=None, index=True, max_length=256)
    status: str = Field(default=DeliveryStatus.QUEUED, max_length=32)
    failure_reason: str | None = Field(default=None, max_length=1000)
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


class EngagementEvent(SQLModel, table=True):
    """An event reported about a message or a journey (open, click, purchase, ...)."""

    __tablename__ = "engagement_events"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int | None = Field(default=None, foreign_key="deliveries.id", index=True)
    workflow_id: str = Field(index=True, max_length=512)
    customer_id: str | None = Field(default=None, index=True, max_length=128)
    type: str = Field(max_length=32)
    source: str = Field(default="api", max_length=64)
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = _created()


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
