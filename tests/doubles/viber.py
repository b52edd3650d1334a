"""Viber bot API double: POST /pa/send_message with X-Viber-Auth-Token; HTTP 200, JSON status.

Receivers: `unsub…` -> 6 notSubscribed, `nodevice…` -> 11 noSuitableDevice,
`busy…` -> 12 tooManyRequests once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response


def _status(code: int, text: str) -> Response:
    return json_response({"status": code, "status_message": text, "chat_hostname": "SN-CHAT-01_"})


@dataclass
class ViberDouble(HttpDouble):
    auth_token: str = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
    messages: list[dict[str, object]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [Route("/pa/send_message", self.send, methods=["POST"])]

    async def send(self, request: Request) -> Response:
        item = await self.record(request)
        if request.headers.get("x-viber-auth-token") != self.auth_token:
            return _status(2, "invalidAuthToken")
        body = item.json()
        receiver = str(body.get("receiver", ""))
        if not receiver or body.get("type") != "text" or not body.get("text") or "sender" not in body:
            return _status(3, "badData")
        if receiver.startswith("unsub"):
            return _status(6, "notSubscribed")
        if receiver.startswith("nodevice"):
            return _status(11, "noSuitableDevice")
        if receiver.startswith("busy") and self.first_time(receiver):
            return _status(12, "tooManyRequests")
        self.messages.append(body)
        return json_response(
            {
                "status": 0,
                "status_message": "ok",
                "message_token": random.randint(10**18, 9 * 10**18),
                "chat_hostname": "SN-CHAT-01_",
                "billing_status": 1,
            }
        )
