"""Telegram Bot API: sendMessage with an inline keyboard of link buttons.

Contact address: the chat id (a user who pressed /start on the bot). The Bot API has
no idempotency key: the delivery-log claim makes one call per key, and a call whose
answer was lost is recorded `unknown`, never repeated.
"""

from __future__ import annotations

from typing import Any

from cascade.infra.settings import TelegramSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.http import HttpChannel, configuration_error, json_body, rate_limited, transient_for_status
from models.tables import ContactStatus

# Telegram's own limit for one message's text.
MAX_TEXT = 4096


class TelegramChannel(HttpChannel):
    """Sends through one bot."""

    name = provider = "telegram"
    idempotent = False

    def __init__(self, settings: TelegramSettings, cost: float = 0.0) -> None:
        super().__init__(settings.base_url, settings.timeout_seconds, cost)
        self._settings = settings

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The sendMessage JSON body for `message`."""
        body: dict[str, Any] = {"chat_id": message.to, "text": message.body[:MAX_TEXT]}
        if self._settings.parse_mode != "none":
            body["parse_mode"] = self._settings.parse_mode
        keyboard = [[{"text": b.text, "url": b.url}] for b in message.buttons]
        if message.url and not keyboard:
            # A bare link in the text is easy to miss; a button is what the customer taps.
            keyboard = [[{"text": "Open", "url": message.url}]]
        if keyboard:
            body["reply_markup"] = {"inline_keyboard": keyboard}
        return body

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One sendMessage call; errors classified by Telegram's error_code/description."""
        token = self._settings.bot_token.get_secret_value()
        response = await self._post(f"/bot{token}/sendMessage", json=self.payload(message))
        data = json_body(response)
        if response.status_code == 200 and data.get("ok"):
            result = data.get("result") or {}
            # Telegram numbers messages per chat; the key's digest stands in for the chat
            # id, which is the customer's address and must stay out of the history.
            message_id = f"tg-{message.key_digest(16)}-{result.get('message_id')}"
            return SendReceipt(provider_message_id=message_id, cost=self._cost)
        raise classify(response.status_code, data, response)


def classify(status: int, data: dict[str, Any], response: Any) -> Exception:
    """Telegram's failure: blocked / gone chats are permanent, 429 carries retry_after."""
    code = int(data.get("error_code") or status)
    description = str(data.get("description") or f"HTTP {status}")
    lowered = description.lower()
    reason = f"{code} {description}"
    if code == 429:
        after = (data.get("parameters") or {}).get("retry_after")
        return rate_limited(reason, retry_after=float(after) if after is not None else None)
    if code == 401 or code == 404:
        # 401 Unauthorized / 404 Not Found: the bot token is wrong, not the chat.
        return configuration_error("telegram", reason)
    if code == 403:
        if "blocked" in lowered or "kicked" in lowered:
            return PermanentSendError(reason, ContactStatus.BLOCKED)
        # "user is deactivated", "bot can't initiate conversation with a user".
        return PermanentSendError(reason, ContactStatus.INVALID)
    if code == 400:
        if "chat not found" in lowered or "user not found" in lowered or "peer_id_invalid" in lowered:
            return PermanentSendError(reason, ContactStatus.INVALID)
        # Anything else in a 400 is our payload (bad markup, too long): not the contact's fault.
        return PermanentSendError(reason, None)
    if transient := transient_for_status(response, "telegram", description):
        return transient
    return TransientSendError(reason)
