"""HTTP semantics every endpoint shares: body limits, body errors, Allow, nosniff.

- A body over the limit is 413, whether it came with a Content-Length or chunked.
- A body that cannot be read as JSON (not UTF-8, or not JSON at all) is 422 with
  `fields: [{"field": "body", ...}]` and the place it went wrong as line and column,
  the same shape as any other invalid request.
- OPTIONS answers 204 with `Allow` listing every method the path has, and a 405 names
  them all too (Starlette's own answer lists only the first route's methods).
- Every response carries `X-Content-Type-Options: nosniff`: a browser must never guess
  that an echoed string (a WhatsApp challenge) is HTML.
"""

from __future__ import annotations

import json
import re
from email.message import Message as MimeHeader
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class BodyError(ValueError):
    """The request body cannot be read (not UTF-8, not JSON); `message` says where."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def body_error_response(error: BodyError) -> JSONResponse:
    """422 in the shape of every other invalid request, with `body` as the field."""
    return JSONResponse(
        {"error": f"invalid request: body: {error.message}", "fields": [{"field": "body", "message": error.message}]},
        status_code=422,
    )


def position(text: str, offset: int) -> str:
    """`line L, column C` (both 1-based) of a character offset in `text`."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def json_error(text: str, offset: int, reason: str) -> BodyError:
    """A JSON syntax error at `offset` of `text`, told as a person reads it."""
    return BodyError(f"not valid JSON: {reason} at {position(text, offset)}")


def utf8_text(raw: bytes) -> str:
    """The body as text; BodyError naming the first byte that is not UTF-8 and where it is."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8", errors="replace")
        byte = raw[exc.start : exc.start + 1].hex()
        raise BodyError(f"not UTF-8: byte 0x{byte} at {position(before, len(before))}") from None


def parse_json(raw: bytes) -> Any:
    """A raw body (one that is signed as bytes) parsed as JSON, or BodyError."""
    text = utf8_text(raw)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise json_error(text, exc.pos, exc.msg) from None


def _is_json(scope: Scope, content_type: bytes | None) -> bool:
    if content_type is None:
        # FastAPI reads a body without Content-Type as JSON.
        return scope.get("method") in _BODY_METHODS
    header = MimeHeader()
    header["content-type"] = content_type.decode("latin-1")
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _method_index(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    # Built from the OpenAPI document, which lists every public path and its methods
    # whatever way the routers were included.
    index: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "method_index", None)
    if index is None:
        index = []
        for path, operations in app.openapi().get("paths", {}).items():
            methods = {m.upper() for m in operations if m.upper() in _HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            index.append((compile_path(path)[0], methods))
        app.state.method_index = index
    return index


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the app answers on `path` (HEAD with GET, OPTIONS always); [] for no such path."""
    methods: set[str] = set()
    for pattern, known in _method_index(app):
        if pattern.match(path):
            methods |= known
    return sorted(methods | {"OPTIONS"}) if methods else []


def document_body_limit(app: FastAPI, limit: int) -> None:
    """Add the 413 of the body limit to every operation that takes a body, in the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for method, operation in operations.items():
                    if method.upper() in _BODY_METHODS:
                        operation.setdefault("responses", {}).setdefault(
                            "413", {"description": f"Request body larger than {limit} bytes"}
                        )
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


class HttpGuard:
    """ASGI middleware: the body limit, JSON bodies that are UTF-8, OPTIONS, nosniff.

    The body is read in full before the app runs (it reads it whole anyway, and the
    limit keeps it small), so an oversized chunked body is a 413 however it arrives,
    and the handlers see one complete body.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _nosniff(send)
        headers = dict(scope.get("headers") or [])
        if scope.get("method") == "OPTIONS" and isinstance(scope.get("app"), FastAPI):
            methods = allowed_methods(scope["app"], scope["path"])
            if methods:
                await Response(status_code=204, headers={"Allow": ", ".join(methods)})(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _is_json(scope, headers.get(b"content-type")):
            try:
                utf8_text(body)
            except BodyError as exc:
                await body_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"error": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, only a disconnect can come: wait for it as the server would.
        return await receive()

    return replay


def _nosniff(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                headers.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
