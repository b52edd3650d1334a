"""WhatsApp Cloud API double: POST /{version}/{phone-number-id}/messages with a Bearer token.

`to` ending 0026 -> 131026 undeliverable; ending 0429 -> 130429 throughput once;
template `no_such_template` -> 132001; free text to a number without an open
24-hour window (not in `open_windows`) -> 131047.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response


def _error(status: int, code: int, message: str, details: str) -> Response:
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": uuid.uuid4().hex[:20],
        }
    }
    return json_response(body, status=status)


@dataclass
class WhatsAppDouble(HttpDouble):
    phone_number_id: str = "106540352242922"
    access_token: str = "EAAG-test-token"
    open_windows: set[str] = field(default_factory=set)
    messages: list[dict[str, object]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [Route("/{version}/{phone_id}/messages", self.send, methods=["POST"])]

    async def send(self, request: Request) -> Response:
        item = await self.record(request)
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token", "")
        if request.path_params["phone_id"] != self.phone_number_id:
            return _error(400, 100, "Unsupported post request.", "phone number id not found")
        body = item.json()
        to = str(body.get("to", ""))
        if body.get("messaging_product") != "whatsapp":
            return _error(400, 100, "(#100) The parameter messaging_product is required.", "")
        if to.endswith("0026"):
            return _error(400, 131026, "Message Undeliverable.", "Message Undeliverable.")
        if to.endswith("0429") and self.first_time(to):
            return _error(400, 130429, "Rate limit hit", "Cloud API message throughput has been reached.")
        if body.get("type") == "template":
            template = body.get("template") or {}
            if template.get("name") == "no_such_template":
                return _error(404, 132001, "Template name does not exist in the translation", "template not found")
        elif to not in self.open_windows:
            return _error(
                400,
                131047,
                "Re-engagement message",
                "Message failed to send because more than 24 hours have passed since the customer last replied.",
            )
        self.messages.append(body)
        return json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": f"wamid.{uuid.uuid4().hex.upper()}"}],
            }
        )
