"""Email events in Mailgun's webhook format (delivered, opened, clicked, failed, complained, unsubscribed).

Signature: hex HMAC-SHA256(signing key, timestamp + token). The signature does not
cover the body, so a token is accepted only within 15 minutes of its timestamp and
only ever with one body: every verified token is recorded (bound to its body) before
the body is acted on or ignored, so a captured signature cannot carry another event.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from models.events import EngagementType
from models.ids import VisibleId
from webhooks.receipts.common import check, from_unix, message_event, require_secret, settings_of, use_token

router = APIRouter()
MAX_AGE_SECONDS = 15 * 60


class MailgunSignature(BaseModel):
    """The `signature` object of a Mailgun webhook."""

    timestamp: str = Field(max_length=20)
    token: VisibleId = Field(min_length=1, max_length=128)
    signature: str = Field(max_length=128)


class MailgunWebhook(BaseModel):
    """A Mailgun webhook body: `signature` and `event-data`."""

    model_config = ConfigDict(populate_by_name=True)

    signature: MailgunSignature
    event_data: dict[str, Any] = Field(alias="event-data")


def _event(data: dict[str, Any]) -> EngagementType | None:
    kind = data.get("event")
    if kind == "failed":
        # A temporary failure is retried by Mailgun itself; only a permanent one is a bounce.
        return EngagementType.BOUNCED if data.get("severity") == "permanent" else None
    return {
        "delivered": EngagementType.DELIVERED,
        "opened": EngagementType.OPENED,
        "clicked": EngagementType.CLICKED,
        "complained": EngagementType.COMPLAINED,
        "unsubscribed": EngagementType.UNSUBSCRIBED,
    }.get(str(kind))


@router.post("/v1/receipts/email/mailgun", responses={401: {"description": "Bad or missing signature"}})
async def mailgun_event(body: MailgunWebhook, request: Request) -> dict[str, str]:
    """One Mailgun event about a message we sent."""
    key = require_secret(settings_of(request).webhook_mailgun_signing_key, "mailgun")
    sig = body.signature
    expected = hmac.new(key, f"{sig.timestamp}{sig.token}".encode(), hashlib.sha256).hexdigest()
    check(expected, sig.signature, "signature.signature")
    sent_at = from_unix(sig.timestamp)
    if sent_at is None or abs(time.time() - sent_at.timestamp()) > MAX_AGE_SECONDS:
        raise HTTPException(401, "signature.timestamp: too old or in the future (replay refused)")
    # Before anything else: an event we ignore (accepted, a temporary failure) burns its
    # token too, or its signature could be replayed with a permanent bounce.
    await use_token(
        request.app.state.db,
        "mailgun",
        sig.token,
        body.model_dump(mode="json", by_alias=True),
        keep_for=timedelta(seconds=2 * MAX_AGE_SECONDS + 60),
    )
    event = _event(body.event_data)
    message = body.event_data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    if event is None or not isinstance(message_id, str):
        return {"status": "ignored"}
    properties: dict[str, Any] = {k: body.event_data[k] for k in ("reason", "severity", "url") if k in body.event_data}
    detail = await message_event(
        request,
        "mailgun",
        message_id.strip("<>"),
        event,
        event_id=f"mailgun:{sig.token}",
        occurred_at=from_unix(body.event_data.get("timestamp")),
        properties=properties,
    )
    return {"status": detail}
