"""Fresh migrated databases for tests without running every migration for every test.

Running the alembic chain costs 0.2-1 s on SQLite and 0.5-2.5 s on PostgreSQL per test,
minutes over the suite. The chain runs once per session; each test then gets a copy: the
migrated SQLite file copied, or on PostgreSQL the statements the migration executed,
replayed into the test's own schema in one transaction. tests/test_migrations.py still
runs the real chain on both databases and checks a copy has the same tables, columns and
indexes as a migrated schema.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import event

from cascade.infra.db import Database, migrate

_LOCK = asyncio.Lock()
_SQLITE_TEMPLATE: Path | None = None
_PG_STATEMENTS: list[tuple[str, Any]] | None = None
# What changes a schema or writes alembic's version; reflection SELECTs are not replayed,
# nor the advisory lock and schema creation (made per test before the replay).
_REPLAYED = (
    "CREATE TABLE",
    "CREATE INDEX",
    "CREATE UNIQUE INDEX",
    "CREATE TYPE",
    "ALTER",
    "DROP",
    "INSERT",
    "UPDATE",
    "DELETE",
    "COMMENT",
    "CREATE SEQUENCE",
)


async def sqlite_copy(target: Path) -> None:
    """Put a migrated SQLite database file at `target`."""
    global _SQLITE_TEMPLATE
    async with _LOCK:
        if _SQLITE_TEMPLATE is None:
            template = Path(tempfile.mkdtemp(prefix="cascade-schema-")) / "template.db"
            database = Database.from_url(f"sqlite:///{template}")
            await migrate(database.engine)
            await database.dispose()
            _SQLITE_TEMPLATE = template
    shutil.copyfile(_SQLITE_TEMPLATE, target)


async def _record_postgres(url: str) -> list[tuple[str, Any]]:
    schema = f"tpl_{uuid.uuid4().hex[:12]}"
    database = Database.from_url(url, schema=schema)
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(_REPLAYED):
            seen.append((statement, parameters))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        await migrate(database.engine)
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)
        async with database.engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await database.dispose()
    return seen


async def postgres_schema(url: str, schema: str) -> Database:
    """A database in a new PostgreSQL `schema` holding what the migrations make."""
    global _PG_STATEMENTS
    async with _LOCK:
        if _PG_STATEMENTS is None:
            _PG_STATEMENTS = await _record_postgres(url)
    database = Database.from_url(url, schema=schema)
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        for statement, parameters in _PG_STATEMENTS:
            await conn.exec_driver_sql(statement, parameters)
    return database
