"""Broadcast throughput against a raw start loop (segment counts: bench/segments.py).

    python bench/broadcast.py starts [-n 100000] [--concurrency 50] [--page-size 500] [--raw N]
                                     [--chart PATH] [--min-available-gib 6]

`starts`: a BroadcastWorkflow to a segment of n customers on PostgreSQL and the real dev
server, against a raw loop of `client.start_workflow` with the same concurrency, the
same payload and the same start options (search attributes, memo), in the same run (half
of the raw loop before the broadcast, half after, after an uncounted warm-up of the dev
server). Both start CascadeJourney workflows on a task queue no worker polls, so both
sides measure starting (the broadcast's snapshot, paging and bookkeeping included), not
running the cascades. Also the time
spent inside the page activities (and in their bookkeeping write) against outside them
(snapshot, workflow tasks between pages), and the process's peak RSS (it hosts the
broadcast worker) during the broadcast, the dev server's peak RSS over the whole run, and
the starts completed in each second on both sides (`--chart` draws them).

The dev server keeps its state in a SQLite file in a temporary directory (deleted at the
end), not in memory: in memory, a 100,000 run's ~200,000 workflows grew it to 22 GB RSS
and the machine ran out. A sampler reads the dev server's RSS and the machine's
MemAvailable every second and stops the run (exit status 3) if MemAvailable falls below
`--min-available-gib`.

It uses its own PostgreSQL schema at CASCADE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) and drops it at the end. Results go to stdout
as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import yaml
from sqlalchemy import text
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.audiences import AudienceActivities
from cascade.audiences.broadcasts import start_broadcast
from cascade.audiences.service import load_segments
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from models import search_attributes as sa
from models.broadcasts import BroadcastProgress
from models.journey import JourneyInput, JourneySpec
from models.search_attributes import REGISTERED
from tests.conftest import asyncpg_dsn, binary, quiet_runtime
from workflows.broadcast import BroadcastWorkflow

POSTGRES_URL = os.environ.get("CASCADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPEC = JourneySpec.model_validate(
    {"name": "bench", "steps": [{"channel": "email", "content": {"subject": "News", "body": "Hello {{ name }}"}}]}
)
SEGMENTS = {"everyone": [{"field": "purchase_count", "op": "gte", "value": 0}]}


# Transient failures retried (reported with the figures): raw loop starts, result polls.
RETRIES = [0, 0]
_RAW_TRIES = 5


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(pid: int, field: str) -> int:
    """A `kB` field (VmRSS, VmHWM) of /proc/<pid>/status; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("inf")


def _dev_server_pid() -> int:
    """The `temporal server start-dev` this process started (its child)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The command name may hold spaces: the fields after the last ")" are fixed.
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"start-dev" in cmdline:
            return int(entry.name)
    raise RuntimeError("dev server process not found among this process's children")


class _Sampler:
    """Once a second: the dev server's RSS (peak kept), the machine's MemAvailable (lowest kept).

    Stops the whole run when available memory falls below the floor: the bench shares the
    machine, and an exhausted machine takes PostgreSQL's page cache and other work with it.
    """

    def __init__(self, server_pid: int, floor_gib: float) -> None:
        self.server_pid = server_pid
        self.floor_gib = floor_gib
        self.server_peak_kib = 0
        self.lowest_available_gib = float("inf")
        self.samples: list[tuple[float, float, float]] = []  # (t, server MiB, available GiB)

    async def run(self, began: float) -> None:
        while True:
            rss = _status_kib(self.server_pid, "VmRSS")
            self.server_peak_kib = max(self.server_peak_kib, rss, _status_kib(self.server_pid, "VmHWM"))
            available = _available_gib()
            self.lowest_available_gib = min(self.lowest_available_gib, available)
            self.samples.append((time.perf_counter() - began, rss / 1024, available))
            if available < self.floor_gib:
                print(
                    f"MemAvailable {available:.1f} GiB < {self.floor_gib} GiB: stopping the run",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(3)
            await asyncio.sleep(1)


def _segment_folder(tag: str) -> Path:
    folder = Path(f"/tmp/bench-{tag}-{uuid.uuid4().hex[:6]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, where in SEGMENTS.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "where": where}))
    return folder


async def _schema(tag: str) -> tuple[Database, Settings, str]:
    schema = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    folder = _segment_folder(tag)
    settings = Settings(database_url=POSTGRES_URL, database_schema=schema, segments_dir=folder)
    db = Database.from_settings(settings)
    await migrate(db.engine)
    return db, settings, schema


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def _load_customers(db: Database, n: int) -> float:
    began = time.perf_counter()
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO customers (id, name, timezone, children_ages, favourite_categories, purchase_count,"
                " loyalty_points, attributes, created_at, last_purchase_at)"
                " SELECT 'c' || lpad(g::text, 8, '0'), 'Ann', 'UTC', '[]', '[]', g % 7, 0, '{}',"
                " now() - (g % 1000) * interval '1 day',"
                " CASE WHEN g % 7 = 0 THEN NULL ELSE now() - (g % 800) * interval '1 day' END"
                " FROM generate_series(1, CAST(:n AS integer)) AS g"
            ),
            {"n": n},
        )
        await conn.execute(text("ANALYZE customers"))
    return time.perf_counter() - began


class _PageClock:
    """Wall time of each page's activity and of its bookkeeping write, to see where time goes,
    and when each recipient's start returned (for the starts-per-second timeline)."""

    def __init__(self, starter: Any) -> None:
        self.pages: list[float] = []
        self.marks: list[float] = []
        self.started_at: list[float] = []
        page, mark, one = starter.start_page, starter._mark, starter._start_one

        async def timed_one(*args: Any, **kwargs: Any) -> Any:
            outcome = await one(*args, **kwargs)
            if outcome[0] == "started":
                self.started_at.append(time.perf_counter())
            return outcome

        async def timed_page(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await page(*args, **kwargs)
            finally:
                self.pages.append(time.perf_counter() - began)

        async def timed_mark(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await mark(*args, **kwargs)
            finally:
                self.marks.append(time.perf_counter() - began)

        starter.start_page, starter._mark, starter._start_one = timed_page, timed_mark, timed_one


async def _raw_loop(
    client: Client, queue: str, ids: range, concurrency: int, run: str, done_at: list[float] | None = None
) -> float:
    """`client.start_workflow` for each id, `concurrency` at a time, with the options a broadcast sets.

    Each start's completion time (perf_counter) goes to `done_at` when given.
    """
    gate = asyncio.Semaphore(concurrency)
    spec = SPEC.model_copy(update={"campaign": run})
    memo = {"journey": spec.name, "broadcast": run, "spec_hash": spec.content_hash()}

    async def one(i: int) -> None:
        customer_id = f"c{i:08d}"
        attributes: list[SearchAttributePair[Any]] = [
            SearchAttributePair(sa.CUSTOMER_ID, customer_id),
            SearchAttributePair(sa.JOURNEY, spec.name),
            SearchAttributePair(sa.JOURNEY_STATUS, "running"),
            SearchAttributePair(sa.STEP, 0),
            SearchAttributePair(sa.CHANNEL, spec.steps[0].channel.value),
            SearchAttributePair(sa.CAMPAIGN, run),
        ]
        async with gate:
            for attempt in range(_RAW_TRIES):
                try:
                    await client.start_workflow(
                        "CascadeJourney",
                        JourneyInput(spec=spec, customer_id=customer_id),
                        id=f"raw/{run}/{i}",
                        task_queue=queue,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        search_attributes=TypedSearchAttributes(attributes),
                        memo=memo,
                    )
                    if done_at is not None:
                        done_at.append(time.perf_counter())
                    return
                except WorkflowAlreadyStartedError:
                    if done_at is not None:
                        done_at.append(time.perf_counter())
                    return  # an earlier attempt got through before its answer was lost
                except RPCError:
                    # A dev server under heavy load sometimes fails a call (even "namespace
                    # not found" while its namespace cache refreshes); the broadcast's page
                    # activities retry such failures, so the raw loop does too, counted.
                    RETRIES[0] += 1
                    if attempt == _RAW_TRIES - 1:
                        raise
                    await asyncio.sleep(1)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    return time.perf_counter() - began


async def _outcome(handle: Any, tries: int = 60) -> BroadcastProgress:
    """The broadcast's result, asking again when a long poll fails on a loaded dev server.

    A 100,000 run lost its figures to one "context deadline exceeded" on the history long
    poll while the broadcast itself was fine: waiting is not what is measured, so retry.
    """
    for attempt in range(tries):
        try:
            return BroadcastProgress.model_validate(await handle.result())
        except RPCError:
            RETRIES[1] += 1
            if attempt == tries - 1:
                raise
            await asyncio.sleep(2)
    raise AssertionError("unreachable")


def _per_second(times: list[float], began: float) -> list[tuple[int, int]]:
    """(second since `began`, starts completed in it) for every second from the first to the last."""
    if not times:
        return []
    counts = Counter(int(t - began) for t in times)
    return [(second, counts.get(second, 0)) for second in range(min(counts), max(counts) + 1)]


def draw_chart(result: dict[str, Any], path: Path) -> None:
    """Starts per second over the run (10 s means), raw loop and broadcast on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smoothed(series: list[list[int]], window: int = 10) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i in range(0, len(series), window):
            chunk = series[i : i + window]
            xs.append(chunk[0][0] / 60)
            ys.append(sum(n for _, n in chunk) / len(chunk))
        return xs, ys

    fig, ax = plt.subplots(figsize=(9, 4.2))
    timeline = result["timeline"]
    for label, key, colour in (
        ("raw start loop (first half before, second half after)", "raw_first", "tab:gray"),
        ("broadcast (BroadcastWorkflow pages)", "broadcast", "tab:blue"),
        ("raw start loop, second half", "raw_second", "tab:gray"),
    ):
        xs, ys = smoothed(timeline[key])
        ax.plot(xs, ys, color=colour, label=label if key != "raw_second" else None, linewidth=1.4)
    ax.axhline(result["raw_per_s"], color="tab:gray", linestyle="--", linewidth=0.8, label="raw mean")
    ax.axhline(result["broadcast_per_s"], color="tab:blue", linestyle="--", linewidth=0.8, label="broadcast mean")
    ax.set_xlabel("minutes since the first raw start")
    ax.set_ylabel("journeys started per second (10 s means)")
    ax.set_title(
        f"{result['recipients']:,} recipients, concurrency {result['concurrency']}: ratio {result['ratio']}"
        f" (load average {result['loadavg_start']}-{result['loadavg_end']})",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dir_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


async def starts(
    n: int, concurrency: int, page_size: int, raw: int | None = None, min_available_gib: float = 6.0
) -> dict[str, Any]:
    """Broadcast to n customers vs a raw start loop with the same concurrency, same run.

    The raw loop starts `raw` journeys (default n), half before the broadcast and half
    after, so a change of the machine's load during the run weighs on both sides alike;
    a smaller `raw` sample shortens a 100,000 run (rates are compared, not totals).
    """
    raw = n if raw is None else raw
    db, settings, schema = await _schema("starts")
    state = Path(tempfile.mkdtemp(prefix="bench-broadcast-devserver-"))
    loadavg_start = _loadavg()
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        search_attributes=REGISTERED,
        runtime=quiet_runtime(),
        # On disk: the dev server's in-memory store is never trimmed (22 GB at 100,000).
        # WAL without fsync: the file is thrown away after the run, and with SQLite's
        # default rollback journal every start waited for fsyncs (5-6 s per call at
        # concurrency 50, 8 starts/s).
        dev_server_database_filename=str(state / "temporal.db"),
        dev_server_extra_args=[
            *("--dynamic-config-value", "frontend.rps=100000"),
            *("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=off"),
        ],
    )
    sampler = _Sampler(_dev_server_pid(), min_available_gib)
    run_began = time.perf_counter()
    sampling = asyncio.create_task(sampler.run(run_began))
    try:
        await _load_customers(db, n)
        client: Client = env.client
        idle = f"bench-idle-{uuid.uuid4().hex[:6]}"
        settings = settings.model_copy(update={"task_queue": idle, "broadcast_start_concurrency": concurrency})
        queue = f"bench-broadcast-{uuid.uuid4().hex[:6]}"
        acts = AudienceActivities(db, client, settings)
        clock = _PageClock(acts.starter)
        run = uuid.uuid4().hex[:6]
        # The dev server's first starts are slower (its caches are cold): warm it up uncounted.
        await _raw_loop(client, idle, range(n + 1, n + 1 + min(500, n // 5)), concurrency, run)
        half = raw // 2
        first_at: list[float] = []
        origin = time.perf_counter()
        raw_first_s = await _raw_loop(client, idle, range(1, half + 1), concurrency, run, first_at)
        # Said now, so a run cut short still has its same-run baseline.
        print(f"raw first half: {half / raw_first_s:.1f}/s ({half} in {raw_first_s:.1f} s)", file=sys.stderr)
        rss_before = _rss_mib()
        async with Worker(
            client,
            task_queue=queue,
            workflows=[BroadcastWorkflow],
            activities=[acts.snapshot_audience, acts.start_recipients, acts.cancel_unsent_journeys],
        ):
            began = time.perf_counter()
            handle = await start_broadcast(
                client,
                load_segments(settings),
                queue,
                broadcast_id=f"bench-{uuid.uuid4().hex[:8]}",
                segment="everyone",
                journey=SPEC,
                rate_per_second=1_000_000,
                page_size=page_size,
                pages_per_run=50,
            )
            print(f"broadcast started at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
            result = await _outcome(handle)
            broadcast_s = time.perf_counter() - began
        rss_peak = _rss_mib()
        print(f"broadcast: {n / broadcast_s:.1f}/s ({n} in {broadcast_s:.1f} s)", file=sys.stderr, flush=True)
        assert result.started == n, result
        second_at: list[float] = []
        raw_second_s = await _raw_loop(client, idle, range(half + 1, raw + 1), concurrency, run, second_at)
        raw_s = raw_first_s + raw_second_s
        in_pages = sum(clock.pages)
        total_s = time.perf_counter() - run_began
        return {
            "recipients": n,
            "concurrency": concurrency,
            "page_size": page_size,
            "broadcast_s": round(broadcast_s, 1),
            "broadcast_per_s": round(n / broadcast_s, 1),
            "raw_loop_s": round(raw_s, 1),
            "raw_starts": raw,
            "raw_per_s": round(raw / raw_s, 1),
            "raw_first_half_per_s": round(half / raw_first_s, 1),
            "raw_second_half_per_s": round((raw - half) / raw_second_s, 1),
            "raw_retried": RETRIES[0],
            "result_polls_retried": RETRIES[1],
            "ratio": round((n / broadcast_s) / (raw / raw_s), 3),
            "pages": len(clock.pages),
            "in_page_activities_s": round(in_pages, 1),
            "of_which_marking_s": round(sum(clock.marks), 2),
            "outside_pages_s": round(broadcast_s - in_pages, 1),
            "continue_as_new_runs": result.runs,
            "rss_before_mib": round(rss_before, 1),
            "peak_rss_mib": round(rss_peak, 1),
            "dev_server_peak_rss_mib": round(sampler.server_peak_kib / 1024, 1),
            "dev_server_db_mib": round(_dir_mib(state), 1),
            "lowest_available_gib": round(sampler.lowest_available_gib, 1),
            "total_s": round(total_s, 1),
            "loadavg_start": loadavg_start,
            "loadavg_end": _loadavg(),
            "timeline": {
                "raw_first": _per_second(first_at, origin),
                "broadcast": _per_second(clock.started_at, origin),
                "raw_second": _per_second(second_at, origin),
            },
            "server_rss_mib_every_30s": [round(m) for _, m, _ in sampler.samples[::30]],
        }
    finally:
        sampling.cancel()
        await env.shutdown()
        await db.dispose()
        await _drop(schema)
        shutil.rmtree(state, ignore_errors=True)
        # The segment folder _schema made for this run (never the project's segments/).
        if settings.segments_dir.name.startswith("bench-starts-"):
            shutil.rmtree(settings.segments_dir, ignore_errors=True)


def main() -> None:
    """Parse the arguments and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("starts")
    s.add_argument("-n", type=int, default=100_000)
    s.add_argument("--concurrency", type=int, default=50)
    s.add_argument("--page-size", type=int, default=500)
    s.add_argument("--raw", type=int, help="raw loop starts (default n), half before and half after")
    s.add_argument("--chart", type=Path, help="draw starts per second over the run to this PNG")
    s.add_argument("--json", type=Path, help="also write the JSON (with the timeline) to this file")
    s.add_argument("--redraw", type=Path, help="draw --chart from this --json file of an earlier run, run nothing")
    s.add_argument(
        "--min-available-gib", type=float, default=6.0, help="stop the run when MemAvailable falls below this"
    )
    args = parser.parse_args()
    if args.redraw:
        draw_chart(json.loads(args.redraw.read_text()), args.chart or args.redraw.with_suffix(".png"))
        return
    result = asyncio.run(starts(args.n, args.concurrency, args.page_size, args.raw, args.min_available_gib))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result))
    if args.chart:
        draw_chart(result, args.chart)
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1))


if __name__ == "__main__":
    main()
