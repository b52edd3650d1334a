"""The async database engine: SQLite file by default, PostgreSQL through DATABASE_URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

import models.tables  # noqa: F401  (registers every table on SQLModel.metadata)


def async_url(url: str) -> str:
    """Map a plain database URL to the async driver we ship (aiosqlite, asyncpg)."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    backend = parsed.get_backend_name()
    if parsed.drivername in driver:
        parsed = parsed.set(drivername=driver[parsed.drivername])
    elif backend not in ("sqlite", "postgresql"):
        raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, schema: str | None = None) -> AsyncEngine:
    """An async engine for `url`; creates the folder of a SQLite file if needed.

    `schema` (PostgreSQL only) puts every table in that schema via the search path,
    so several installations (or concurrent test runs) can share one database.
    """
    full = async_url(url)
    parsed = make_url(full)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Worker, webhooks and CLI write the same file: WAL lets readers run beside the
        # writer, and the busy timeout turns a brief lock into a wait, not an error.
        engine = create_async_engine(full, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(full, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args)


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables that do not exist yet (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)


class Database:
    """An engine plus a session factory; handed to activities and web handlers."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, schema: str | None = None) -> Database:
        """A database for `url` (plain or async-driver form), optionally in a PostgreSQL schema."""
        return cls(create_engine(url, schema))

    @property
    def is_sqlite(self) -> bool:
        """True when the backend is SQLite (no row locks; upserts differ)."""
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def insert_ignoring_conflicts(db: Database, table: type[SQLModel]) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the database's dialect.

    Two workers racing to write the same row (same idempotency key) both succeed and
    exactly one row exists afterwards; the loser reads the winner's row.
    """
    if db.is_sqlite:
        return sqlite_insert(table)
    return pg_insert(table)
