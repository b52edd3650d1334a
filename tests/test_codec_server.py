"""The codec server (issue 17 item 2): the Temporal UI's /decode and /encode, for operators only."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from cascade.infra.codec import ENCODING, KEY_ID, EncryptionCodec, Keyring
from cascade.infra.settings import Settings
from tests.helpers import serve_app
from webhooks.codec_server import CredentialMissing, create_app

CREDENTIAL = "operator-credential-for-tests-0123456789"
UI = "http://127.0.0.1:8233"
ROOT = Path(__file__).resolve().parents[1]


def _settings(**kw: Any) -> Settings:
    return Settings(codec_server_credential=CREDENTIAL, codec_cors_origins=[UI], **kw)


def _body(*payloads: Payload) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def _payloads(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


CLEAR = Payload(metadata={"encoding": b"json/plain"}, data=b'{"customer":"Ann","email":"ann@example.com"}')


async def _sealed(settings: Settings) -> Payload:
    (sealed,) = await EncryptionCodec(Keyring.from_settings(settings)).encode([CLEAR])
    return sealed


async def test_decode_needs_the_operator_credential():
    settings = _settings()
    sealed = await _sealed(settings)
    async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-credential-0000000"}, {"Authorization": CREDENTIAL[:-1]}):
            refused = await http.post("/decode", json=_body(sealed), headers=headers)
            assert refused.status_code == 401 and "Ann" not in refused.text
            assert refused.json() == {"detail": "operator credential missing or wrong"}
        assert (await http.post("/o/not-the-credential/decode", json=_body(sealed))).status_code == 401

        ok = await http.post("/decode", json=_body(sealed), headers={"Authorization": f"Bearer {CREDENTIAL}"})
        assert ok.status_code == 200 and _payloads(ok.json()) == [CLEAR]
        # The UI given `--ui-codec-endpoint <server>/o/<credential>` posts here, without headers.
        at_path = await http.post(f"/o/{CREDENTIAL}/decode", json=_body(sealed, CLEAR), headers={"X-Namespace": "x"})
        assert at_path.status_code == 200 and _payloads(at_path.json()) == [CLEAR, CLEAR]


async def test_encode_encrypts_with_the_active_key_and_decodes_back():
    settings = _settings()
    auth = {"Authorization": f"Bearer {CREDENTIAL}"}
    async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url, headers=auth) as http:
        encoded = await http.post("/encode", json=_body(CLEAR))
        (sealed,) = _payloads(encoded.json())
        assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"dev"
        assert b"Ann" not in sealed.data
        assert _payloads((await http.post("/decode", json=encoded.json())).json()) == [CLEAR]
        # The wire format is protobuf JSON: bytes as base64, as the UI sends them.
        assert encoded.json()["payloads"][0]["metadata"]["encoding"] == base64.b64encode(ENCODING).decode()


async def test_cors_admits_the_ui_origin_only():
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-namespace"}
    async with serve_app(create_app(_settings())) as url, httpx.AsyncClient(base_url=url) as http:
        ui = await http.options(f"/o/{CREDENTIAL}/decode", headers={"Origin": UI, **preflight})
        assert ui.status_code == 200 and ui.headers["access-control-allow-origin"] == UI
        assert "x-namespace" in ui.headers["access-control-allow-headers"].lower()
        other = await http.options("/decode", headers={"Origin": "http://evil.example", **preflight})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        # A refusal still carries CORS headers, so the UI can show it instead of a network error.
        refused = await http.post("/decode", json=_body(CLEAR), headers={"Origin": UI})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == UI


async def test_bad_bodies_and_unknown_keys_get_a_clear_answer_not_a_trace():
    settings = _settings()
    other_key = base64.b64encode(os.urandom(32)).decode()
    sealed = await _sealed(Settings(codec_keys={"k-gone": other_key}))
    auth = {"Authorization": f"Bearer {CREDENTIAL}"}
    async with serve_app(create_app(settings)) as url, httpx.AsyncClient(base_url=url, headers=auth) as http:
        bad = await http.post("/decode", content=b'{"payloads": [{"data": "not base64!!"}]}')
        assert bad.status_code == 400 and bad.json()["detail"].startswith("body is not a Payloads message")
        assert "Traceback" not in bad.text
        missing = await http.post("/decode", json=_body(sealed))
        assert missing.status_code == 422 and "'k-gone'" in missing.json()["detail"]


def test_the_server_does_not_start_without_a_credential():
    with pytest.raises(CredentialMissing, match="CASCADE_CODEC_SERVER_CREDENTIAL"):
        create_app(Settings(codec_server_credential=None))
    with pytest.raises(CredentialMissing):
        create_app(Settings(codec_server_credential="short"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_CODEC")}
    done = subprocess.run(
        [sys.executable, "-m", "webhooks.codec_server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "codec server: CASCADE_CODEC_SERVER_CREDENTIAL must be set" in done.stderr
    assert "Traceback" not in done.stderr
