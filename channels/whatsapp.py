"""WhatsApp Business Cloud API: POST /{phone-number-id}/messages with a Bearer token.

Business-initiated messages outside a 24-hour customer-service window must be
approved templates, so a message with `template_name` goes as `type: template`
(body parameters in order); without one it is a free-form `text` message, which
the API refuses (131047) when the window is closed. The API has no idempotency
key: the delivery-log claim makes one call per key, and a call whose answer was lost
is recorded `unknown`, never repeated.
"""

from __future__ import annotations

from typing import Any

from cascade.infra.settings import WhatsAppSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError, UnknownOutcomeError
from channels.http import HttpChannel, json_body, rate_limited, retry_after
from models.tables import ContactStatus

_CONTACT_CODES = {
    131026: ContactStatus.INVALID,  # undeliverable: not on WhatsApp / old app / terms not accepted
    131050: ContactStatus.UNSUBSCRIBED,  # user stopped marketing messages
    131030: ContactStatus.INVALID,  # recipient not in allowed list (test numbers)
}
# Retry after (seconds): throughput, pair rate and engagement limits lift with time.
_LATER_CODES = {130429: 60.0, 131056: 60.0, 131049: 24 * 3600.0, 131048: 3600.0, 4: 60.0, 80007: 60.0}
_TRANSIENT_CODES = {1, 2, 131000, 131016, 133004}
# Token expired / permissions / account restricted / payment: operator must act.
_CONFIG_CODES = {0, 3, 10, 190, 200, 368, 131031, 131042, 131045, 133010}


class WhatsAppChannel(HttpChannel):
    """Sends from one WhatsApp business phone number."""

    name = provider = "whatsapp"
    idempotent = False

    def __init__(self, settings: WhatsAppSettings, cost: float = 0.0) -> None:
        headers = {"Authorization": f"Bearer {settings.access_token.get_secret_value()}"}
        super().__init__(settings.base_url, settings.timeout_seconds, cost, headers=headers)
        self._settings = settings

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The messages API body: a template when one is named, else free text."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": message.to}
        if message.template_name:
            template: dict[str, Any] = {
                "name": message.template_name,
                "language": {"code": message.template_language or "en"},
            }
            if message.template_params:
                template["components"] = [
                    {"type": "body", "parameters": [{"type": "text", "text": p} for p in message.template_params]}
                ]
            body |= {"type": "template", "template": template}
        else:
            text = message.body if not message.url else f"{message.body}\n{message.url}"
            body |= {"type": "text", "text": {"body": text, "preview_url": bool(message.url)}}
        return body

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One messages call; its wamid is the message id."""
        response = await self._post(f"/{self._settings.phone_number_id}/messages", json=self.payload(message))
        data = json_body(response)
        if response.status_code == 200 and data.get("messages"):
            return SendReceipt(provider_message_id=str(data["messages"][0]["id"]), cost=self._cost)
        error = data.get("error") or {}
        code = int(error.get("code", -1))
        details = (
            (error.get("error_data") or {}).get("details") or error.get("message") or f"HTTP {response.status_code}"
        )
        reason = f"{code} {details}"
        if code in _CONTACT_CODES:
            raise PermanentSendError(reason, _CONTACT_CODES[code])
        if code in _LATER_CODES:
            raise rate_limited(f"whatsapp: {reason}", retry_after=retry_after(response) or _LATER_CODES[code])
        if response.status_code == 504:
            raise UnknownOutcomeError(f"whatsapp: {reason}")
        if response.status_code == 429:
            raise rate_limited(f"whatsapp: {reason}", retry_after=retry_after(response))
        if code in _TRANSIENT_CODES or response.status_code >= 500:
            raise TransientSendError(f"whatsapp: {reason}", retry_after=retry_after(response))
        if code in _CONFIG_CODES or response.status_code in (401, 403):
            raise self._configuration_error(reason)
        # 131047 (24 h window closed), 132000/132001 (template params/name), 100 (bad
        # parameter), 131009...: this message cannot go, the number is fine.
        raise PermanentSendError(reason, None)
