"""Firebase Cloud Messaging HTTP v1: POST /v1/projects/{id}/messages:send.

Auth is OAuth2 with a service account: we sign an RS256 JWT assertion with the
account's private key (cryptography), exchange it at the account's token_uri for a
one-hour access token, and cache that token until shortly before it expires. FCM has
no idempotency key; the collapse key derived from ours makes a duplicate replace an
undelivered copy on Android and the web, not one already shown, so a lost answer is
recorded `unknown`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cascade.infra.settings import FcmSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.http import HttpChannel, configuration_error, json_body, rate_limited, retry_after, transient_for_status
from models.tables import ContactStatus

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_assertion(account: dict[str, Any], now: float) -> str:
    """The service account's JWT bearer assertion (RFC 7523), RS256-signed."""
    key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("service account private_key must be an RSA key")
    header = {"alg": "RS256", "typ": "JWT", "kid": account.get("private_key_id", "")}
    claims = {
        "iss": account["client_email"],
        "scope": SCOPE,
        "aud": account["token_uri"],
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


class FcmChannel(HttpChannel):
    """Sends to app instances of one Firebase project."""

    name = provider = "fcm"
    idempotent = False

    def __init__(self, settings: FcmSettings, cost: float = 0.0) -> None:
        super().__init__(settings.base_url, settings.timeout_seconds, cost)
        self._settings = settings
        self._account: dict[str, Any] = (
            json.loads(settings.service_account_json.get_secret_value())
            if settings.service_account_json.get_secret_value()
            else {}
        )
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    async def _access_token(self) -> str:
        """A cached OAuth2 access token, refreshed a minute before it expires."""
        async with self._token_lock:
            now = time.time()
            if self._token is not None and now < self._token_expires - 60:
                return self._token
            if not self._account:
                raise self._configuration_error("no service account configured")
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": sign_assertion(self._account, now),
            }
            # The token exchange sends nothing: any failure of it is a plain retry.
            response = await self._post(self._account["token_uri"], provider="fcm-oauth", sends=False, data=form)
            data = json_body(response)
            if response.status_code != 200 or "access_token" not in data:
                if transient_for_status(response, "fcm-oauth") is not None:
                    reason = f"fcm-oauth: HTTP {response.status_code}"
                    raise TransientSendError(reason, retry_after=retry_after(response))
                raise self._configuration_error(f"token exchange refused: {data.get('error', response.status_code)}")
            self._token = str(data["access_token"])
            self._token_expires = now + float(data.get("expires_in", 3600))
            return self._token

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The v1 message: notification for the tray, data for the app, collapse keys."""
        notification: dict[str, str] = {"title": message.title or message.subject or "", "body": message.body}
        if message.image:
            notification["image"] = message.image
        data = {"idempotency_key": message.idempotency_key, **dict(message.metadata)}
        if message.url:
            data["url"] = message.url
        collapse = message.key_digest(32)
        body: dict[str, Any] = {
            "token": message.to,
            "notification": notification,
            "data": data,
            "android": {"collapse_key": collapse},
            "apns": {"headers": {"apns-collapse-id": collapse}},
        }
        if message.url:
            body["webpush"] = {"fcm_options": {"link": message.url}}
        return {"message": body}

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """One messages:send call; the returned `name` is the message id."""
        token = await self._access_token()
        response = await self._post(
            f"/v1/projects/{self._settings.project_id}/messages:send",
            json=self.payload(message),
            headers={"Authorization": f"Bearer {token}"},
        )
        data = json_body(response)
        if response.status_code == 200 and "name" in data:
            return SendReceipt(provider_message_id=str(data["name"]), cost=self._cost)
        if response.status_code == 401:
            # Token revoked or expired early: fetch a new one on the retry.
            self._token = None
            raise TransientSendError("fcm: 401 access token refused", retry_after=1.0)
        raise _classify(response, data)


def _classify(response: httpx.Response, data: dict[str, Any]) -> Exception:
    error = data.get("error") or {}
    status = str(error.get("status") or "")
    fcm_code = next(
        (d.get("errorCode") for d in error.get("details") or [] if d.get("@type") == _FCM_ERROR_TYPE),
        None,
    )
    code = fcm_code or status or str(response.status_code)
    reason = f"{code} {error.get('message') or ''}".strip()
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return PermanentSendError(reason, ContactStatus.INVALID)
    if code == "INVALID_ARGUMENT":
        message = str(error.get("message") or "").lower()
        # Only a bad token is the contact's problem; anything else is our payload.
        dead = "registration token" in message or "message.token" in message
        return PermanentSendError(reason, ContactStatus.INVALID if dead else None)
    if code == "QUOTA_EXCEEDED" or response.status_code == 429:
        return rate_limited(f"fcm: {reason}", retry_after=retry_after(response))
    if code in ("UNAVAILABLE", "INTERNAL") or response.status_code in (500, 503):
        return TransientSendError(f"fcm: {reason}", retry_after=retry_after(response))
    if code in ("THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED") or response.status_code == 403:
        return configuration_error("fcm", reason)
    return transient_for_status(response, "fcm", reason) or PermanentSendError(reason, None)
