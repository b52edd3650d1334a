"""A push service double (RFC 8030): POST /push/<id>, VAPID-checked, payload decrypted.

`subscribe()` makes a browser-side subscription (P-256 key pair + auth secret), as
PushManager.subscribe() would; the double decrypts each aes128gcm payload with it,
so a test sees exactly what the service worker would get. Subscriptions created
with state "gone" answer 410, "throttled" answers 429 with Retry-After once.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response


def new_vapid_key() -> str:
    """A fresh VAPID private key, raw and base64url-encoded (as an operator would configure it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@dataclass
class Subscription:
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    state: str
    # The applicationServerKey the browser subscribed with: pushes signed by another key are refused.
    app_key: str | None = None


@dataclass
class PushServiceDouble(HttpDouble):
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # (subscription id, decrypted notification JSON, request headers)
    delivered: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [Route("/push/{sub_id}", self.push, methods=["POST"])]

    def subscribe(self, state: str = "ok", app_key: str | None = None) -> str:
        """A PushSubscription JSON, as a browser hands it to the shop."""
        sub_id = uuid.uuid4().hex
        key = ec.generate_private_key(ec.SECP256R1())
        auth = uuid.uuid4().bytes
        self.subscriptions[sub_id] = Subscription(key, auth, state, app_key)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return json.dumps(
            {"endpoint": f"{self.url}/push/{sub_id}", "keys": {"p256dh": _b64(public), "auth": _b64(auth)}}
        )

    async def push(self, request: Request) -> Response:
        item = await self.record(request)
        auth = request.headers.get("authorization", "")
        try:
            valid = auth.lower().startswith("vapid ") and Vapid02.verify(auth)
        except Exception:
            valid = False
        if not valid:
            return json_response({"code": 401, "errno": 109, "error": "Unauthorized", "message": "bad VAPID"}, 401)
        token = auth.split("t=", 1)[1].split(",", 1)[0]
        claims = json.loads(_unb64(token.split(".")[1]))
        if claims.get("aud") != self.url or not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return json_response({"code": 403, "errno": 109, "error": "Forbidden", "message": "bad aud/sub"}, 403)
        if "ttl" not in item.headers:
            return json_response({"code": 400, "errno": 111, "error": "Bad Request", "message": "Missing TTL"}, 400)
        sub_id = request.path_params["sub_id"]
        sub = self.subscriptions.get(sub_id)
        if sub is None or sub.state == "gone":
            return json_response({"code": 410, "errno": 106, "error": "Gone", "message": "expired"}, 410)
        signer = auth.split("k=", 1)[1].split(",", 1)[0]
        if sub.app_key is not None and signer != sub.app_key:
            return json_response({"code": 403, "errno": 109, "error": "Forbidden", "message": "key mismatch"}, 403)
        if sub.state == "throttled" and self.first_time(sub_id):
            return Response(status_code=429, headers={"Retry-After": "7"})
        if item.headers.get("content-encoding") != "aes128gcm":
            return json_response({"code": 400, "errno": 110, "error": "Bad Request", "message": "encoding"}, 400)
        plain = http_ece.decrypt(item.body, private_key=sub.key, auth_secret=sub.auth, version="aes128gcm")
        self.delivered.append((sub_id, json.loads(plain), item.headers))
        return Response(status_code=201, headers={"Location": f"{self.url}/message/{uuid.uuid4().hex}"})
