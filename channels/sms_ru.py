"""SMS through SMS.ru (Russian gateway): POST /sms/send with api_id, to, msg, json=1.

The gateway answers HTTP 200 with a top-level status_code (100 = request accepted)
and a per-number status under `sms`. No idempotency key: the delivery-log claim
makes one call per key, and a call whose answer was lost is recorded `unknown`.
"""

from __future__ import annotations

from typing import Any

from cascade.infra.settings import SmsRuSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.http import HttpChannel, configuration_error, json_body, rate_limited
from channels.sms_segments import sms_info
from models.tables import ContactStatus

_CONTACT_CODES = {
    202: ContactStatus.INVALID,  # recipient number is wrong
    207: ContactStatus.INVALID,  # cannot send to this number
    209: ContactStatus.UNSUBSCRIBED,  # number is in the stop-list
}
# Limits that lift with time: daily/per-number/duplicate limits, service unavailable.
_LATER_CODES = {206: 3600.0, 208: 600.0, 220: 60.0, 230: 3600.0, 231: 60.0, 232: 3600.0, 233: 60.0}
# Account problems: no funds, sender name not approved, bad api_id, account blocked.
_CONFIG_CODES = {200, 201, 204, 300, 301, 302}


class SmsRuChannel(HttpChannel):
    """Sends SMS with one SMS.ru api_id."""

    name = "sms"
    provider = "sms.ru"
    idempotent = False

    def __init__(self, settings: SmsRuSettings, cost_per_segment: float = 0.0) -> None:
        super().__init__(settings.base_url, settings.timeout_seconds, cost_per_segment)
        self._settings = settings

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One /sms/send call for one number."""
        to = message.to.lstrip("+")
        form: dict[str, str] = {
            "api_id": self._settings.api_id.get_secret_value(),
            "to": to,
            "msg": message.body,
            "json": "1",
        }
        if self._settings.sender:
            form["from"] = self._settings.sender
        if self._settings.test:
            form["test"] = "1"
        response = await self._post("/sms/send", data=form)
        if transient := self._transient(response):
            raise transient
        data = json_body(response)
        top = int(data.get("status_code") or 0)
        if top != 100:
            raise _classify(top, str(data.get("status_text") or data.get("status") or "no JSON answer"))
        number: dict[str, Any] = (data.get("sms") or {}).get(to) or {}
        code = int(number.get("status_code") or 0)
        if code != 100:
            raise _classify(code, str(number.get("status_text") or "rejected"))
        segments = sms_info(message.body).segments or 1
        return SendReceipt(provider_message_id=str(number["sms_id"]), cost=self._cost * segments, segments=segments)


def _classify(code: int, text: str) -> Exception:
    reason = f"{code} {text}"
    if code in _CONTACT_CODES:
        return PermanentSendError(reason, _CONTACT_CODES[code])
    if code in _LATER_CODES:
        return rate_limited(f"sms.ru: {reason}", retry_after=_LATER_CODES[code])
    if code in _CONFIG_CODES:
        return configuration_error("sms.ru", reason)
    if code in (203, 205):  # empty or too long text: our template, not the number
        return PermanentSendError(reason, None)
    return TransientSendError(f"sms.ru: {reason}")
