"""The alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlmodel import SQLModel

from cascade.infra.db import Database, migrate


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


async def test_migrated_schema_matches_the_models(any_db: Database) -> None:
    async with any_db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], f"models/tables.py and migrations/ disagree: {diff}"


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
