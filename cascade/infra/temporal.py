"""Connecting to Temporal the same way everywhere (pydantic payloads, one namespace)."""

from __future__ import annotations

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from cascade.infra.settings import Settings
from models import search_attributes as sa


async def connect(settings: Settings) -> Client:
    """A client for the configured server and namespace, speaking pydantic payloads."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


def quote(value: str) -> str:
    """A string literal for a visibility query (`CustomerId = "..."`)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def register_search_attributes(client: Client) -> None:
    """Register the journey search attributes on the client's namespace (idempotent).

    The dev server gets them from `--search-attribute` flags; this covers the test
    server and a server someone else started.
    """
    wanted = {k.name: k.indexed_value_type for k in sa.ALL}
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        known = set(existing.custom_attributes) | set(existing.system_attributes)
        wanted = {name: kind for name, kind in wanted.items() if name not in known}
    except RPCError as exc:
        # The time-skipping test server can add search attributes but not list them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
    if wanted:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=wanted)  # type: ignore[arg-type]
            )
        except RPCError as exc:
            # Without a listing (test server) a second registration is how we find out.
            if exc.status != RPCStatusCode.ALREADY_EXISTS and "already exists" not in str(exc):
                raise
