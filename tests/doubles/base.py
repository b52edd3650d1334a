"""What every HTTP provider double shares: a Starlette app served by uvicorn, a request log."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.helpers import serve_app


@dataclass
class Received:
    """One request as the double saw it."""

    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class HttpDouble:
    """A provider stand-in; subclasses add routes in `routes()` and answer like the provider."""

    received: list[Received] = field(default_factory=list)
    # Addresses that got their one scripted transient failure already.
    _failed_once: set[str] = field(default_factory=set)
    url: str = ""

    def routes(self) -> list[Any]:
        raise NotImplementedError

    async def record(self, request: Request) -> Received:
        item = Received(
            at=time.monotonic(),
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        self.received.append(item)
        return item

    def first_time(self, key: str) -> bool:
        """True the first time `key` is seen (a failure that a retry gets past)."""
        if key in self._failed_once:
            return False
        self._failed_once.add(key)
        return True

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async with serve_app(Starlette(routes=self.routes())) as url:
            self.url = url
            yield url


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(data, status_code=status, headers=headers)
