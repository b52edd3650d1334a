"""FCM HTTP v1 double with its OAuth2 token endpoint.

POST /token takes a service account's RS256 JWT assertion (verified against the
account's public key, scope and audience checked) and returns an access token;
POST /v1/projects/{id}/messages:send needs it as Bearer. Tokens `dead…` ->
404 UNREGISTERED, `bad…` -> 400 INVALID_ARGUMENT (not a valid registration token),
`quota…` -> 429 QUOTA_EXCEEDED with Retry-After once.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.base import HttpDouble, json_response

_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _error(
    status: int, grpc: str, message: str, fcm_code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if fcm_code:
        error["details"] = [{"@type": _FCM_ERROR, "errorCode": fcm_code}]
    return json_response({"error": error}, status=status, headers=headers)


@dataclass
class FcmDouble(HttpDouble):
    project_id: str = "shop-app"
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    client_email: str = "cascade@shop-app.iam.gserviceaccount.com"
    tokens_issued: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [
            Route("/token", self.token, methods=["POST"]),
            Route("/v1/projects/{project}/messages:send", self.send, methods=["POST"]),
        ]

    def service_account_json(self) -> str:
        """A service account key file as the Firebase console downloads it."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": self.client_email,
                "token_uri": f"{self.url}/token",
            }
        )

    async def token(self, request: Request) -> Response:
        item = await self.record(request)
        form = item.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return json_response({"error": "unsupported_grant_type"}, 400)
        try:
            head, payload, signature = form["assertion"].split(".")
            self.key.public_key().verify(
                _unb64(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            claims = json.loads(_unb64(payload))
        except (KeyError, ValueError, InvalidSignature):
            return json_response({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        now = time.time()
        if (
            claims.get("iss") != self.client_email
            or claims.get("aud") != f"{self.url}/token"
            or "firebase.messaging" not in claims.get("scope", "")
            or not claims["iat"] - 60 <= now <= claims["exp"]
        ):
            return json_response({"error": "invalid_grant", "error_description": "Invalid JWT claims."}, 400)
        access = f"ya29.{uuid.uuid4().hex}"
        self.tokens_issued.append(access)
        return json_response({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    async def send(self, request: Request) -> Response:
        item = await self.record(request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens_issued:
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.path_params["project"] != self.project_id:
            return _error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
        message = item.json().get("message") or {}
        token = str(message.get("token", ""))
        if token.startswith("dead"):
            return _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if token.startswith("bad"):
            return _error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        if token.startswith("quota") and self.first_time(token):
            return _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED", headers={"Retry-After": "11"})
        self.messages.append(message)
        return json_response({"name": f"projects/{self.project_id}/messages/0:{uuid.uuid4().int % 10**16}"})
