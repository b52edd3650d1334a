"""Twilio REST double: Messages.json and Calls.json with HTTP Basic sid:token.

Magic numbers as Twilio's test credentials have them: +15005550001 invalid (21211),
+15005550009 not SMS-capable (21614), +15005550004 unsubscribed/STOP (21610);
+15005550429 gets 429 (20429, Retry-After: 2) once.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.sms_segments import sms_info
from tests.doubles.base import HttpDouble, json_response

_ERRORS = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
}


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return json_response(body, status=status, headers=headers)


@dataclass
class TwilioDouble(HttpDouble):
    account_sid: str = "AC" + "0" * 32
    auth_token: str = "twilio-secret-token"
    messages: list[dict[str, str]] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [
            Route("/2010-04-01/Accounts/{sid}/Messages.json", self.create_message, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Calls.json", self.create_call, methods=["POST"]),
        ]

    def _auth_error(self, request: Request) -> Response | None:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if (
            request.headers.get("authorization") != f"Basic {expected}"
            or request.path_params["sid"] != self.account_sid
        ):
            return _error(401, 20003, "Authenticate")
        return None

    def _to_error(self, to: str) -> Response | None:
        if to in _ERRORS:
            code, message = _ERRORS[to]
            return _error(400, code, message)
        if to == "+15005550429" and self.first_time(to):
            return _error(429, 20429, "Too Many Requests", headers={"Retry-After": "2"})
        return None

    async def create_message(self, request: Request) -> Response:
        item = await self.record(request)
        if denied := self._auth_error(request):
            return denied
        form = item.form()
        if not form.get("Body"):
            return _error(400, 21602, "Message body is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' phone number is required.")
        if failed := self._to_error(form.get("To", "")):
            return failed
        self.messages.append(form)
        sid = "SM" + uuid.uuid4().hex
        return json_response(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form["To"],
                "from": form.get("From"),
                "body": form["Body"],
                "status": "queued",
                "num_segments": str(sms_info(form["Body"]).segments),
                "price": None,
                "price_unit": "USD",
                "error_code": None,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            status=201,
        )

    async def create_call(self, request: Request) -> Response:
        item = await self.record(request)
        if denied := self._auth_error(request):
            return denied
        form = item.form()
        if not form.get("Twiml") and not form.get("Url"):
            return _error(400, 21205, "Url parameter is required.")
        if failed := self._to_error(form.get("To", "")):
            return failed
        self.calls.append(form)
        return json_response(
            {"sid": "CA" + uuid.uuid4().hex, "to": form["To"], "from": form.get("From"), "status": "queued"},
            status=201,
        )
