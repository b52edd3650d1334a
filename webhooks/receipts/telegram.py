"""Telegram bot webhook updates. Bots get no delivery or read receipts; what matters is the
customer blocking the bot (`my_chat_member` -> kicked) or sending /stop: both opt out.

Check: `X-Telegram-Bot-Api-Secret-Token` equals the secret_token we set with setWebhook.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request

from models.tables import ContactStatus
from webhooks.receipts.common import check, contact_unsubscribed, require_secret, settings_of

router = APIRouter()


@router.post("/v1/receipts/telegram", responses={401: {"description": "Bad or missing secret token"}})
async def telegram_update(
    update: dict[str, Any],
    request: Request,
    x_telegram_bot_api_secret_token: str | None = Header(default=None),
) -> dict[str, str]:
    """One Telegram Update."""
    secret = require_secret(settings_of(request).webhook_telegram_secret, "telegram")
    check(secret, x_telegram_bot_api_secret_token, "X-Telegram-Bot-Api-Secret-Token")
    member = update.get("my_chat_member")
    message = update.get("message")
    chat_id: Any = None
    status = ContactStatus.UNSUBSCRIBED
    if isinstance(member, dict) and (member.get("new_chat_member") or {}).get("status") == "kicked":
        # A blocked bot cannot send anything at all, not even an order update.
        chat_id, reason, status = (member.get("chat") or {}).get("id"), "blocked the bot", ContactStatus.BLOCKED
    elif isinstance(message, dict) and str(message.get("text", "")).strip().lower() in ("/stop", "stop"):
        chat_id, reason = (message.get("chat") or {}).get("id"), "sent /stop"
    if chat_id is None:
        return {"status": "ignored"}
    return {"status": await contact_unsubscribed(request, "telegram", "telegram", str(chat_id), reason, status)}
