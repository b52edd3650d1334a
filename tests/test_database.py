"""DATABASE_URL in every form people paste, CASCADE_DATABASE_SCHEMA, the pool, and the
PostgreSQL requirement of the test run itself.

The PostgreSQL tests run on the real server at 127.0.0.1:5432/test, each in a schema that
does not exist beforehand (migrate() creates it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from cascade.infra.db import Database, SchemaError, async_url, migrate, postgres_connect_args
from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.profiles.service import upsert_customer
from models.profiles import ContactIn, CustomerProfile
from models.tables import ChannelHealth, Customer
from tests.conftest import POSTGRES_URL, asyncpg_dsn, postgres_execute
from worker import build_worker

# --- URL forms (no server needed) ------------------------------------------------------


@pytest.mark.parametrize(
    ("pasted", "used"),
    [
        ("postgresql://u:p@db:5432/shop", "postgresql+asyncpg://u:p@db:5432/shop"),
        ("postgres://u:p@db/shop", "postgresql+asyncpg://u:p@db/shop"),
        ("postgresql+psycopg://u:p@db/shop", "postgresql+asyncpg://u:p@db/shop"),
        ("postgresql+psycopg2://u:p@db/shop", "postgresql+asyncpg://u:p@db/shop"),
        ("postgresql+pg8000://u:p@db/shop", "postgresql+asyncpg://u:p@db/shop"),
        ("postgresql+asyncpg://u:p@db/shop", "postgresql+asyncpg://u:p@db/shop"),
        ("sqlite:///data/x.db", "sqlite+aiosqlite:///data/x.db"),
        ("sqlite+pysqlite:///data/x.db", "sqlite+aiosqlite:///data/x.db"),
    ],
)
def test_every_url_form_maps_to_the_installed_driver(pasted, used):
    assert async_url(pasted) == used


def test_libpq_parameters_reach_asyncpg_in_a_dsn():
    url = make_url(
        "postgresql+asyncpg://u@db/shop?sslmode=require&connect_timeout=7&application_name=x"
        "&command_timeout=5&prepared_statement_cache_size=0"
    )
    kept, args = postgres_connect_args(url)
    assert dict(kept.query) == {"prepared_statement_cache_size": "0"}
    assert args == {"timeout": 7.0, "command_timeout": 5.0, "dsn": "postgresql://?sslmode=require&application_name=x"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unsupported database 'mysql'"),
        ("not a url at all", "DATABASE_URL is not a database URL"),
        ("postgresql://u@db/shop?connect_timeout=soon", "connect_timeout='soon' must be a number"),
    ],
)
def test_bad_urls_are_refused_naming_the_problem(url, message):
    with pytest.raises(ValueError, match=message):
        Database.from_url(url)


def test_a_refused_url_does_not_echo_its_password():
    with pytest.raises(ValueError) as caught:
        Database.from_url("oracle://scott:tiger-secret@db/x")
    assert "tiger-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pg_cascade", "reserved"),
        ("x" * 64, "longer than 63 bytes"),
        ("a\x00b", "NUL"),
        ("   ", "blank"),
    ],
)
def test_schema_names_postgresql_would_refuse_or_truncate_are_refused(name, message):
    with pytest.raises(ValidationError, match=message):
        Settings(database_schema=name)


def test_an_empty_schema_variable_means_no_schema(monkeypatch):
    monkeypatch.setenv("CASCADE_DATABASE_SCHEMA", "")
    assert Settings().database_schema is None


# --- real PostgreSQL, a fresh schema per test ---------------------------------------------


def _forms(base: str) -> dict[str, str]:
    plain = make_url(async_url(base))
    forms = {
        name: plain.set(drivername=driver).render_as_string(hide_password=False)
        for name, driver in [
            ("postgresql", "postgresql"),
            ("postgres", "postgres"),
            ("psycopg", "postgresql+psycopg"),
            ("psycopg2", "postgresql+psycopg2"),
            ("asyncpg", "postgresql+asyncpg"),
        ]
    }
    forms["psycopg-with-libpq-params"] = (
        plain.set(drivername="postgresql+psycopg")
        .update_query_dict({"sslmode": "disable", "connect_timeout": "5", "application_name": "cascade-url-test"})
        .render_as_string(hide_password=False)
    )
    return forms


@pytest.fixture
async def fresh_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema name that does not exist yet (dropped afterwards if a test made it)."""
    name = f"Url Test {uuid.uuid4().hex[:10]}"
    yield name
    await postgres_execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def _tables_in(schema: str) -> set[str]:
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        rows = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    finally:
        await conn.close()
    return {r["table_name"] for r in rows}


@pytest.mark.postgres
@pytest.mark.parametrize("form", list(_forms(POSTGRES_URL)))
async def test_each_url_form_migrates_and_writes_into_a_new_schema(
    form, postgres_url, fresh_schema, monkeypatch: pytest.MonkeyPatch
):
    """As an operator sets it: DATABASE_URL in one of the pasted forms plus
    CASCADE_DATABASE_SCHEMA naming a schema that does not exist (mixed case, a space)."""
    monkeypatch.setenv("DATABASE_URL", _forms(postgres_url)[form])
    monkeypatch.setenv("CASCADE_DATABASE_SCHEMA", fresh_schema)
    db = Database.from_settings(Settings())
    try:
        await migrate(db.engine)
        await upsert_customer(
            db, CustomerProfile(id="c-1", name="Ann", contacts=[ContactIn(channel="email", address="a@example.com")])
        )
        async with db.session() as session:
            assert (await session.get(Customer, "c-1")) is not None
            if form == "psycopg-with-libpq-params":
                name = (await session.exec(text("SHOW application_name"))).scalar()  # type: ignore[call-overload]
                assert name == "cascade-url-test"
    finally:
        await db.dispose()
    assert {"customers", "contact_points", "alembic_version"} <= await _tables_in(fresh_schema)


@pytest.mark.postgres
async def test_a_schema_name_needing_quotes_is_created_exactly(postgres_url):
    name = f'Shop "A"; DROP SCHEMA public; -- {uuid.uuid4().hex[:6]}'
    db = Database.from_url(postgres_url, schema=name)
    try:
        await migrate(db.engine)
        await migrate(db.engine)  # a second start finds the schema and nothing to do
        assert "customers" in await _tables_in(name)
        assert "customers" not in await _tables_in(name.lower())
    finally:
        await db.dispose()
        await postgres_execute(f'DROP SCHEMA IF EXISTS "{name.replace(chr(34), chr(34) * 2)}" CASCADE')
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:  # the name was an identifier, not SQL
        assert await conn.fetchval("SELECT to_regnamespace('public')") is not None
    finally:
        await conn.close()


@pytest.fixture
async def role_without_create(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a login role without CREATE on the database (PostgreSQL's default for a
    new role)."""
    role = f"cascade_ro_{uuid.uuid4().hex[:8]}"
    await postgres_execute(f'CREATE ROLE "{role}" LOGIN')
    url = make_url(async_url(postgres_url)).set(username=role).render_as_string(hide_password=False)
    yield url
    await postgres_execute(f'DROP OWNED BY "{role}" CASCADE; DROP ROLE "{role}"')


@pytest.mark.postgres
async def test_an_existing_schema_needs_no_create_privilege(role_without_create, fresh_schema):
    """A DBA made the schema for a role that may not create schemas: start-up must not try."""
    url = role_without_create
    role = make_url(url).username
    await postgres_execute(f'CREATE SCHEMA "{fresh_schema}" AUTHORIZATION "{role}"')
    db = Database.from_url(url, schema=fresh_schema)
    try:
        await migrate(db.engine)
    finally:
        await db.dispose()
    assert "customers" in await _tables_in(fresh_schema)


@pytest.mark.postgres
async def test_a_missing_schema_the_role_cannot_create_is_a_clear_error(role_without_create, fresh_schema):
    db = Database.from_url(role_without_create, schema=fresh_schema)
    try:
        with pytest.raises(SchemaError, match=r"does not exist and could not be created.*grant this user CREATE"):
            await migrate(db.engine)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_the_alembic_command_line_creates_the_schema_too(postgres_url, fresh_schema):
    env = {**os.environ, "DATABASE_URL": _forms(postgres_url)["psycopg"], "CASCADE_DATABASE_SCHEMA": fresh_schema}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", "upgrade", "head", cwd=PROJECT_ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert {"customers", "alembic_version"} <= await _tables_in(fresh_schema)


# --- the pool matched to the worker -----------------------------------------------------


def test_the_pool_keeps_one_connection_per_main_queue_slot():
    assert Settings().pool_size == Settings().worker_max_concurrent_activities
    assert Settings(worker_max_concurrent_activities=64).pool_size == 64
    assert Settings(worker_max_concurrent_activities=64, database_pool_size=12).pool_size == 12


async def test_a_sqlite_file_keeps_a_small_pool_whatever_the_worker_slots(tmp_path):
    # One writer: more connections only wait in SQLite's busy handler, in no order, and the
    # unlucky fail after its timeout. Sessions past the pool wait in the pool's queue.
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/c.db",
        worker_max_concurrent_activities=120,
        database_max_overflow=70,
        database_pool_timeout_seconds=4.5,
    )
    db = Database.from_settings(settings)
    try:
        pool = db.engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (5, 10, 4.5)  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    # An in-memory database stays one shared connection.
    memory = Database.from_settings(Settings(database_url="sqlite://"))
    assert type(memory.engine.sync_engine.pool).__name__ == "StaticPool"
    await memory.dispose()


@pytest.mark.postgres
async def test_the_engine_and_the_worker_use_the_settings(postgres_url, client):
    settings = Settings(
        database_url=postgres_url,
        worker_max_concurrent_activities=17,
        database_max_overflow=3,
        database_pool_timeout_seconds=4.5,
    )
    db = Database.from_settings(settings)
    try:
        pool = db.engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (17, 3, 4.5)  # type: ignore[attr-defined]
        main = build_worker(client, settings, db).workers[0]
        assert main.config()["max_concurrent_activities"] == 17
    finally:
        await db.dispose()


# --- CASCADE_REQUIRE_POSTGRES -------------------------------------------------------------

_ONE_POSTGRES_TEST = "tests/test_migrations.py::test_migrating_twice_changes_nothing[postgresql]"


def _pytest(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", _ONE_POSTGRES_TEST],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_postgres_the_run_says_so_loudly_and_fails_when_required():
    nowhere = {"CASCADE_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/test"}
    relaxed = _pytest({**nowhere, "CASCADE_REQUIRE_POSTGRES": "0"})
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 PostgreSQL tests did NOT run" in relaxed.stdout

    required = _pytest({**nowhere, "CASCADE_REQUIRE_POSTGRES": "1"})
    assert required.returncode == pytest.ExitCode.TESTS_FAILED, required.stdout
    assert "CASCADE_REQUIRE_POSTGRES is set but PostgreSQL not reachable" in required.stdout + required.stderr


def _ci_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The PostgreSQL probe block of .ci/run, run as CI runs it, reporting what it exported."""
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    block = script[script.index("# >>> postgres probe") : script.index("# <<< postgres probe")]
    clean = {k: v for k, v in os.environ.items() if k != "CASCADE_REQUIRE_POSTGRES"}
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{block}\necho "REQUIRE=${{CASCADE_REQUIRE_POSTGRES:-unset}}"'],
        cwd=PROJECT_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
def test_ci_requires_postgres_where_it_answers(postgres_url):
    found = _ci_probe({"CASCADE_TEST_POSTGRES_URL": postgres_url})
    assert found.returncode == 0 and "REQUIRE=1" in found.stdout, found.stderr


def test_ci_says_loudly_when_postgres_is_missing():
    missing = _ci_probe({"CASCADE_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/test"})
    assert missing.returncode == 0 and "REQUIRE=unset" in missing.stdout
    assert "PostgreSQL is NOT reachable" in missing.stderr and "SKIPPED" in missing.stderr


async def test_timestamps_read_back_aware_in_utc_on_every_database(any_db: Database) -> None:
    # SQLite drops the zone; the UTCDateTime column type puts UTC back, so readers can
    # compare a stored time with now without coercing it themselves.
    written = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    async with any_db.session() as session:
        session.add(
            Customer(id="tz-1", children_ages=[], favourite_categories=[], attributes={}, last_purchase_at=written)
        )
    async with any_db.session() as session:
        row = (await session.exec(select(Customer.last_purchase_at).where(Customer.id == "tz-1"))).one()
    assert row == written and row.tzinfo is not None and row.utcoffset() == timedelta(0)


def _add_health(session: Session, channel: str, fail: bool) -> str:
    session.add(ChannelHealth(channel=channel, last_error="x", last_error_at=datetime.now(UTC)))
    session.flush()
    if fail:
        raise RuntimeError("after the write")
    return threading.current_thread().name


async def test_a_transaction_commits_what_returns_and_rolls_back_what_raises(any_db):
    """Database.transaction: one transaction either way, on a SQLite file in its own thread."""
    ran_in = await any_db.transaction(_add_health, "kept", False)
    with pytest.raises(RuntimeError, match="after the write"):
        await any_db.transaction(_add_health, "dropped", True)
    async with any_db.session() as session:
        rows = (await session.exec(select(ChannelHealth.channel))).all()
    assert sorted(rows) == ["kept"]
    # A SQLite file: the whole transaction ran in the pool's thread, not the event loop's.
    on_sqlite_file = any_db.is_sqlite
    assert ran_in.startswith("sqlite") == on_sqlite_file
    # Its statements are counted on an engine `sync_engines` lists.
    assert len(any_db.sync_engines()) == (2 if on_sqlite_file else 1)


async def test_an_in_memory_database_runs_transactions_in_its_one_connection():
    """No second engine for `sqlite://`: a pysqlite connection would see another, empty database."""
    memory = Database.from_url("sqlite://")
    await migrate(memory.engine)
    try:
        ran_in = await memory.transaction(_add_health, "kept", False)
        assert not ran_in.startswith("sqlite")
        async with memory.session() as session:
            assert (await session.exec(select(ChannelHealth.channel))).all() == ["kept"]
        assert memory.sync_engines() == [memory.engine.sync_engine]
    finally:
        await memory.dispose()
