"""SQLite through the project's driver (cascade/infra/sqlite_driver.py, one hop to
aiosqlite's thread per statement) against stock aiosqlite (four hops), same pragmas.

Small transactions like the service's and the worker's (a look-up, an insert, a count,
the commit), four sessions at once, alternating the two drivers, `--rounds` times:

    .venv/bin/python bench/sqlite_driver.py -n 1500 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.infra.db import create_engine


def _stock(path: Path) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


async def _run(engine: AsyncEngine, n: int, sessions: int) -> tuple[float, float]:
    """Milliseconds of wall time and of this process's CPU per transaction."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, a INTEGER)"))

    async def one(i: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT a FROM t WHERE id = :i"), {"i": i})
            await conn.execute(text("INSERT INTO t (a) VALUES (:a)"), {"a": i})
            await conn.execute(text("SELECT count(*) FROM t WHERE id > :i"), {"i": i})

    todo = list(range(n))

    async def worker() -> None:
        while todo:
            await one(todo.pop())

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description="the project's SQLite driver vs stock aiosqlite")
    parser.add_argument("-n", type=int, default=1500, help="transactions per run")
    parser.add_argument("--sessions", type=int, default=4, help="sessions at once")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cascade-driver-") as tmp:
        for i in range(args.rounds):
            for name in ("stock", "fused"):
                path = Path(tmp) / f"{name}-{i}.db"
                engine = _stock(path) if name == "stock" else create_engine(f"sqlite:///{path}")
                wall, cpu = await _run(engine, args.n, args.sessions)
                await engine.dispose()
                load = os.getloadavg()[0]
                print(f"{name}: {wall:.2f} ms wall, {cpu:.2f} ms CPU per transaction (load {load:.1f})", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
