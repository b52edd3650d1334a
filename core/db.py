"""The async database engine: SQLite file by default, PostgreSQL through DATABASE_URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, event, inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

import models.tables  # noqa: F401  (registers every table on SQLModel.metadata)
from core.settings import Settings

T = TypeVar("T")


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


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaError(RuntimeError):
    """The database holds tables that the migrations did not create."""


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    if connection.dialect.name == "postgresql":
        # Worker and webhooks start together in docker compose: one migrates, the other
        # waits here and then finds nothing left to do.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(424242)")
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if tables and "alembic_version" not in tables and "customers" in tables:
        raise SchemaError(
            "the database has Cascade tables but no migration history (made before migrations "
            "existed): move it away (e.g. delete data/cascade.db) or run `alembic stamp head` "
            "if it matches the current models"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` with the alembic migrations (idempotent, safe to repeat).

    Every process that owns the database at start-up (worker, webhooks, demo) calls this;
    the migrations take the schema from wherever it is, so an upgrade never needs a wipe.
    """
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


class Database:
    """An engine plus a session factory; handed to activities and web handlers."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, schema: str | None = None) -> Database:
        """A database for `url` (plain or async-driver form), optionally in a PostgreSQL schema."""
        return cls(create_engine(url, schema))

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database the settings name (DATABASE_URL and, on PostgreSQL, the schema)."""
        return cls(create_engine(settings.database_url, settings.database_schema))

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


def run_with_database(work: Callable[[Database], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `work` on the configured database (migrated first) from synchronous code: a CLI."""

    async def main() -> T:
        from core.settings import get_settings

        db = Database.from_settings(settings or get_settings())
        try:
            await migrate(db.engine)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def insert_ignoring_conflicts(db: Database, table: type[SQLModel]) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the database's dialect.

    Two workers racing to write the same row (same idempotency key) both succeed and
    exactly one row exists afterwards; the loser reads the winner's row.
    """
    if db.is_sqlite:
        return sqlite_insert(table)
    return pg_insert(table)
