"""Voice: a Twilio-style outbound call that reads the message with text-to-speech.

POST /2010-04-01/Accounts/{sid}/Calls.json with To/From and inline TwiML
`<Response><Say>…</Say></Response>`. Meant as the last, most expensive cascade
step. No idempotency key on the API: the delivery-log claim makes it one call, and a
call request whose answer was lost is recorded `unknown`, never placed twice.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from channels.base import OutboundMessage, SendReceipt
from channels.twilio_api import TwilioChannel


class TwilioVoiceChannel(TwilioChannel):
    """Places calls from one Twilio number."""

    name = "voice"
    provider = "twilio-voice"
    idempotent = False

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
        data = await self._create("Calls", form)
        return SendReceipt(provider_message_id=str(data["sid"]), cost=self._cost)
