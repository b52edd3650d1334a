"""The SQLite driver (cascade/infra/sqlite_driver.py): one hop to aiosqlite's thread per
statement, and everything SQLAlchemy reads from a cursor still right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.infra.db import create_engine
from cascade.infra.sqlite_driver import PREFETCH, FusedConnection


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER UNIQUE)"))
    yield engine
    await engine.dispose()


async def _fill(engine: AsyncEngine, n: int) -> None:
    if not n:
        return
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (a) VALUES (:a)"), [{"a": i} for i in range(n)])


async def test_the_engine_uses_the_fused_connection_with_the_pragmas(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, FusedConnection)
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 1  # NORMAL
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000


async def test_a_statement_is_one_hop(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    await _fill(engine, 10)
    hops: list[str] = []
    original = FusedConnection.hop

    async def counted(self: FusedConnection, fn: Any, *args: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args)

    monkeypatch.setattr(FusedConnection, "hop", counted)
    async with engine.connect() as conn:
        hops.clear()
        rows = (await conn.execute(text("SELECT a FROM t ORDER BY a"))).all()
        assert [r.a for r in rows] == list(range(10))
        assert hops == ["_run"]  # aiosqlite's own cursor took four: cursor, execute, fetchall, close
        hops.clear()
        updated = await conn.execute(text("UPDATE t SET a = a + 100 WHERE a < 3"))
        assert updated.rowcount == 3
        assert hops == ["_run"]


@pytest.mark.parametrize("n", [0, 1, PREFETCH - 1, PREFETCH, PREFETCH + 1, 2 * PREFETCH + 7])
async def test_every_row_comes_back_around_the_prefetch(engine: AsyncEngine, n: int) -> None:
    await _fill(engine, n)
    async with engine.connect() as conn:
        assert [r.a for r in await conn.execute(text("SELECT a FROM t ORDER BY a"))] == list(range(n))
        result = await conn.execute(text("SELECT a FROM t ORDER BY a"))
        first = [r.a for r in result.fetchmany(3)]
        assert first + [r.a for r in result.fetchall()] == list(range(n))
        # Streamed (a server-side cursor): read in chunks through the thread.
        seen: list[int] = []
        stream = await conn.stream(text("SELECT a FROM t ORDER BY a"))
        async for chunk in stream.partitions(300):
            seen += [r.a for r in chunk]
        assert seen == list(range(n))


async def test_a_stream_left_unread_is_closed(engine: AsyncEngine) -> None:
    await _fill(engine, 3 * PREFETCH)
    async with engine.connect() as conn:
        stream = await conn.stream(text("SELECT a FROM t ORDER BY a"))
        first = await stream.fetchone()
        assert first is not None and first.a == 0
        await stream.close()
        # The connection is usable: the half-read cursor was closed, not left holding a read.
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 3 * PREFETCH


async def test_returning_lastrowid_and_executemany(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        returned = await conn.execute(text("INSERT INTO t (a) VALUES (1), (2), (3) RETURNING id, a"))
        assert sorted(r.a for r in returned) == [1, 2, 3]
        single = await conn.execute(text("INSERT INTO t (a) VALUES (10)"))
        assert single.lastrowid == 4
        many = await conn.execute(text("INSERT INTO t (a) VALUES (:a)"), [{"a": 20}, {"a": 21}])
        assert many.rowcount == 2
        gone = await conn.execute(text("DELETE FROM t WHERE a >= 20 RETURNING a"))
        assert sorted(r.a for r in gone) == [20, 21]


async def test_errors_are_sqlalchemys_and_the_transaction_rolls_back(engine: AsyncEngine) -> None:
    await _fill(engine, 1)
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (a) VALUES (5)"))
            await conn.execute(text("INSERT INTO t (a) VALUES (0)"))  # UNIQUE
    with pytest.raises(OperationalError):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM missing"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT a FROM t"))).scalars().all() == [0]


async def test_in_memory_database() -> None:
    engine = create_engine("sqlite://")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE m (a INTEGER)"))
            await conn.execute(text("INSERT INTO m VALUES (7)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT a FROM m"))).scalar() == 7
    finally:
        await engine.dispose()
