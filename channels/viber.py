"""Viber bot API: POST /pa/send_message with X-Viber-Auth-Token.

Viber answers HTTP 200 and puts the outcome in JSON `status` (0 = ok). Only users
subscribed to the bot can be messaged, by their Viber user id. No idempotency key
(a lost answer is recorded `unknown`, never repeated); the key goes in
`tracking_data`, which Viber echoes in delivery callbacks.
"""

from __future__ import annotations

from typing import Any

from cascade.infra.settings import ViberSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.http import HttpChannel, json_body, rate_limited
from models.tables import ContactStatus

_CONTACT_STATUS = {
    5: ContactStatus.INVALID,  # receiverNotRegistered
    6: ContactStatus.UNSUBSCRIBED,  # notSubscribed: the user left the bot
    11: ContactStatus.INVALID,  # noSuitableDevice
}
_CONFIG_STATUS = {1, 2, 7, 8, 9, 10}  # bad url/token, account blocked/not found/suspended, no webhook


class ViberChannel(HttpChannel):
    """Sends as one Viber bot."""

    name = provider = "viber"
    idempotent = False

    def __init__(self, settings: ViberSettings, cost: float = 0.0) -> None:
        headers = {"X-Viber-Auth-Token": settings.auth_token.get_secret_value()}
        super().__init__(settings.base_url, settings.timeout_seconds, cost, headers=headers)
        self._settings = settings

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """send_message body: text plus a keyboard of open-url buttons."""
        sender: dict[str, str] = {"name": self._settings.sender_name[:28]}
        if self._settings.sender_avatar:
            sender["avatar"] = self._settings.sender_avatar
        body: dict[str, Any] = {
            "receiver": message.to,
            "min_api_version": 1,
            "sender": sender,
            "tracking_data": message.idempotency_key,
            "type": "text",
            "text": message.body,
        }
        buttons = [(b.text, b.url) for b in message.buttons] or ([("Open", message.url)] if message.url else [])
        if buttons:
            body["keyboard"] = {
                "Type": "keyboard",
                "DefaultHeight": False,
                "Buttons": [
                    {"ActionType": "open-url", "ActionBody": url, "Text": text, "Columns": 6, "Rows": 1}
                    for text, url in buttons
                ],
            }
        return body

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One send_message call; message_token is the message id."""
        response = await self._post("/pa/send_message", json=self.payload(message))
        if transient := self._transient(response):
            raise transient
        data = json_body(response)
        status = int(data.get("status", -1))
        if status == 0:
            return SendReceipt(provider_message_id=str(data["message_token"]), cost=self._cost)
        reason = f"{status} {data.get('status_message') or 'error'}"
        if status in _CONTACT_STATUS:
            raise PermanentSendError(reason, _CONTACT_STATUS[status])
        if status == 12:  # tooManyRequests
            raise rate_limited(f"viber: {reason}", retry_after=1.0)
        if status in _CONFIG_STATUS:
            raise self._configuration_error(reason)
        if status in (3, 4):  # badData / missingData: our payload
            raise PermanentSendError(reason, None)
        raise TransientSendError(f"viber: {reason}")
