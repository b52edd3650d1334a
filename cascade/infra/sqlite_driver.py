"""SQLite through aiosqlite with one hop to its thread per statement instead of four.

aiosqlite runs every call on the connection's own thread: SQLAlchemy's adapter makes a
cursor (one hop), executes (one), fetches the rows (one) and closes the cursor (one).
Each hop queues a function for the thread, wakes it, and waits for it to hand the GIL
and the result back; in a busy process (the webhooks service at a few hundred events a
second, the worker) the waiting for the GIL costs more than SQLite's own work, and a
profile of the service put a fifth of its event loop's time at that queueing.

`FusedConnection` is an aiosqlite connection whose cursor does all of a statement's
work in one hop: execute, the first `PREFETCH` rows, and the close when that was all.
What SQLAlchemy sees is unchanged (an aiosqlite connection and cursor: the same
attributes, the same exceptions); a larger result is fetched in further hops as before,
so a streamed query (`yield_per`) still holds only a chunk at a time.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite

# Rows fetched with the statement itself: nearly every query of the engine returns fewer.
PREFETCH = 1000

_T = TypeVar("_T")

_Outcome = tuple[sqlite3.Cursor | None, Any, list[Any], int, int | None]


def _run(conn: sqlite3.Connection, sql: str, parameters: Any, many: bool, prefetch: int) -> _Outcome:
    """On the connection's thread: one statement, its first rows, and the cursor closed
    if they were all (else kept open for the rest)."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchmany(prefetch) if description else []
    except BaseException:
        cursor.close()
        raise
    outcome = (cursor, description, rows, cursor.rowcount, cursor.lastrowid)
    if len(rows) < prefetch:
        cursor.close()
        return (None, *outcome[1:])
    return outcome


def _more(cursor: sqlite3.Cursor, size: int | None) -> list[Any]:
    """On the connection's thread: the next rows (all when `size` is None), the cursor
    closed once none are left."""
    rows = cursor.fetchall() if size is None else cursor.fetchmany(size)
    if size is None or len(rows) < size:
        cursor.close()
    return rows


class FusedCursor:
    """The aiosqlite cursor's interface, one hop per statement (see the module)."""

    def __init__(self, conn: FusedConnection) -> None:
        self._conn = conn
        self._open: sqlite3.Cursor | None = None  # the sqlite3 cursor while rows remain
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def __aenter__(self) -> FusedCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _statement(self, sql: str, parameters: Any, many: bool) -> FusedCursor:
        await self.close()
        outcome = await self._conn.hop(_run, self._conn._conn, sql, parameters, many, PREFETCH)
        self._open, self.description, rows, self.rowcount, self.lastrowid = outcome
        self._rows = deque(rows)
        return self

    async def execute(self, sql: str, parameters: Any = None) -> FusedCursor:
        """Run one statement and fetch its first rows, in one hop."""
        return await self._statement(sql, parameters, False)

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> FusedCursor:
        """Run one statement for each parameter set, in one hop."""
        return await self._statement(sql, parameters, True)

    async def _refill(self, wanted: int | None) -> None:
        """Fetch from the thread until `wanted` rows are buffered (None: all of them)."""
        if self._open is None or (wanted is not None and len(self._rows) >= wanted):
            return
        size = None if wanted is None else max(wanted - len(self._rows), PREFETCH)
        rows = await self._conn.hop(_more, self._open, size)
        if size is None or len(rows) < size:
            self._open = None
        self._rows.extend(rows)

    async def fetchone(self) -> Any:
        """The next row, or None."""
        await self._refill(1)
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to `size` rows (the cursor's arraysize by default)."""
        size = size or self.arraysize
        await self._refill(size)
        return [self._rows.popleft() for _ in range(min(size, len(self._rows)))]

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        await self._refill(None)
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __aiter__(self) -> FusedCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        """Drop the rows; close the sqlite3 cursor if rows were left unread."""
        self._rows.clear()
        if self._open is not None:
            cursor, self._open = self._open, None
            await self._conn.hop(cursor.close)


class _CursorResult:
    """What `connection.cursor()` returns: awaitable and an async context, as aiosqlite's."""

    def __init__(self, cursor: FusedCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Any:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> FusedCursor:
        return self._cursor

    async def __aexit__(self, *_: object) -> None:
        await self._cursor.close()


class FusedConnection(aiosqlite.Connection):
    """aiosqlite's connection with `FusedCursor` cursors (no hop to make one)."""

    def cursor(self) -> Any:
        """A cursor, without a hop to the thread (the sqlite3 cursor is made per statement)."""
        return _CursorResult(FusedCursor(self))

    async def hop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` on the connection's thread (aiosqlite's `_execute`, typed)."""
        return cast(_T, await self._execute(fn, *args))  # type: ignore[no-untyped-call]


def fused_connector(database: str, **kwargs: Any) -> Callable[[], FusedConnection]:
    """An `async_creator` for SQLAlchemy: a `FusedConnection` to `database`, opened with
    `sqlite3.connect(database, **kwargs)` on its thread (the thread a daemon, as
    SQLAlchemy makes aiosqlite's, so a process never hangs on a connection left open)."""

    def create() -> FusedConnection:
        connection = FusedConnection(lambda: sqlite3.connect(database, **kwargs), iter_chunk_size=64)
        connection._thread.daemon = True
        return connection

    return create
