"""A time-skipping server per test module, for modules whose journeys outlive their tests.

The recipients' journeys a broadcast or a segment transition starts may still be waiting
(with activities due) when a test ends, and the time-skipping server does not skip time
while activities are outstanding: on the session's shared server they would freeze the
clock of every later test. A module imports these two fixtures to get a server of its own: they are
named `ts_env` and `client`, so they override conftest's session-wide ones there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cascade.infra.temporal import register_search_attributes
from tests.conftest import start_ts_env


@pytest.fixture(scope="module", name="ts_env")
async def own_ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server for this module only."""
    env = await start_ts_env()
    yield env
    await env.shutdown()


@pytest.fixture(scope="module", name="client")
async def own_client(ts_env: WorkflowEnvironment) -> Client:
    """This module's server's client, with the journey search attributes registered."""
    await register_search_attributes(ts_env.client)
    return ts_env.client
