"""What every HTTP provider double shares: a Starlette app served by uvicorn, a request log.

Every double can also answer late, the way a provider does whose answer is lost: the
request is processed at once (the message recorded, as the real provider would have
delivered it) and only the answer is held back, for `answer_delay` seconds or, while
`holding` is set, until `release()`. A client with a shorter timeout sees a read
timeout after the provider took the message; a worker killed meanwhile never sees it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
    # Answer late: seconds to hold every answer back, or hold them until release().
    answer_delay: float = 0.0
    holding: bool = False
    # Answers held back so far (their requests were processed).
    held: int = 0
    _released: asyncio.Event = field(default_factory=asyncio.Event)

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

    def release(self) -> None:
        """Let every held answer go, and answer at once from now on."""
        self.holding = False
        self._released.set()

    async def _answer_late(self) -> None:
        if self.holding:
            self.held += 1
            # Bounded: a test that forgets to release must not hang the server.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=120)
        elif self.answer_delay:
            self.held += 1
            await asyncio.sleep(self.answer_delay)

    def _late(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            response = await endpoint(request)
            await self._answer_late()
            return response

        return handler

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        routes = [Route(r.path, self._late(r.endpoint), methods=sorted(r.methods or ())) for r in self.routes()]
        try:
            async with serve_app(Starlette(routes=routes)) as url:
                self.url = url
                yield url
        finally:
            self.release()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(data, status_code=status, headers=headers)
