"""Telegram Bot API double: POST /bot<token>/sendMessage, answers like api.telegram.org.

Chat ids: `blocked…` -> 403 blocked by the user, `missing…` -> 400 chat not found,
`flood…` -> 429 with parameters.retry_after once, then OK.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response


def _error(code: int, description: str, **extra: object) -> Response:
    return json_response({"ok": False, "error_code": code, "description": description, **extra}, status=code)


@dataclass
class TelegramDouble(HttpDouble):
    token: str = "123456:TEST-token"
    retry_after: int = 3
    messages: list[dict[str, object]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [Route("/bot{token}/sendMessage", self.send_message, methods=["POST"])]

    async def send_message(self, request: Request) -> Response:
        item = await self.record(request)
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        body = item.json()
        chat = str(body.get("chat_id", ""))
        if not body.get("text"):
            return _error(400, "Bad Request: message text is empty")
        if chat.startswith("blocked"):
            return _error(403, "Forbidden: bot was blocked by the user")
        if chat.startswith("missing"):
            return _error(400, "Bad Request: chat not found")
        if chat.startswith("flood") and self.first_time(chat):
            return _error(
                429,
                f"Too Many Requests: retry after {self.retry_after}",
                parameters={"retry_after": self.retry_after},
            )
        self.messages.append(body)
        result = {
            "message_id": len(self.messages),
            "from": {"id": 123456, "is_bot": True, "first_name": "Shop"},
            "chat": {"id": int(chat) if chat.lstrip("-").isdigit() else chat, "type": "private"},
            "date": int(time.time()),
            "text": body["text"],
        }
        if "reply_markup" in body:
            result["reply_markup"] = body["reply_markup"]
        return json_response({"ok": True, "result": result})
