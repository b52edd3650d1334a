"""WhatsApp Cloud API webhooks: message statuses (sent, delivered, read, failed).

GET is Meta's subscription handshake (hub.mode=subscribe, hub.verify_token, hub.challenge).
POST check: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from models.events import EngagementType
from webhooks.http import parse_json
from webhooks.receipts.common import check, from_unix, message_event, require_secret, settings_of

router = APIRouter()

_STATUS = {
    "delivered": EngagementType.DELIVERED,
    "read": EngagementType.OPENED,
    "failed": EngagementType.FAILED,
}


@router.get("/v1/receipts/whatsapp", response_class=PlainTextResponse, responses={403: {"description": "Bad token"}})
async def whatsapp_verify(
    request: Request,
    mode: str | None = Query(default=None, alias="hub.mode", max_length=32),
    verify_token: str | None = Query(default=None, alias="hub.verify_token", max_length=256),
    challenge: str | None = Query(default=None, alias="hub.challenge", max_length=256),
) -> PlainTextResponse:
    """Answer Meta's verification request with the challenge when the verify token matches."""
    expected = settings_of(request).webhook_whatsapp_verify_token
    if (
        mode != "subscribe"
        or expected is None
        or not verify_token
        or not hmac.compare_digest(verify_token.encode(), expected.get_secret_value().encode())
    ):
        raise HTTPException(403, "hub.verify_token: does not match")
    # The challenge is the caller's text echoed back: never let a browser sniff it as HTML.
    return PlainTextResponse(challenge or "", headers={"X-Content-Type-Options": "nosniff"})


@router.post("/v1/receipts/whatsapp", responses={401: {"description": "Bad or missing signature"}})
async def whatsapp_event(request: Request, x_hub_signature_256: str | None = Header(default=None)) -> dict[str, str]:
    """A WhatsApp Cloud webhook: every status in it, in order."""
    secret = require_secret(settings_of(request).webhook_whatsapp_app_secret, "whatsapp")
    raw = await request.body()
    check("sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest(), x_hub_signature_256, "X-Hub-Signature-256")
    payload = parse_json(raw)
    outcomes: list[str] = []
    for status in _statuses(payload):
        event = _STATUS.get(str(status.get("status")))
        message_id = status.get("id")
        if event is None or not isinstance(message_id, str):
            continue
        raw_errors = status.get("errors")
        errors: list[Any] = raw_errors if isinstance(raw_errors, list) else []
        codes = [e.get("code") for e in errors if isinstance(e, dict)]
        outcomes.append(
            await message_event(
                request,
                "whatsapp",
                message_id,
                event,
                event_id=f"whatsapp:{message_id}:{status.get('status')}",
                occurred_at=from_unix(status.get("timestamp")),
                properties={"error_codes": codes} if codes else None,
            )
        )
    return {"status": "; ".join(outcomes) or "ignored"}


def _statuses(payload: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not isinstance(payload, dict):
        return found
    for entry in payload.get("entry") or []:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                found += [s for s in value.get("statuses") or [] if isinstance(s, dict)]
    return found
