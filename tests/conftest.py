"""Shared fixtures: a real SQLite database per test, Temporal test servers, seed data."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.db import Database, create_schema
from core.profiles import upsert_customer
from core.settings import Settings
from models.profiles import ContactIn, CustomerProfile

BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    """A Temporal binary from PATH or from this virtualenv (installed by pip)."""
    found = shutil.which(name) or shutil.which(name, path=str(BIN))
    if found is None:
        pytest.fail(f"{name} not found: run `make install` (pip install -e .[dev])")
    return found


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The native time-skipping test server: days of cascade pass in milliseconds."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    yield env
    await env.shutdown()


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
    database = Database.from_url(settings.database_url)
    await create_schema(database.engine)
    yield database
    await database.dispose()


async def seed(db: Database, customer_id: str, name: str = "Ann", **contacts: str | ContactIn) -> None:
    """Insert a customer with contact points given as channel=address (or ContactIn)."""
    points = [
        c if isinstance(c, ContactIn) else ContactIn(channel=channel, address=c)  # type: ignore[arg-type]
        for channel, c in contacts.items()
    ]
    await upsert_customer(db, CustomerProfile(id=customer_id, name=name, contacts=points))


@pytest.fixture
def unique_id() -> Iterator[str]:
    """A customer id no other test uses (workflow ids derive from it)."""
    yield f"c-{uuid.uuid4().hex[:10]}"
