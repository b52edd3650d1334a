"""VK API double: POST /method/messages.send (form); HTTP 200 with `response` or `error`.

Like VK, a repeated random_id to the same peer sends nothing and returns the first id.
Peers 900… / 901… / 902… get those error codes; 6… gets error 6 (too many requests) once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response

_ERRORS = {
    "900": "Can't send messages for users from blacklist",
    "901": "Can't send messages for users without permission",
    "902": "Can't send messages to this user due to their privacy settings",
}


def _error(code: int, text: str, params: dict[str, str]) -> Response:
    request_params = [{"key": k, "value": v} for k, v in params.items() if k != "access_token"]
    return json_response({"error": {"error_code": code, "error_msg": text, "request_params": request_params}})


@dataclass
class VkDouble(HttpDouble):
    access_token: str = "vk1.a.community-token"
    messages: list[dict[str, str]] = field(default_factory=list)
    _sent: dict[tuple[str, str], int] = field(default_factory=dict)

    def routes(self) -> list[Route]:
        return [Route("/method/messages.send", self.send, methods=["POST"])]

    async def send(self, request: Request) -> Response:
        item = await self.record(request)
        form = item.form()
        if form.get("access_token") != self.access_token:
            return _error(5, "User authorization failed: invalid access_token (4).", form)
        if not form.get("v"):
            return _error(8, "Invalid request: v (version) is required", form)
        if "random_id" not in form:
            return _error(100, "One of the parameters specified was missing or invalid: random_id is required", form)
        peer = form.get("peer_id", "")
        if peer[:3] in _ERRORS:
            return _error(int(peer[:3]), _ERRORS[peer[:3]], form)
        if peer.startswith("6") and self.first_time(peer):
            return _error(6, "Too many requests per second", form)
        key = (peer, form["random_id"])
        if key not in self._sent:
            self.messages.append(form)
            self._sent[key] = len(self.messages)
        return json_response({"response": self._sent[key]})
