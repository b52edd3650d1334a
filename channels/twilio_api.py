"""What the Twilio SMS and voice adapters share: the REST client and its error codes."""

from __future__ import annotations

from typing import Any

import httpx

from cascade.infra.settings import TwilioSettings
from channels.base import PermanentSendError, TransientSendError
from channels.http import HttpChannel, configuration_error, json_body, rate_limited, retry_after, transient_for_status
from models.tables import ContactStatus

# Send-time error codes that say the number will never take this message.
_CONTACT_CODES: dict[int, ContactStatus] = {
    21211: ContactStatus.INVALID,  # invalid 'To' number
    21214: ContactStatus.INVALID,  # 'To' cannot be reached (voice)
    21217: ContactStatus.INVALID,  # number not valid (voice)
    21407: ContactStatus.INVALID,  # not SMS-capable region
    21408: ContactStatus.INVALID,  # permission to send to region not enabled -> number unusable for us
    21610: ContactStatus.UNSUBSCRIBED,  # replied STOP
    21612: ContactStatus.INVALID,  # unroutable
    21614: ContactStatus.INVALID,  # not a mobile number
    21635: ContactStatus.INVALID,  # landline
}
# Our account or sender is refused: fix the configuration, then it works again.
_CONFIG_CODES = {20003, 20404, 21212, 21606, 21659, 30034}
_TRANSIENT_CODES = {20500, 20503, 30001}


class TwilioChannel(HttpChannel):
    """A Twilio REST resource creator: HTTP Basic account-sid:auth-token, Twilio's error codes."""

    def __init__(self, settings: TwilioSettings, cost: float = 0.0) -> None:
        auth = httpx.BasicAuth(settings.account_sid, settings.auth_token.get_secret_value())
        super().__init__(settings.base_url, settings.timeout_seconds, cost, auth=auth)
        self._settings = settings

    async def _create(self, resource: str, form: dict[str, str]) -> dict[str, Any]:
        """POST one `resource` (Messages, Calls) of the account; its JSON, or the classified failure."""
        url = f"/2010-04-01/Accounts/{self._settings.account_sid}/{resource}.json"
        response = await self._post(url, data=form)
        if response.status_code in (200, 201):
            return json_body(response)
        raise classify(response, self.provider)


def classify(response: httpx.Response, provider: str) -> Exception:
    """Twilio's error JSON `{code, message, more_info, status}` -> our failure class."""
    data: dict[str, Any] = json_body(response)
    code = int(data.get("code") or 0)
    reason = f"{code or response.status_code} {data.get('message') or response.reason_phrase}"
    if code in _CONTACT_CODES:
        return PermanentSendError(reason, _CONTACT_CODES[code])
    if code == 20429:
        return rate_limited(f"{provider}: {reason}", retry_after=retry_after(response))
    if code in _TRANSIENT_CODES:
        return TransientSendError(f"{provider}: {reason}", retry_after=retry_after(response))
    if code in _CONFIG_CODES or response.status_code in (401, 403):
        return configuration_error(provider, reason)
    if transient := transient_for_status(response, provider, reason):
        return transient
    # Another 4xx (e.g. 21602 body required, 21617 body too long): the message, not the number.
    return PermanentSendError(reason, None)
