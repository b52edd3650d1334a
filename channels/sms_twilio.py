"""SMS through Twilio's Programmable Messaging REST API (or a compatible one).

POST /2010-04-01/Accounts/{sid}/Messages.json, form-encoded To/From/Body, HTTP Basic
sid:token. Twilio's Messages API has no idempotency key: the delivery-log claim makes
one call per key, and a call whose answer was lost is recorded `unknown`. The cost is
the configured price per segment times segments.
"""

from __future__ import annotations

from cascade.infra.settings import TwilioSettings
from channels.base import OutboundMessage, SendReceipt
from channels.sms_segments import sms_info
from channels.twilio_api import TwilioChannel


class TwilioSmsChannel(TwilioChannel):
    """Sends SMS from one Twilio number or messaging service."""

    name = "sms"
    provider = "twilio"
    idempotent = False

    def __init__(self, settings: TwilioSettings, cost_per_segment: float = 0.0) -> None:
        super().__init__(settings, cost_per_segment)

    def form(self, message: OutboundMessage) -> dict[str, str]:
        """The Messages.json form fields."""
        form = {"To": message.to, "Body": message.body}
        if self._settings.messaging_service_sid:
            form["MessagingServiceSid"] = self._settings.messaging_service_sid
        else:
            form["From"] = self._settings.from_number
        if self._settings.status_callback_url:
            form["StatusCallback"] = self._settings.status_callback_url
        return form

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Create one Message resource; 201 with its SID, or Twilio's error JSON."""
        data = await self._create("Messages", self.form(message))
        segments = int(data.get("num_segments") or sms_info(message.body).segments or 1)
        return SendReceipt(provider_message_id=str(data["sid"]), cost=self._cost * segments, segments=segments)
