"""The async database engine: SQLite file by default, PostgreSQL through DATABASE_URL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlencode

from sqlalchemy import URL, Connection, Engine, event, inspect, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Session, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

import models.tables  # noqa: F401  (registers every table on SQLModel.metadata)
from cascade.infra.settings import Settings, check_schema_name, get_settings

T = TypeVar("T")
P = ParamSpec("P")


_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
# Query parameters that stay in the URL: SQLAlchemy's asyncpg dialect reads them itself.
_DIALECT_PARAMETERS = {"prepared_statement_cache_size"}
# Query parameters asyncpg.connect() takes as keyword arguments, with their types. Every
# other parameter is libpq's (sslmode, sslrootcert, target_session_attrs, application_name,
# options, ...) and goes to asyncpg in a DSN, whose parser reads them the way libpq does.
_ASYNCPG_ARGUMENTS: dict[str, type] = {
    "ssl": str,
    "direct_tls": bool,
    "timeout": float,
    "command_timeout": float,
    "statement_cache_size": int,
    "max_cached_statement_lifetime": float,
    "max_cacheable_statement_size": int,
}
# libpq's name for asyncpg's connect timeout.
_RENAMED = {"connect_timeout": "timeout"}
_EXAMPLES = "e.g. sqlite:///data/cascade.db or postgresql://user:password@host:5432/dbname"
# Connections to a SQLite file per process (see create_engine for why so few).
SQLITE_POOL_SIZE = 5
SQLITE_MAX_OVERFLOW = 10


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        # SQLAlchemy's message would not help, and the URL may hold a password.
        raise ValueError(f"DATABASE_URL is not a database URL ({_EXAMPLES})") from None


def _normalise(url: str) -> URL:
    parsed = _parse(url)
    backend = parsed.drivername.partition("+")[0]
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql, {_EXAMPLES})")
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def async_url(url: str) -> str:
    """The URL with the async driver we ship, whatever driver the pasted URL names.

    `sqlite://`, `sqlite+pysqlite://` -> `sqlite+aiosqlite://`; `postgres://`,
    `postgresql://`, `postgresql+psycopg://`, `postgresql+psycopg2://`, `postgresql+pg8000://`
    ... -> `postgresql+asyncpg://`. Anything else is refused with a ValueError.
    """
    return _normalise(url).render_as_string(hide_password=False)


def _argument(name: str, value: str, kind: type) -> Any:
    if kind is str:
        return value
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"DATABASE_URL: {name}={value!r} must be true or false")
        return value.lower() in ("true", "1", "yes", "on")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"DATABASE_URL: {name}={value!r} must be a number") from None


def postgres_connect_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """Split a PostgreSQL URL's query into what asyncpg understands.

    psycopg and libpq URLs carry libpq parameters (`?sslmode=require&connect_timeout=10`)
    that asyncpg does not take as keyword arguments: they travel in a DSN instead.
    """
    kept: dict[str, str | tuple[str, ...]] = {}
    args: dict[str, Any] = {}
    libpq: dict[str, str] = {}
    for key, raw in url.query.items():
        value = raw[-1] if isinstance(raw, tuple) else raw
        name = _RENAMED.get(key, key)
        if key in _DIALECT_PARAMETERS:
            kept[key] = raw
        elif name in _ASYNCPG_ARGUMENTS:
            if name == "ssl" and value.lower() in ("true", "false", "1", "0"):
                args[name] = value.lower() in ("true", "1")
            else:
                args[name] = _argument(key, value, _ASYNCPG_ARGUMENTS[name])
        else:
            libpq[key] = value
    if libpq:
        args["dsn"] = "postgresql://?" + urlencode(libpq)
    return url.set(query=kept), args


def quote_identifier(name: str) -> str:
    """`name` as a PostgreSQL quoted identifier (exact case, any character but NUL)."""
    return '"' + name.replace('"', '""') + '"'


def create_engine(
    url: str,
    schema: str | None = None,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 30.0,
) -> AsyncEngine:
    """An async engine for `url`; creates the folder of a SQLite file if needed.

    `schema` (PostgreSQL only) puts every table in that schema via the search path,
    so several installations (or concurrent test runs) can share one database; `migrate`
    creates it if it is missing. The pool size and overflow apply to PostgreSQL (see
    `Settings.pool_size` for how they are matched to the worker); a SQLite file keeps a
    small pool of its own, with `pool_timeout` as its wait.
    """
    parsed = _normalise(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        # Worker, webhooks and CLI write the same file: WAL lets readers run beside the
        # writer, and the busy timeout turns a brief lock into a wait, not an error.
        pool: dict[str, Any] = {}
        if on_disk:
            # Few connections on purpose (an in-memory database keeps SQLAlchemy's single
            # static one): SQLite has one writer, so more connections do not write faster,
            # they only wait in its busy handler, which serves them in no order and fails
            # the unlucky after the busy timeout. Past the pool, sessions wait in the pool's
            # queue, in turn. Measured: 80 connections failed 119 of a 1,000-send burst's
            # writes with "database is locked", 40 failed the throughput bench's starter.
            pool = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW, "pool_timeout": pool_timeout}
        engine = create_async_engine(parsed, connect_args={"timeout": 30}, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    parsed, connect_args = postgres_connect_args(parsed)
    options: dict[str, Any] = {}
    if schema is not None:
        schema = check_schema_name(schema)
        connect_args["server_settings"] = {"search_path": quote_identifier(schema)}
        # migrate() reads it from here to create the schema.
        options[_SCHEMA_OPTION] = schema
    return create_async_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
        execution_options=options,
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# Threads (and connections) of a SQLite file's one-hop transactions (Database.transaction).
SQLITE_TRANSACTION_THREADS = 4


_SCHEMA_OPTION = "cascade_schema"


def prepare_postgres(connection: Connection) -> None:
    """Serialise migrations across processes and create the engine's schema if missing.

    Runs at the start of a migration's transaction: the advisory lock is held until it
    ends, so of the worker and webhooks starting together one creates and migrates, the
    other waits and finds nothing left to do.
    """
    if connection.dialect.name != "postgresql":
        return
    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(424242)")
    schema = connection.get_execution_options().get(_SCHEMA_OPTION)
    if schema is None:
        return
    # Look before creating: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
    # database even when the schema exists, and a DBA may have made it for a role without.
    exists = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": schema}).first()
    if exists is None:
        try:
            connection.exec_driver_sql(f"CREATE SCHEMA {quote_identifier(schema)}")
        except DBAPIError as exc:
            raise SchemaError(
                f"database schema {schema!r} does not exist and could not be created ({exc.orig}): "
                "create it, or grant this user CREATE on the database"
            ) from None


MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


class SchemaError(RuntimeError):
    """The database cannot be migrated: tables the migrations did not make, or no schema."""


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    prepare_postgres(connection)
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
        # A SQLite file's transactions run whole in a thread (see `transaction`); made on first use.
        database = engine.url.database
        self._sqlite_file = self.is_sqlite and bool(database) and database != ":memory:"
        self._sync_engine: Engine | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, schema: str | None = None) -> Database:
        """A database for `url` (plain or async-driver form), optionally in a PostgreSQL schema."""
        return cls(create_engine(url, schema))

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database the settings name (DATABASE_URL, on PostgreSQL the schema and pool)."""
        return cls(
            create_engine(
                settings.database_url,
                settings.database_schema,
                pool_size=settings.pool_size,
                max_overflow=settings.database_max_overflow,
                pool_timeout=settings.database_pool_timeout_seconds,
            )
        )

    @property
    def is_sqlite(self) -> bool:
        """True when the backend is SQLite (no row locks; upserts differ)."""
        return self.engine.dialect.name == "sqlite"

    @property
    def transactions_in_thread(self) -> bool:
        """True when `transaction` runs its work whole in a thread (a SQLite file), where a
        transaction through the async session is a hop to the connection's thread per call."""
        return self._sqlite_file

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose reads all see one snapshot of the database, on both backends.

        For a reader whose statements must agree with each other (a count labelled with the
        refresh it counts, a report's rollup reach and its rows): a writer committing
        between two of them must not be seen by the second only. PostgreSQL: REPEATABLE
        READ. SQLite: Python's sqlite3 opens a transaction only before a write, so every
        SELECT would be a snapshot of its own; an explicit BEGIN makes them one read
        transaction (in WAL mode from the first SELECT on, without blocking the writer),
        closed by the connection's rollback at the end. Nothing is written through it.
        """
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.exec_driver_sql("BEGIN")
            else:
                await conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    async def transaction(self, work: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `work(session, *args, **kwargs)` in one transaction: committed if it returns, rolled back if it raises.

        `work` is synchronous SQLAlchemy code, for the hot paths (a journey's send, its run
        rows, its start). On a SQLite file the whole transaction runs in one call to a
        worker thread with its own pysqlite connection: through aiosqlite every statement,
        cursor, fetch and commit is a hop to the connection's thread and back to the event
        loop (measured: 0.8-0.95 ms of CPU for a one-statement transaction, 0.34-0.41 ms in
        one hop), and the write lock is held only while the thread runs, never across other
        tasks of the event loop. Elsewhere (PostgreSQL, an in-memory SQLite) it runs in the
        async session (`run_sync`): the same code, the same transaction. Hot inserts and
        updates that load no objects go through `session.connection().execute` (Core): the
        ORM's DML layer costs about 0.05 ms a statement and gives them nothing.
        """
        if not self._sqlite_file:
            async with self.session() as session:
                return await session.run_sync(in_sqlmodel_session(work), *args, **kwargs)
        engine, threads = self._sync_parts()

        def run() -> T:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return work(session, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(threads, run)

    def sync_engines(self) -> list[Engine]:
        """Every engine this database's statements run on, for event listeners (statement counts).

        The async engine's, and on a SQLite file also the one `transaction` runs on.
        """
        if self._sqlite_file:
            return [self.engine.sync_engine, self._sync_parts()[0]]
        return [self.engine.sync_engine]

    def _sync_parts(self) -> tuple[Engine, ThreadPoolExecutor]:
        with self._lock:
            if self._sync_engine is None or self._threads is None:
                # As many connections as threads: a thread never waits for the pool. The
                # same busy timeout and pragmas as the async engine's connections.
                engine = create_sync_engine(
                    self.engine.url.set(drivername="sqlite"),
                    connect_args={"timeout": 30},
                    pool_size=SQLITE_TRANSACTION_THREADS,
                    max_overflow=0,
                )
                event.listen(engine, "connect", _sqlite_pragmas)
                self._sync_engine = engine
                self._threads = ThreadPoolExecutor(SQLITE_TRANSACTION_THREADS, thread_name_prefix="sqlite")
            return self._sync_engine, self._threads

    async def dispose(self) -> None:
        """Close every pooled connection (and the threads of `transaction`)."""
        await self.engine.dispose()
        with self._lock:
            engine, threads, self._sync_engine, self._threads = self._sync_engine, self._threads, None, None
        if threads is not None:
            threads.shutdown(wait=True)
        if engine is not None:
            engine.dispose()


def run_with_database(work: Callable[[Database], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `work` on the configured database (migrated first) from synchronous code: a CLI."""

    async def main() -> T:
        db = Database.from_settings(settings or get_settings())
        try:
            await migrate(db.engine)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def in_sqlmodel_session(work: Callable[Concatenate[Session, P], T]) -> Callable[Concatenate[Any, P], T]:
    """`work` as AsyncSession.run_sync's argument (typing only).

    run_sync hands over its sync session, a sqlmodel Session here (sqlmodel's AsyncSession
    makes one), though SQLAlchemy's signature names its own base class.
    """
    return work


def insert_ignoring_conflicts(db: Database, table: type[SQLModel]) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the database's dialect.

    Two workers racing to write the same row (same idempotency key) both succeed and
    exactly one row exists afterwards; the loser reads the winner's row.
    """
    if db.is_sqlite:
        return sqlite_insert(table)
    return pg_insert(table)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp with its zone: SQLite hands them back without one, and every one we
    write is UTC (PostgreSQL's come back aware and pass through)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
