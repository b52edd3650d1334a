# ruff: noqa: RUF001  (Russian SMS texts: the Cyrillic letters are meant)
"""SMS.ru double: POST /sms/send (form, json=1), answers HTTP 200 with status codes in JSON.

Numbers ending 0202 / 0207 / 0209 get those per-number codes; 0230 gets the daily
limit (230); a wrong api_id gets the top-level 200.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response

_PER_NUMBER = {
    "0202": "Неправильно указан номер телефона получателя",
    "0207": "На этот номер нельзя отправлять сообщения",
    "0209": "Номер находится в стоп-листе",
    "0230": "Превышен общий лимит количества сообщений на этот номер в день",
}


@dataclass
class SmsRuDouble(HttpDouble):
    api_id: str = "A1B2C3D4-0000-0000-0000-000000000000"
    balance: float = 100.0
    messages: list[dict[str, str]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [Route("/sms/send", self.send, methods=["POST"])]

    async def send(self, request: Request) -> Response:
        item = await self.record(request)
        form = item.form()
        if form.get("api_id") != self.api_id:
            return json_response({"status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"})
        if not form.get("msg"):
            return json_response({"status": "ERROR", "status_code": 203, "status_text": "Нет текста сообщения"})
        to = form.get("to", "")
        result: dict[str, object]
        if to[-4:] in _PER_NUMBER:
            result = {"status": "ERROR", "status_code": int(to[-3:]), "status_text": _PER_NUMBER[to[-4:]]}
        else:
            self.messages.append(form)
            self.balance -= 1.5
            result = {
                "status": "OK",
                "status_code": 100,
                "sms_id": f"{uuid.uuid4().int % 10**6:06d}-{len(self.messages)}",
            }
        return json_response(
            {"status": "OK", "status_code": 100, "sms": {to: result}, "balance": round(self.balance, 2)}
        )
