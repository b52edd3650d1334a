"""Who may see the console: the holder of an active API key, by header or by login cookie.

A browser logs in once with its key (POST /console/login); the cookie it gets names the
key's prefix and an expiry, signed with HMAC-SHA256 (``CASCADE_CONSOLE_SECRET``, else a key
derived from the tracking secret). Every request checks the signature, the expiry and that
the key is still active, so revoking a key logs its sessions out at once. Scripts send the
key itself in ``X-API-Key``. Nothing in the console is served without one of the two.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from fastapi import Request

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from webhooks.keys import authenticate, key_row

COOKIE = "cascade_console"


@dataclass(frozen=True)
class Viewer:
    """The tenant and key prefix a console request is made with."""

    tenant: str
    prefix: str


class NotLoggedIn(Exception):
    """No valid key or session: pages redirect to the login, the JSON API answers 401."""


def _secret(settings: Settings) -> bytes:
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    # A key of its own for the console, so a console cookie can never pass as a tracking token.
    base = settings.tracking_secret.get_secret_value().encode()
    return hmac.new(base, b"cascade-console-session", hashlib.sha256).digest()


def _signature(settings: Settings, payload: str) -> str:
    return hmac.new(_secret(settings), payload.encode(), hashlib.sha256).hexdigest()


def session_cookie(settings: Settings, prefix: str, now: float | None = None) -> str:
    """The cookie value for a login with the key `prefix`."""
    expires = int((now or time.time()) + settings.console_session_hours * 3600)
    payload = f"{prefix}.{expires}"
    return f"{payload}.{_signature(settings, payload)}"


def cookie_prefix(settings: Settings, value: str, now: float | None = None) -> str | None:
    """The key prefix a cookie value names, or None if it is forged, malformed or expired."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    prefix, expires, signature = parts
    if not hmac.compare_digest(signature, _signature(settings, f"{prefix}.{expires}")):
        return None
    if int(expires) < (now or time.time()):
        return None
    return prefix


async def viewer_of(request: Request) -> Viewer:
    """The viewer of a console request, or NotLoggedIn."""
    db: Database = request.app.state.db
    settings: Settings = request.app.state.settings
    key = request.headers.get("x-api-key")
    if key:
        row = await authenticate(db, key)
        if row is None:
            raise NotLoggedIn("invalid or revoked API key")
        return Viewer(row.tenant, row.prefix)
    cookie = request.cookies.get(COOKIE)
    prefix = cookie_prefix(settings, cookie) if cookie else None
    if prefix is None:
        raise NotLoggedIn("log in with an API key")
    active = await key_row(db, prefix)
    if active is None or active.revoked_at is not None:
        raise NotLoggedIn("the key of this session was revoked")
    return Viewer(active.tenant, active.prefix)
