"""Web push (RFC 8030) to a browser's push service, encrypted (RFC 8291) and VAPID-signed.

The contact address is the browser's PushSubscription as JSON
(`{"endpoint": ..., "keys": {"p256dh": ..., "auth": ...}}`). pywebpush does the
aes128gcm payload encryption and py-vapid the RFC 8292 JWT; the POST itself goes
through our pooled httpx client. Idempotency: the `Topic` header derived from our
key makes the push service replace a still-undelivered copy instead of adding one, but
a copy already shown is shown again, so a lost answer is recorded `unknown`.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02, VapidException
from pywebpush import WebPusher, WebPushException

from cascade.infra.settings import WebPushSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt
from channels.http import HttpChannel
from models.tables import ContactStatus

# Push services accept about 4 KB of encrypted payload; keep the JSON well under it.
MAX_PAYLOAD = 3000


class WebPushChannel(HttpChannel):
    """Sends browser notifications signed with one VAPID key."""

    name = provider = "webpush"
    idempotent = False

    def __init__(self, settings: WebPushSettings, cost: float = 0.0) -> None:
        key = settings.vapid_private_key.get_secret_value()
        if not key:
            raise ValueError("channel webpush: set CASCADE_WEBPUSH__VAPID_PRIVATE_KEY (the VAPID private key)")
        try:
            self._vapid = Vapid02.from_string(key)
        except ValueError:
            # Never echo the key: the message names the setting, not its value.
            raise ValueError("channel webpush: CASCADE_WEBPUSH__VAPID_PRIVATE_KEY is not a valid VAPID key") from None
        # Absolute URLs: every subscription has its own push service host.
        super().__init__("", settings.timeout_seconds, cost)
        self._settings = settings

    @property
    def application_server_key(self) -> str:
        """The public VAPID key browsers subscribe with (PushManager applicationServerKey)."""
        raw = self._vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def notification(self, message: OutboundMessage) -> bytes:
        """The JSON our service worker shows: title, body, icon, image, link, actions."""
        data: dict[str, Any] = {"title": message.title or message.subject or "", "body": message.body}
        for key in ("icon", "image", "url"):
            if (value := getattr(message, key)) is not None:
                data[key] = value
        if message.buttons:
            data["actions"] = [
                {"action": f"b{i}", "title": b.text, "url": b.url} for i, b in enumerate(message.buttons)
            ]
        data["tag"] = message.key_digest(16)
        return json.dumps(data, ensure_ascii=False).encode()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Encrypt for the subscription, sign for its push service, POST."""
        try:
            subscription = json.loads(message.to)
            pusher = WebPusher(subscription)
            payload = self.notification(message)
            if len(payload) > MAX_PAYLOAD:
                raise PermanentSendError(f"413 notification of {len(payload)} bytes is too large", None)
            encoded = pusher.encode(payload, "aes128gcm")
        except (ValueError, KeyError, TypeError, WebPushException) as exc:
            raise PermanentSendError(f"invalid push subscription: {exc}", ContactStatus.INVALID) from None
        endpoint = str(subscription["endpoint"])
        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "sub": self._settings.vapid_subject,
            "exp": int(time.time()) + 12 * 3600,
        }
        try:
            vapid = self._vapid.sign(claims)
        except VapidException as exc:
            raise self._configuration_error(f"VAPID claims refused: {exc}") from None
        headers = {
            **vapid,
            "TTL": str(self._settings.ttl_seconds),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Urgency": "normal",
            "Topic": message.key_digest(32),
        }
        response = await self._post(endpoint, content=encoded["body"], headers=headers)
        status = response.status_code
        if status in (200, 201, 202):
            # The push service names the message in Location; keep our own id otherwise.
            location = response.headers.get("location") or f"webpush-{message.key_digest()}"
            return SendReceipt(provider_message_id=location, cost=self._cost)
        detail = response.text[:200]
        if status in (404, 410):
            raise PermanentSendError(f"{status} push subscription is gone", ContactStatus.INVALID)
        if status == 413:
            raise PermanentSendError(f"413 payload too large: {detail}", None)
        if transient := self._transient(response, detail):
            raise transient
        if status in (401, 403):
            raise self._configuration_error(f"{status} VAPID rejected: {detail}")
        # 400: a malformed subscription or request.
        raise PermanentSendError(f"{status} {detail}", ContactStatus.INVALID)
