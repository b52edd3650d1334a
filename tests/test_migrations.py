"""The alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlmodel import SQLModel

from cascade.infra.db import MIGRATIONS, Database, migrate
from tests.conftest import POSTGRES_URL, postgres_execute, require_postgres


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A database made by running the whole migration chain (`any_db` is a copy of one)."""
    schema = f"m_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        database = Database.from_url(f"sqlite:///{tmp_path / 'migrated.db'}")
    else:
        await require_postgres()
        database = Database.from_url(POSTGRES_URL, schema=schema)
    await migrate(database.engine)
    yield database
    await database.dispose()
    if request.param == "postgresql":
        await postgres_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_migrated_schema_matches_the_models(migrated_db: Database) -> None:
    async with migrated_db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], f"models/tables.py and migrations/ disagree: {diff}"


def _version(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def test_the_tests_copy_of_a_migrated_schema_is_the_same_schema(any_db: Database) -> None:
    # Tests get a copy of one migrated database (tests/schema_template.py), not a run of
    # the chain each: the copy must be what the chain makes, to the version stamp.
    async with any_db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
        version = await conn.run_sync(_version)
    assert diff == [], f"the tests' schema copy differs from the models: {diff}"
    assert version == ScriptDirectory(str(MIGRATIONS)).get_current_head()


async def test_migrating_twice_changes_nothing(any_db: Database) -> None:
    await migrate(any_db.engine)
    async with any_db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"customers", "contact_points", "consents", "deliveries", "journey_runs", "alembic_version"} <= tables


async def test_a_database_made_without_migrations_is_refused_with_advice(tmp_path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'old.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        await migrate(db.engine)
    except RuntimeError as exc:
        assert "no migration history" in str(exc) and "alembic stamp head" in str(exc)
    else:
        raise AssertionError("migrate() accepted tables it did not create")
    finally:
        await db.dispose()
