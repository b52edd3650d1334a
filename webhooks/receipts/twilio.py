"""SMS status callbacks in Twilio's format (form POST: MessageSid, MessageStatus, ErrorCode).

Signature (`X-Twilio-Signature`): base64 HMAC-SHA1(auth token, the full URL Twilio called
+ every POST parameter name and value, sorted by name). The URL is our public URL plus
the path and query, since behind a proxy the app never sees the one Twilio used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, HTTPException, Request

from models.events import EngagementType
from webhooks.receipts.common import check, message_event, require_secret, settings_of

router = APIRouter()

_STATUS = {
    "delivered": EngagementType.DELIVERED,
    "read": EngagementType.OPENED,
    "undelivered": EngagementType.FAILED,
    "failed": EngagementType.FAILED,
}


def twilio_signature(auth_token: bytes, url: str, params: list[tuple[str, str]]) -> str:
    """What Twilio puts in X-Twilio-Signature for a form POST to `url`."""
    payload = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    return base64.b64encode(hmac.new(auth_token, payload.encode(), hashlib.sha1).digest()).decode()


@router.post(
    "/v1/receipts/sms/twilio",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"MessageSid": {"type": "string"}, "MessageStatus": {"type": "string"}},
                    }
                }
            }
        }
    },
    responses={401: {"description": "Bad or missing signature"}},
)
async def twilio_status(request: Request, x_twilio_signature: str | None = Header(default=None)) -> dict[str, str]:
    """A Twilio message status callback."""
    settings = settings_of(request)
    token = require_secret(settings.webhook_twilio_auth_token, "twilio")
    raw = await request.body()
    try:
        params = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(401, "X-Twilio-Signature: body is not a form, cannot be verified") from exc
    url = settings.public_url.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    check(twilio_signature(token, url, params), x_twilio_signature, "X-Twilio-Signature")
    form = dict(params)
    sid, status = form.get("MessageSid"), form.get("MessageStatus")
    if not sid:
        raise HTTPException(422, "MessageSid: Field required")
    event = _STATUS.get(status or "")
    if event is None:
        return {"status": "ignored"}
    properties = {"error_code": form["ErrorCode"]} if form.get("ErrorCode") else {}
    detail = await message_event(
        request, "twilio", sid, event, event_id=f"twilio:{sid}:{status}", properties=properties
    )
    return {"status": detail}
