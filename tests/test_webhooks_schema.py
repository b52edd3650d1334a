"""Schemathesis against the app's own OpenAPI spec: no generated input gets a 5xx.

The app runs in uvicorn on a thread of its own (its own event loop, database and Temporal
client against the dev server), so the generated requests are real HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from pydantic import SecretStr

from cascade.infra.settings import Settings
from webhooks.app import create_app

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def live_url(dev_server, tmp_path_factory) -> Iterator[str]:
    target = dev_server.client.service_client.config.target_host
    settings = Settings(
        temporal_address=target,
        database_url=f"sqlite:///{Path(tmp_path_factory.mktemp('st')) / 'cascade.db'}",
        webhook_twilio_auth_token=SecretStr("x"),
        webhook_viber_auth_token=SecretStr("x"),
        webhook_whatsapp_app_secret=SecretStr("x"),
        webhook_vk_secret=SecretStr("x"),
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("webhooks server did not start")
        threading.Event().wait(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@schema.parametrize()
@hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, live_url):
    response = case.call(base_url=live_url, timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    content_type = response.headers.get("content-type") or ""
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if 400 <= response.status_code < 500 and content_type.startswith("application/json"):
        assert response.json().get("error"), response.text  # a clear body, never a bare status


def test_the_api_key_schemes_are_documented_on_every_operation_that_takes_a_key() -> None:
    # `tenant_of` reads the headers itself (no security sub-dependencies on the hot path),
    # so the document names the schemes explicitly: a client generator must still see them.
    schema = create_app(Settings(database_url="sqlite:///:memory:")).openapi()
    assert schema["components"]["securitySchemes"] == {
        "APIKeyHeader": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "The API key in X-API-Key",
        },
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    }
    secured = sorted(
        f"{method} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    )
    assert secured == ["get /v1/segments/{name}", "post /v1/events", "post /v1/events/batch"]
