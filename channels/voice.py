"""Voice: a Twilio-style outbound call that reads the message with text-to-speech.

POST /2010-04-01/Accounts/{sid}/Calls.json with To/From and inline TwiML
`<Response><Say>…</Say></Response>`. Meant as the last, most expensive cascade
step. No idempotency key on the API: the delivery-log claim makes it one call, and a
call request whose answer was lost is recorded `unknown`, never placed twice.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from cascade.infra.settings import TwilioSettings
from channels.base import OutboundMessage, SendReceipt
from channels.http import json_body, post
from channels.twilio_api import classify, twilio_client


class TwilioVoiceChannel:
    """Places calls from one Twilio number."""

    name = "voice"
    idempotent = False

    def __init__(self, settings: TwilioSettings, cost: float = 0.0) -> None:
        self._settings = settings
        self._cost = cost
        self._client = twilio_client(settings)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    def twiml(self, text: str) -> str:
        """TwiML that says `text` twice (people miss the start of a call), then hangs up."""
        say = (
            f'<Say voice="{escape(self._settings.voice)}" language="{escape(self._settings.voice_language)}">'
            f"{escape(text)}</Say>"
        )
        return f'<?xml version="1.0" encoding="UTF-8"?><Response>{say}<Pause length="1"/>{say}<Hangup/></Response>'

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Create one Call resource; its SID is the message id."""
        form = {"To": message.to, "From": self._settings.from_number, "Twiml": self.twiml(message.body)}
        if self._settings.status_callback_url:
            form["StatusCallback"] = self._settings.status_callback_url
        url = f"/2010-04-01/Accounts/{self._settings.account_sid}/Calls.json"
        response = await post(self._client, url, "twilio-voice", data=form)
        if response.status_code in (200, 201):
            return SendReceipt(provider_message_id=str(json_body(response)["sid"]), cost=self._cost)
        raise classify(response, "twilio-voice")
