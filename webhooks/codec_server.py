"""`python -m webhooks.codec_server`: the Temporal UI's codec server, for operators only.

The Temporal UI (or any script holding the credential) posts a workflow's payloads to
`<endpoint>/decode` to show them in clear, and to `<endpoint>/encode` for what an
operator types (a signal's input). The body is a Payloads message in protobuf JSON:
`{"payloads": [{"metadata": {...}, "data": "..."}]}`.

Every request carries the operator credential (CASCADE_CODEC_SERVER_CREDENTIAL), either
as `Authorization: Bearer <credential>` (scripts, a UI that passes its access token) or
as the endpoint path `/o/<credential>` (a UI given the endpoint in its configuration, as
`make run` does, which cannot add headers). A request without it is refused with 401,
so anyone who can reach the server but not the credential sees ciphertext. Answers
carry CORS headers for the UI origins in CASCADE_CODEC_CORS_ORIGINS only.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from temporalio.api.common.v1 import Payloads

from cascade.infra.codec import CodecError, EncryptionCodec, Keyring
from cascade.infra.logging import configure_logging, get_logger
from cascade.infra.settings import Settings, get_settings

log = get_logger("codec_server")
# The UI sends one workflow's payloads at a time; a history's worth is far below this.
MAX_BODY_BYTES = 4 * 1024 * 1024


class CredentialMissing(ValueError):
    """The codec server would start without an operator credential."""


def credential_of(settings: Settings) -> str:
    """The operator credential, or CredentialMissing saying which setting to set."""
    secret = settings.codec_server_credential
    value = secret.get_secret_value() if secret is not None else ""
    if len(value) < 16:
        raise CredentialMissing(
            "CASCADE_CODEC_SERVER_CREDENTIAL must be set to a random string of at least 16 characters: "
            "the codec server decrypts journeys' personal data for whoever holds it"
        )
    return value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def create_app(settings: Settings, codec: EncryptionCodec | None = None) -> FastAPI:
    """The codec server app: /encode, /decode (and under /o/<credential>/), /healthz."""
    credential = credential_of(settings)
    codec = codec or EncryptionCodec(Keyring.from_settings(settings))
    app = FastAPI(title="Cascade codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.codec_cors_origins,
        allow_methods=["POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        # A UI set to include cross-origin credentials sends them; without this it gets no answer.
        allow_credentials=True,
        max_age=600,
    )

    def allowed(given: str) -> bool:
        return hmac.compare_digest(given.encode(), credential.encode())

    async def run(direction: str, request: Request, authorization: str | None, path_credential: str | None) -> Any:
        bearer = (authorization or "").removeprefix("Bearer ").strip()
        if not allowed(path_credential if path_credential is not None else bearer):
            log.warning("codec_server.refused", direction=direction, client=request.client and request.client.host)
            return _error(401, "operator credential missing or wrong")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            payloads = json_format.Parse(body or b"{}", Payloads())
        except (json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"body is not a Payloads message in protobuf JSON: {exc}")
        try:
            done = await (codec.decode if direction == "decode" else codec.encode)(list(payloads.payloads))
        except CodecError as exc:
            # Names a key id, never a payload's content.
            return _error(422, str(exc))
        log.info("codec_server.answered", direction=direction, payloads=len(done))
        return JSONResponse(json_format.MessageToDict(Payloads(payloads=done)))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/decode")
    async def decode(request: Request, authorization: Annotated[str | None, Header()] = None) -> Any:
        """Payloads in clear for an operator's UI or CLI."""
        return await run("decode", request, authorization, None)

    @app.post("/encode")
    async def encode(request: Request, authorization: Annotated[str | None, Header()] = None) -> Any:
        """Payloads an operator typed, encrypted with the active key."""
        return await run("encode", request, authorization, None)

    @app.post("/o/{path_credential}/decode")
    async def decode_at(path_credential: str, request: Request) -> Any:
        """/decode for a UI given the credential in its endpoint."""
        return await run("decode", request, None, path_credential)

    @app.post("/o/{path_credential}/encode")
    async def encode_at(path_credential: str, request: Request) -> Any:
        """/encode for a UI given the credential in its endpoint."""
        return await run("encode", request, None, path_credential)

    return app


def launch_for_ui(settings: Settings, ui_port: int) -> tuple[dict[str, str], str]:
    """Environment for a codec server process serving a local UI on `ui_port`, and the
    endpoint to give that UI (`--ui-codec-endpoint`).

    Without a configured credential a random one is made for this run: only the UI given
    the endpoint (and whoever reads this process's command line) holds it.
    """
    credential = credential_of(settings) if settings.codec_server_credential is not None else ""
    credential = credential or secrets.token_urlsafe(24)
    origins = [f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"]
    env = {
        "CASCADE_CODEC_SERVER_CREDENTIAL": credential,
        "CASCADE_CODEC_CORS_ORIGINS": json.dumps(origins),
    }
    return env, f"http://{settings.codec_server_host}:{settings.codec_server_port}/o/{credential}"


def main() -> None:
    """Serve the codec server until SIGINT/SIGTERM; exit 1 with a clear message when misconfigured."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except (CredentialMissing, CodecError) as exc:
        raise SystemExit(f"codec server: {exc}") from None
    uvicorn.run(
        app, host=settings.codec_server_host, port=settings.codec_server_port, log_config=None, access_log=False
    )


if __name__ == "__main__":
    main()
