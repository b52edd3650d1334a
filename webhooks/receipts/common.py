"""What every provider receipt does once its signature is checked: find the message, record, signal."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException, Request
from pydantic import SecretStr
from sqlmodel import col, delete, select

from cascade.events.engagement import apply_delivery_event, delivery_by_message_id
from cascade.events.store import insert_event
from cascade.events.unsubscribe import unsubscribe_contact
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from models.events import EngagementType
from models.ids import is_visible_id
from models.tables import ContactPoint, ContactStatus, ReceiptToken, utcnow

log = get_logger("webhooks.receipts")


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def require_secret(secret: SecretStr | None, provider: str) -> bytes:
    """The provider's secret; 401 when it is not configured (nothing can be verified)."""
    if secret is None or not secret.get_secret_value():
        raise HTTPException(401, f"signature: {provider} receipts are not configured on this server")
    return secret.get_secret_value().encode()


def check(expected: str | bytes, given: str | None, header: str) -> None:
    """Constant-time signature comparison; 401 naming the header when it fails."""
    if not given:
        raise HTTPException(401, f"{header}: signature missing")
    a = expected.encode() if isinstance(expected, str) else expected
    if not hmac.compare_digest(a, given.encode()):
        raise HTTPException(401, f"{header}: signature does not match")


async def use_token(db: Database, provider: str, token: str, body: Any, *, keep_for: timedelta) -> None:
    """Record a verified one-time token before its body is acted on or ignored.

    For providers whose signature does not cover the body (Mailgun): the first body a
    token arrives with is the only one it may ever carry. The same body again (the
    provider retrying after a 5xx) passes, and duplicate events are dropped further on by
    their event id; any other body is 401 and changes nothing. Tokens older than
    `keep_for` (past the signature's age window) are forgotten.
    """
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    now = utcnow()
    async with db.session() as session:
        await session.exec(delete(ReceiptToken).where(col(ReceiptToken.seen_at) < now - keep_for))
        await session.exec(
            insert_ignoring_conflicts(db, ReceiptToken)
            .values(provider=provider, token=token, body_sha256=digest, seen_at=now)
            .on_conflict_do_nothing()
        )
        first = (
            await session.exec(
                select(ReceiptToken.body_sha256).where(ReceiptToken.provider == provider, ReceiptToken.token == token)
            )
        ).one()
    if not hmac.compare_digest(first, digest):
        log.warning("receipt.token_replayed", provider=provider)
        raise HTTPException(401, "signature.token: already used with another body (replay refused)")


def from_unix(value: Any) -> datetime | None:
    """A provider's unix timestamp (seconds or milliseconds) as an aware datetime."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1e11:  # Viber sends milliseconds
        number /= 1000
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


async def message_event(
    request: Request,
    provider: str,
    message_id: str,
    event: EngagementType,
    *,
    event_id: str,
    occurred_at: datetime | None = None,
    properties: dict[str, Any] | None = None,
) -> str:
    """Record a receipt about one message and signal the run that sent it; a short outcome."""
    db: Database = request.app.state.db
    if not is_visible_id(message_id) or len(message_id) > 256:
        # Signed, yet no id we could have issued (a NUL would even fail the look-up).
        log.info("receipt.unusable_message_id", provider=provider)
        return "unknown message"
    delivery = await delivery_by_message_id(db, message_id)
    if delivery is None:
        # Kept (and its id consumed, so a replay is refused) but nothing to signal; a 2xx
        # stops the provider retrying a message that is not ours.
        async with db.session() as session:
            await insert_event(
                db,
                session,
                type=event.value,
                occurred_at=occurred_at or utcnow(),
                event_id=event_id,
                source=provider,
                properties={"message_id": message_id, **(properties or {})},
            )
        log.info("receipt.unknown_message", provider=provider, message_id=message_id)
        return "unknown message"
    result = await apply_delivery_event(
        request.app.state.client,
        db,
        delivery,
        event,
        occurred_at=occurred_at,
        source=provider,
        event_id=event_id,
        properties=properties,
    )
    return result.detail


async def contact_unsubscribed(
    request: Request,
    provider: str,
    channel: str,
    address: str,
    reason: str,
    status: ContactStatus = ContactStatus.UNSUBSCRIBED,
) -> str:
    """The customer opted out in the provider's app (blocked a bot, unsubscribed in Viber/VK)."""
    db: Database = request.app.state.db
    if not is_visible_id(address) or len(address) > 2048:
        log.info("receipt.unknown_contact", provider=provider, channel=channel)
        return "unknown contact"
    async with db.session() as session:
        point = (
            await session.exec(
                select(ContactPoint).where(ContactPoint.channel == channel, ContactPoint.address == address)
            )
        ).first()
    if point is None:
        log.info("receipt.unknown_contact", provider=provider, channel=channel)
        return "unknown contact"
    result = await unsubscribe_contact(
        request.app.state.client,
        db,
        customer_id=point.customer_id,
        channel=channel,
        contact_point_id=point.id,
        source=provider,
        reason=reason,
        status=status,
    )
    return str(status) if result.changed else f"already {status}"
