"""VK community messages: POST /method/messages.send (form) with the community token.

VK answers HTTP 200 with `{"response": id}` or `{"error": {error_code, error_msg}}`.
`random_id` is VK's idempotency key: a repeated random_id to the same peer is not
sent again, so it is derived from our key and a retry after a lost answer (a read
timeout, a worker crash mid-send) is safe: VK is one of the two `idempotent` channels.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cascade.infra.settings import VkSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.http import HttpChannel, json_body, rate_limited
from models.tables import ContactStatus

_CONTACT_CODES = {
    900: ContactStatus.BLOCKED,  # the user blacklisted the community
    901: ContactStatus.UNSUBSCRIBED,  # no permission: the user has not allowed messages
    902: ContactStatus.BLOCKED,  # privacy settings forbid messages
    936: ContactStatus.INVALID,  # contact not found
}
_LIMIT_CODES = {6: 1.0, 9: 60.0, 29: 3600.0}  # too many requests, flood control, rate limit
_LATER_CODES = {10: 5.0}  # internal server error
_CONFIG_CODES = {5, 7, 15, 27, 28, 917, 945}  # auth, permissions, community token / chat access


def random_id(idempotency_key: str) -> int:
    """A stable positive int32 from our key: the same message always has the same random_id."""

    return int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:4], "big") & 0x7FFFFFFF


class VkChannel(HttpChannel):
    """Sends as one VK community."""

    name = provider = "vk"
    idempotent = True

    def __init__(self, settings: VkSettings, cost: float = 0.0) -> None:
        super().__init__(settings.base_url, settings.timeout_seconds, cost)
        self._settings = settings

    def form(self, message: OutboundMessage) -> dict[str, str]:
        """messages.send parameters (the token goes in the body, never the URL)."""
        form = {
            "peer_id": message.to,
            "message": message.body,
            "random_id": str(random_id(message.idempotency_key)),
            "v": self._settings.api_version,
            "access_token": self._settings.access_token.get_secret_value(),
        }
        buttons = [(b.text, b.url) for b in message.buttons] or ([("Open", message.url)] if message.url else [])
        if buttons:
            keyboard: dict[str, Any] = {
                "inline": True,
                "buttons": [
                    [{"action": {"type": "open_link", "link": url, "label": text[:40]}}] for text, url in buttons
                ],
            }
            form["keyboard"] = json.dumps(keyboard, ensure_ascii=False)
        return form

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One messages.send call; the returned id is the message id."""
        response = await self._post("/method/messages.send", data=self.form(message))
        if transient := self._transient(response):
            raise transient
        data = json_body(response)
        if "response" in data:
            # The id is the community's own message id; the peer (the customer's
            # address) is left out so it never reaches a workflow history.
            return SendReceipt(provider_message_id=f"vk-{data['response']}", cost=self._cost)
        error = data.get("error") or {}
        code = int(error.get("error_code") or -1)
        reason = f"{code} {error.get('error_msg') or 'no answer'}"
        if code in _CONTACT_CODES:
            raise PermanentSendError(reason, _CONTACT_CODES[code])
        if code in _LIMIT_CODES:
            raise rate_limited(f"vk: {reason}", retry_after=_LIMIT_CODES[code])
        if code in _LATER_CODES:
            raise TransientSendError(f"vk: {reason}", retry_after=_LATER_CODES[code])
        if code in _CONFIG_CODES:
            raise self._configuration_error(reason)
        if code in (100, 914, 913):  # bad parameter, message too long, too many forwarded
            raise PermanentSendError(reason, None)
        raise TransientSendError(f"vk: {reason}")
