"""Viber bot callbacks: delivered, seen, failed, unsubscribed (and the webhook set-up call).

Check: `X-Viber-Content-Signature` = hex HMAC-SHA256(auth token, raw body).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import APIRouter, Header, HTTPException, Request

from models.events import EngagementType
from webhooks.http import parse_json
from webhooks.receipts.common import check, contact_unsubscribed, from_unix, message_event, require_secret, settings_of

router = APIRouter()

_EVENTS = {"delivered": EngagementType.DELIVERED, "seen": EngagementType.OPENED, "failed": EngagementType.FAILED}


@router.post("/v1/receipts/viber", responses={401: {"description": "Bad or missing signature"}})
async def viber_callback(
    request: Request, x_viber_content_signature: str | None = Header(default=None)
) -> dict[str, str]:
    """One Viber callback."""
    secret = require_secret(settings_of(request).webhook_viber_auth_token, "viber")
    raw = await request.body()
    check(hmac.new(secret, raw, hashlib.sha256).hexdigest(), x_viber_content_signature, "X-Viber-Content-Signature")
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise HTTPException(422, "body: must be a JSON object")
    kind = payload.get("event")
    if kind == "unsubscribed" and payload.get("user_id"):
        reason = "unsubscribed in Viber"
        return {"status": await contact_unsubscribed(request, "viber", "viber", str(payload["user_id"]), reason)}
    event = _EVENTS.get(str(kind))
    token = payload.get("message_token")
    if event is None or token is None:
        return {"status": "ignored"}
    detail = await message_event(
        request,
        "viber",
        str(token),
        event,
        event_id=f"viber:{token}:{kind}",
        occurred_at=from_unix(payload.get("timestamp")),
        properties={"desc": str(payload["desc"])[:500]} if payload.get("desc") else None,
    )
    return {"status": detail}
