"""VK Callback API: the confirmation handshake, then events carrying our `secret`.

`confirmation` is answered with the confirmation string; every other event must carry
the secret set in the community's settings and is answered `ok` (VK retries otherwise).
`message_deny` is an opt-out, `message_read` a read receipt.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from models.events import EngagementType
from webhooks.receipts.common import contact_unsubscribed, message_event, require_secret, settings_of

router = APIRouter()


@router.post("/v1/receipts/vk", response_class=PlainTextResponse, responses={401: {"description": "Bad secret"}})
async def vk_callback(payload: dict[str, Any], request: Request) -> PlainTextResponse:
    """One VK Callback API request."""
    settings = settings_of(request)
    if payload.get("type") == "confirmation":
        if not settings.webhook_vk_confirmation:
            raise HTTPException(401, "type: vk confirmation is not configured on this server")
        return PlainTextResponse(settings.webhook_vk_confirmation)
    secret = require_secret(settings.webhook_vk_secret, "vk")
    given = payload.get("secret")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret):
        raise HTTPException(401, "secret: missing or does not match")
    obj = payload.get("object") if isinstance(payload.get("object"), dict) else {}
    assert isinstance(obj, dict)
    kind = payload.get("type")
    event_id = f"vk:{payload.get('event_id') or ''}"
    if kind == "message_deny" and obj.get("user_id") is not None:
        await contact_unsubscribed(request, "vk", "vk", str(obj["user_id"]), "denied messages from the community")
    elif kind == "message_read" and obj.get("read_message_id") is not None:
        # The adapter stores VK's message id as `vk-<id>` (channels/vk.py).
        message_id = f"vk-{obj['read_message_id']}"
        await message_event(request, "vk", message_id, EngagementType.OPENED, event_id=event_id)
    return PlainTextResponse("ok")
