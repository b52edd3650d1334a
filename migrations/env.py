"""Alembic environment: runs migrations on the connection the app hands over, or on DATABASE_URL.

`cascade.infra.db.migrate()` passes its own (async engine's) connection in `config.attributes`, so
the worker, the webhooks service and the tests migrate without a second event loop; the
`alembic` command line opens its own connection from the settings.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import models.tables  # noqa: F401  (registers every table on SQLModel.metadata)
from cascade.infra.db import Database, prepare_postgres
from cascade.infra.settings import get_settings

target_metadata = SQLModel.metadata


def _render_item(kind: str, obj: Any, _context: Any) -> str | Literal[False]:
    # sqlmodel's AutoString is a plain VARCHAR: write it as one, so migrations don't
    # depend on sqlmodel internals.
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _run(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    engine = Database.from_settings(get_settings()).engine
    async with engine.connect() as connection:
        # The same lock and schema creation as cascade.infra.db.migrate().
        await connection.run_sync(prepare_postgres)
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")

given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    asyncio.run(_run_from_settings())
