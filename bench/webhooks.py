"""Webhooks benchmark: POST /v1/events -> signals on the real dev server, against a bare
`handle.signal` loop measured in the same run.

Each customer has one running journey (a workflow that counts `engagement` signals,
recorded in journey_runs as start_journey does, converting on purchases). Throughput: N
purchase events through the HTTP API (uvicorn on 127.0.0.1, real API key, SQLite,
idempotency insert, profile update, journey look-up, outbox row; the relay's signal)
with C in flight, vs N bare `handle.signal` calls with C in flight, each timed until
every signal is visible in its workflow. Latency: M events one at a time, from the start of the request until the
workflow's query shows the signal, vs the same for a bare signal.

    .venv/bin/python bench/webhooks.py -n 400 -m 60

The two sides alternate in `--rounds` rounds (3; the order swapped every round) inside one
run, and the ratio reported is the median of the rounds'. The journeys' worker runs in a
process of its own (`bench/signal_sink_worker.py`; `--worker inline` for the old layout),
so each phase prints the CPU milliseconds per event of every process side by side: the
bench's clients, the worker, the dev server, the service and the service's threads (its
event loop, the Temporal client's Rust core, its database threads).

Batch: `--batch-events` page views and cart updates through POST /v1/events/batch
(`--batch-size` per request), on `--database-url` (PostgreSQL) or SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.signal_sink import SignalSink
from cascade.infra.codec import data_converter
from cascade.infra.db import Database, migrate
from cascade.infra.logging import configure_logging
from cascade.infra.settings import Settings
from models.events import EngagementInput, EngagementType
from models.tables import Customer, JourneyRun, utcnow
from tests.helpers import serve_app
from webhooks.app import create_app
from webhooks.keys import create_key

ROOT = Path(__file__).resolve().parent.parent

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries `import sniffio` on every request and, when it is not installed, each
    # failed import searches sys.path again: a tenth of the HTTP client's time. A None
    # entry makes that import fail at once (what anyio and httpcore expect without it).
    sys.modules["sniffio"] = None  # type: ignore[assignment]


async def _pool(n: int, concurrency: int, one: Any, rate: float | None = None) -> float:
    """Seconds to run `one(i)` for i < n, `concurrency` at once; with `rate`, call i starts
    no earlier than i / rate seconds after the first."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def _until_count(handle: WorkflowHandle[Any, Any], at_least: int) -> None:
    # Polling the query is the point: "visible in the workflow" means a query sees it.
    while await handle.query(SignalSink.received) < at_least:  # noqa: ASYNC110
        await asyncio.sleep(0.002)


def _phase(name: str) -> None:
    # On stderr, flushed: a profiler started from outside (py-spy) can wait for a phase.
    print(f"phase: {name}", file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description="POST /v1/events -> signals vs bare handle.signal")
    parser.add_argument("-n", type=int, default=400, help="events for the throughput run")
    parser.add_argument("-m", type=int, default=60, help="sequential events for the latency run")
    parser.add_argument("-c", type=int, default=16, help="requests in flight")
    parser.add_argument("--customers", type=int, default=16)
    parser.add_argument(
        "--batch-events", type=int, default=4000, help="events through POST /v1/events/batch (0: skip that part)"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--server",
        choices=["process", "inline"],
        default="process",
        help="process: the webhooks service in its own process (python -m webhooks.server), as it runs "
        "in production and as Temporal's server runs beside the bare side; inline: in the bench's own "
        "process, beside the HTTP client, the worker and the bare signals (statements counted, --profile)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="cProfile the /v1/events phase into this file, the batch phase into FILE.batch (the bench's "
        "process), and with --server process the service's whole life into FILE.service",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="HTTP client of the single-event phases: raw (a lean keep-alive client, see _RawHttp) or httpx",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds of bare signals and API events (order swapped each round); the ratio "
        "reported is the median of the rounds' ratios",
    )
    parser.add_argument(
        "--worker",
        choices=["process", "inline"],
        default="process",
        help="process: the journeys' worker in its own process (its CPU apart from the bench's clients); "
        "inline: in the bench's process, as before 2026-12-01's fourth round",
    )
    parser.add_argument("--out", default="webhooks.json", help="file name under bench/results/")
    parser.add_argument(
        "--database-url", default=None, help="e.g. postgresql://postgres@127.0.0.1:5432/test (default: SQLite)"
    )
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    tmp = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    settings = Settings(
        database_url=args.database_url or f"sqlite:///{tmp / 'cascade.db'}",
        database_schema=schema,
        task_queue="bench-webhooks",
        # As the webhooks service does in its own process (the bench hands the app a client).
        webhooks_gc_freeze=True,
    )
    db = Database.from_settings(settings)
    await migrate(db.engine)
    statements = _StatementCounter(db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    env = await WorkflowEnvironment.start_local(
        # Encrypted payloads, as production runs (cascade.infra.codec).
        data_converter=data_converter(settings),
        # The server's request counters by operation: the RPCs each phase costs it.
        dev_server_extra_args=["--metrics-port", str(metrics_port)],
        dev_server_existing_path=shutil.which("temporal") or str(Path(sys.executable).parent / "temporal"),
    )
    client: Client = env.client
    try:
        worker = (
            _worker_process(client, settings.task_queue)
            if args.worker == "process"
            else Worker(client, task_queue=settings.task_queue, workflows=[SignalSink])
        )
        async with worker:
            handles = []
            async with db.session() as session:
                for i in range(args.customers):
                    customer = f"bench-{i}"
                    handle = await client.start_workflow(
                        SignalSink.run, id=f"bench/{customer}/{uuid.uuid4().hex[:6]}", task_queue=settings.task_queue
                    )
                    handles.append(handle)
                    session.add(Customer(id=customer))
                    session.add(
                        JourneyRun(
                            workflow_id=handle.id,
                            run_id=handle.result_run_id or "",
                            journey="bench",
                            customer_id=customer,
                            # A purchase converts only journeys that name it.
                            convert_on=["purchase"],
                        )
                    )
            key, _ = await create_key(db, "bench")
            server = (
                _server_process(settings, client, f"{args.profile}.service" if args.profile else None)
                if args.server == "process"
                else serve_app(create_app(settings, client=client, db=db))
            )
            async with (
                server as url,
                httpx.AsyncClient(
                    base_url=url, headers={"X-API-Key": key}, limits=httpx.Limits(max_connections=args.c), timeout=30
                ) as http,
            ):
                counter = iter(range(10**9))
                raw = _RawHttp(url, {"X-API-Key": key})

                async def post(i: int) -> None:
                    body = {
                        "event_id": f"e-{next(counter)}",
                        "customer_id": f"bench-{i % args.customers}",
                        "type": "purchase",
                        "properties": {"amount": 10},
                    }
                    if args.client == "raw":
                        status, payload = await raw.request("POST", "/v1/events", body)
                        assert status == 202 and json.loads(payload)["signalled"], payload
                        return
                    reply = await http.post("/v1/events", json=body)
                    assert reply.status_code == 202 and reply.json()["signalled"], reply.text

                async def bare(i: int) -> None:
                    await handles[i % args.customers].signal(
                        SignalSink.engagement, EngagementInput(type=EngagementType.CONVERTED)
                    )

                async def taken() -> int:
                    counts = await asyncio.gather(*(h.query(SignalSink.received) for h in handles))
                    return sum(counts)

                cpu_ms: dict[str, dict[str, float]] = {}
                tasks_per_signal: dict[str, float] = {}
                rpcs_per_signal: dict[str, dict[str, float]] = {}

                async def timed(one: Any, name: str, rate: float | None = None) -> float:
                    # Until every signal is visible in its workflow: the API answers once the
                    # event is stored and its relay signals right after, so the answer alone
                    # would flatter it.
                    before = await taken()
                    tasks_before = await _workflow_tasks(handles)
                    rpcs_before = await _server_requests(metrics_port)
                    cpu_before = _cpu_by_role()
                    start = time.perf_counter()
                    await _pool(args.n, args.c, one, rate)
                    while await taken() < before + args.n:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                    elapsed = time.perf_counter() - start
                    cpu_ms[name] = _per_event_ms(cpu_before, _cpu_by_role(), args.n)
                    rpcs_after = await _server_requests(metrics_port)
                    # The server's requests per signal by operation, the bench's own queries
                    # (polling for the count) and the worker's polls included.
                    rpcs_per_signal[name] = {
                        op: round((count - rpcs_before.get(op, 0)) / args.n, 2)
                        for op, count in sorted(rpcs_after.items())
                        if count - rpcs_before.get(op, 0) >= args.n / 100
                    }
                    # Workflow tasks the server ran per signal: fewer signals per second
                    # means fewer signals per task, so more tasks (and server CPU) per signal.
                    tasks_per_signal[name] = round((await _workflow_tasks(handles) - tasks_before) / args.n, 2)
                    return elapsed

                await _pool(20, 4, post)  # warm-up: connections, caches
                await _pool(20, 4, bare)

                async def healthz(i: int) -> None:
                    if args.client == "raw":
                        assert (await raw.request("GET", "/healthz"))[0] == 200
                        return
                    assert (await http.get("/healthz")).status_code == 200

                # -n 0: only the batch part (e.g. on PostgreSQL, the single events on SQLite).
                rounds: list[dict[str, Any]] = []
                api_statements = 0
                api_kinds: dict[str, int] = {}
                profiler = cProfile.Profile() if args.profile else None
                for r in range(args.rounds if args.n else 0):
                    # Alternating within one run, the order swapped every round: the machine's
                    # load moves on a scale of seconds, and a single pair caught it 2x apart.
                    took: dict[str, float] = {}
                    for kind in ("bare", "api") if r % 2 == 0 else ("api", "bare"):
                        if kind == "bare":
                            took["bare"] = await timed(bare, "bare")
                            continue
                        if profiler is not None:
                            profiler.enable()
                        counted, kinds_before = statements.count, dict(statements.kinds)
                        _phase("api")
                        took["api"] = await timed(post, "api")
                        _phase("api done")
                        api_statements += statements.count - counted
                        for kind_, n in statements.kinds.items():
                            api_kinds[kind_] = api_kinds.get(kind_, 0) + n - kinds_before.get(kind_, 0)
                        if profiler is not None:
                            profiler.disable()
                    rounds.append(
                        {
                            "bare_signals_per_s": round(args.n / took["bare"], 1),
                            "api_events_per_s": round(args.n / took["api"], 1),
                            "ratio": round(took["bare"] / took["api"], 2),
                            "cpu_ms_per_event": {"bare": cpu_ms["bare"], "api": cpu_ms["api"]},
                            "loadavg": _loadavg(),
                        }
                    )
                    print(
                        f"round {r + 1}: /v1/events {rounds[-1]['api_events_per_s']}/s, bare "
                        f"{rounds[-1]['bare_signals_per_s']}/s, ratio {rounds[-1]['ratio']}, "
                        f"load {rounds[-1]['loadavg']}",
                        file=sys.stderr,
                        flush=True,
                    )
                if profiler is not None:
                    profiler.dump_stats(args.profile)
                api_kinds = dict(sorted(api_kinds.items(), key=lambda kv: -kv[1]))
                # The medians of the rounds: rates, and each process's CPU per event.
                bare_s = args.n / _median([r["bare_signals_per_s"] for r in rounds]) if rounds else 0.0
                api_s = args.n / _median([r["api_events_per_s"] for r in rounds]) if rounds else 0.0
                for name in ("bare", "api"):
                    if rounds:
                        cpu_ms[name] = _median_by_role([r["cpu_ms_per_event"][name] for r in rounds])

                # What HTTP alone costs here: the same client and server, 16 in flight, no work.
                cpu_before = _cpu_by_role()
                floor_s = await _pool(args.n, args.c, healthz) if args.n else 0.0
                if args.n:
                    cpu_ms["http_floor"] = _per_event_ms(cpu_before, _cpu_by_role(), args.n)
                # The bare signals again, paced at the rate the API just reached: what Temporal
                # spends per signal at that rate, to tell a rate effect from extra work we cause.
                paced_s = await timed(bare, "bare_paced", args.n / api_s) if args.n else 0.0

                api_lat: list[float] = []
                bare_lat: list[float] = []
                target = handles[0]
                for _ in range(args.m if args.n else 0):
                    for kind in ("api", "bare"):
                        before = await target.query(SignalSink.received)
                        start = time.perf_counter()
                        if kind == "api":
                            await post(0)
                        else:
                            await bare(0)
                        await _until_count(target, before + 1)
                        (api_lat if kind == "api" else bare_lat).append(time.perf_counter() - start)
                statements.reset()
                profiler = cProfile.Profile() if args.profile else None
                if profiler is not None:
                    profiler.enable()
                _phase("batch")
                cpu_before = _cpu_by_role()
                batch_s = await _batches(http, args) if args.batch_events else None
                if args.batch_events:
                    cpu_ms["batch"] = _per_event_ms(cpu_before, _cpu_by_role(), args.batch_events)
                await raw.close()
                _phase("batch done")
                batch_statements = statements.count
                batch_sql_s = statements.seconds
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(f"{args.profile}.batch")
            payload_sizes = await _payload_sizes(client)
            for handle in handles:
                await handle.signal(SignalSink.stop)
    finally:
        await env.shutdown()
        await db.dispose()
        if schema is not None:
            await _drop_schema(settings.database_url, schema)

    db_kind = "postgresql" if args.database_url else "sqlite"
    result: dict[str, Any] = {"database": db_kind}
    if args.n:
        result |= {
            "events": args.n,
            "in_flight": args.c,
            "api_events_per_s": round(args.n / api_s, 1),
            "bare_signals_per_s": round(args.n / bare_s, 1),
            "throughput_ratio": _median([r["ratio"] for r in rounds]),
            "rounds": rounds,
            "http_floor_per_s": round(args.n / floor_s, 1),
            "api_to_http_floor": round(floor_s / api_s, 2),
            "server": args.server,
            "client": args.client,
            # CPU milliseconds per event by process (Linux /proc): what each side costs the
            # machine, which a loaded 2-core machine's throughput figures hide.
            "cpu_ms_per_event": cpu_ms,
            "bare_paced_signals_per_s": round(args.n / paced_s, 1),
            "workflow_tasks_per_signal": tasks_per_signal,
            "server_requests_per_signal": rpcs_per_signal,
            "signal_payload_bytes": payload_sizes,
        }
        if args.server == "inline":
            # Every SQL statement of the phase (key checks, events, relay settles, segments).
            result |= {
                "statements_per_event": round(api_statements / (args.n * len(rounds)), 1),
                "statements_by_kind": api_kinds,
            }
    if args.n and args.m:
        result |= {
            "latency_samples": args.m,
            "api_p50_ms": round(_pct(api_lat, 0.5), 1),
            "api_p99_ms": round(_pct(api_lat, 0.99), 1),
            "bare_p50_ms": round(_pct(bare_lat, 0.5), 1),
            "bare_p99_ms": round(_pct(bare_lat, 0.99), 1),
        }
    if batch_s is not None:
        result["batch_events"] = args.batch_events
        result["batch_size"] = args.batch_size
        result["batch_events_per_s"] = round(args.batch_events / batch_s, 1)
        result["batch_cpu_ms_per_event"] = cpu_ms.get("batch", {})
        requests = -(-args.batch_events // args.batch_size)
        if args.server == "inline":
            result["batch_statements_per_request"] = round(batch_statements / requests, 1)
            # Statements of concurrent sessions overlap: an upper bound of the time in SQL.
            result["batch_sql_seconds_per_request"] = round(batch_sql_s / requests, 3)
    if args.n and args.m:
        result["p50_ratio"] = round(result["api_p50_ms"] / result["bare_p50_ms"], 2)
        result["p99_ratio"] = round(result["api_p99_ms"] / result["bare_p99_ms"], 2)
    if args.n:
        print(
            f"throughput: /v1/events {result['api_events_per_s']}/s vs bare signal "
            f"{result['bare_signals_per_s']}/s -> ratio {result['throughput_ratio']}"
        )
        for r, one in enumerate(result["rounds"], 1):
            print(
                f"  round {r}: ratio {one['ratio']} ({one['api_events_per_s']} vs {one['bare_signals_per_s']}/s), "
                f"load {one['loadavg']}; CPU ms per event api/bare: "
                + ", ".join(
                    f"{role} {api_ms.get(role, 0.0)}/{bare_ms.get(role, 0.0)}"
                    for role in _ROLES
                    for api_ms, bare_ms in [(one["cpu_ms_per_event"]["api"], one["cpu_ms_per_event"]["bare"])]
                )
            )
        # Side by side, one column per process (the service's threads after it): where an
        # API event costs more than a bare signal.
        print("CPU ms per event (medians of the rounds):")
        print(f"  {'':<12}" + "".join(f"{role:>16}" for role in _ROLES))
        for name, by_role in cpu_ms.items():
            if name == "batch":
                continue
            print(f"  {name:<12}" + "".join(f"{by_role.get(role, 0.0):>16}" for role in _ROLES))
        print(
            f"workflow tasks per signal: {tasks_per_signal}; bare paced at the API's rate: "
            f"{result['bare_paced_signals_per_s']}/s; signal payload bytes: {result['signal_payload_bytes']}"
        )
        for name, ops in rpcs_per_signal.items():
            print(f"server requests per signal, {name}: {ops}")
        print(
            f"HTTP floor (GET /healthz, same client and server): {result['http_floor_per_s']}/s; "
            f"/v1/events is {result['api_to_http_floor']} of it"
        )
        if args.server == "inline":
            print(f"statements per event: {result['statements_per_event']}")
    if args.n and args.m:
        print(f"latency p50: {result['api_p50_ms']} ms vs {result['bare_p50_ms']} ms -> ratio {result['p50_ratio']}")
        print(f"latency p99: {result['api_p99_ms']} ms vs {result['bare_p99_ms']} ms -> ratio {result['p99_ratio']}")
    if batch_s is not None:
        print(
            f"batch: {args.batch_events} events in batches of {args.batch_size} on {db_kind}: "
            f"{result['batch_events_per_s']} events/s (stored, profiles updated, segments queued for refresh)"
            + (
                f", {result['batch_statements_per_request']} statements and "
                f"{result['batch_sql_seconds_per_request']} s in SQL per request"
                if args.server == "inline"
                else ""
            )
        )
        print("CPU ms per event, batch: " + ", ".join(f"{k} {v}" for k, v in cpu_ms.get("batch", {}).items()))
    _save(result, args.out)
    shutil.rmtree(tmp, ignore_errors=True)


async def _batches(http: httpx.AsyncClient, args: argparse.Namespace) -> float:
    """Seconds to send `--batch-events` page views and cart updates (no journey waits on
    them: what a shop sends most) through the batch endpoint, two batches in flight."""
    kinds = ("page_view", "cart_updated")
    events = [
        {"event_id": f"b-{i}", "customer_id": f"bench-{i % args.customers}", "type": kinds[i % 2]}
        for i in range(args.batch_events)
    ]
    chunks = [events[i : i + args.batch_size] for i in range(0, len(events), args.batch_size)]

    async def one(i: int) -> None:
        start = time.perf_counter()
        reply = await http.post("/v1/events/batch", json={"events": chunks[i]})
        assert reply.status_code == 202 and reply.json()["accepted"] == len(chunks[i]), reply.text
        request_s.append(round(time.perf_counter() - start, 3))

    request_s: list[float] = []

    elapsed = await _pool(len(chunks), 2, one)
    print(f"batch requests (s, in order of answer): {request_s}", file=sys.stderr, flush=True)
    return elapsed


async def _workflow_tasks(handles: list[WorkflowHandle[Any, Any]]) -> int:
    """Workflow tasks completed so far in these workflows' histories."""
    total = 0
    for handle in handles:
        history = await handle.fetch_history()
        total += sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in history.events)
    return total


async def _server_requests(port: int) -> dict[str, int]:
    """The dev server's frontend requests so far by operation (its Prometheus counters)."""
    # The server's counters reach /metrics about once a second: wait for the last ones.
    await asyncio.sleep(1.2)
    async with httpx.AsyncClient() as http:
        text_ = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    counts: dict[str, int] = {}
    for line in text_.splitlines():
        if not line.startswith("service_requests{") or 'service_name="frontend"' not in line:
            continue
        operation = line.split('operation="', 1)[1].split('"', 1)[0]
        counts[operation] = counts.get(operation, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


async def _payload_sizes(client: Client) -> dict[str, int]:
    """Encoded (codec: encrypted) size of a signal's argument as the bare loop sends it (the
    model) and as the outbox relay sends it (the stored row's JSON), with the relay's event id."""
    arg = EngagementInput(type=EngagementType.CONVERTED, occurred_at=utcnow(), event_id="bench:e-12345")
    sizes = {}
    for name, value in (
        ("bare", EngagementInput(type=EngagementType.CONVERTED)),
        ("relay", arg.model_dump(mode="json")),
    ):
        [payload] = await client.data_converter.encode([value])
        sizes[name] = payload.ByteSize()
    return sizes


# The processes whose CPU the benchmark reads, and the webhooks service's threads (its event
# loop, the Temporal client's Rust core, the database threads): `service.*` are parts of
# `service`, not counted again in `total`.
_ROLES = ("bench", "worker", "temporal", "service", "service.loop", "service.core", "service.threads", "total")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return round(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2, 2)


def _median_by_role(runs: list[dict[str, float]]) -> dict[str, float]:
    return {role: _median([run.get(role, 0.0) for run in runs]) for role in runs[0]}


def _loadavg() -> str:
    """The 1- and 5-minute load averages, as /proc/loadavg has them ('' without /proc)."""
    with suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:2])
    return ""


def _thread_roles(pid: int) -> dict[str, float]:
    """CPU seconds of the webhooks service's threads by kind: the event loop (the main
    thread: HTTP, the group commit's Python, the relay), the Temporal client's Rust core
    (tokio threads), and the other threads (aiosqlite's and the one-hop transactions')."""
    ticks = os.sysconf("SC_CLK_TCK")
    roles: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        role = (
            "service.loop"
            if task.name == str(pid)
            else "service.core"
            if comm.startswith("tokio")
            else "service.threads"
        )
        roles[role] = roles.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return roles


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this process and its children (the Temporal dev server,
    the webhooks service, the worker), by role; empty where /proc is missing."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    roles: dict[str, float] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return roles
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces: the fields after its closing parenthesis.
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        if pid != me and ppid != me:
            continue
        role = (
            "bench"
            if pid == me
            else "service"
            if "webhooks.server" in cmdline
            else "worker"
            if "signal_sink_worker" in cmdline
            else "temporal"
            if "temporal" in cmdline
            else "other"
        )
        roles[role] = roles.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        if role == "service":
            for part, seconds in _thread_roles(pid).items():
                roles[part] = roles.get(part, 0.0) + seconds
    return roles


def _per_event_ms(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    used = {role: (after[role] - before.get(role, 0.0)) * 1000 / n for role in after}
    used["total"] = sum(ms for role, ms in used.items() if "." not in role)
    return {role: round(ms, 2) for role, ms in used.items()}


class _RawHttp:
    """A lean HTTP/1.1 load generator: one kept-alive connection per request in flight,
    a request written as bytes, the answer read by its Content-Length.

    httpx costs the benchmark's process some 3 ms of CPU per request (its pool looks at
    every connection for every request), about as much as the service spends on a request
    and more than the bare side's client spends on a signal; on a two-core machine that
    CPU comes out of the service's and Temporal's share. A shop's sender runs elsewhere,
    so the default measures the service with this client instead (`--client httpx`
    for the old figures).
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parsed = httpx.URL(url)
        self._host, self._port = parsed.host, parsed.port or 80
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{self._host}:{self._port}", **headers}.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request on an idle connection (a new one if none is idle); (status, body)."""
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        request = head.encode() + b"\r\n" + data
        while self._idle:
            reader, writer = self._idle.pop()
            writer.write(request)
            try:
                answer = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed a connection left idle past its keep-alive (uvicorn:
                # 5 s, e.g. during the bare phase) before reading this request: send it again.
                writer.close()
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
        status_line, _, rest = answer.partition(b"\r\n")
        length, close = 0, False
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await reader.readexactly(length)
        if close:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle = []


class _StatementCounter:
    """Counts the SQL statements the engine runs (each one a round trip, and on SQLite a
    hop to aiosqlite's thread)."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.seconds = 0.0  # wall time from each statement's start to its end, summed
        self._started = 0.0
        for engine in db.sync_engines():
            event.listen(engine, "before_cursor_execute", self._seen)
            event.listen(engine, "after_cursor_execute", self._done)

    def _done(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self._started = time.perf_counter()
        self.count += 1
        # "SELECT ... FROM customers" -> "SELECT customers": what the statements were.
        words = statement.split()
        table = next((w for prev, w in itertools.pairwise(words) if prev in {"FROM", "INTO", "UPDATE"}), "")
        kind = f"{words[0] if words else '?'} {table}".strip()
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def reset(self) -> None:
        self.count = 0
        self.kinds = {}
        self.seconds = 0.0


@asynccontextmanager
async def _server_process(settings: Settings, client: Client, profile: str | None) -> AsyncIterator[str]:
    """`python -m webhooks.server` on a free port, on the bench's database and dev server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "CASCADE_DATABASE_URL": settings.database_url,
        "CASCADE_DATABASE_SCHEMA": settings.database_schema or "",
        "CASCADE_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "CASCADE_TASK_QUEUE": settings.task_queue,
        "CASCADE_WEBHOOKS_HOST": "127.0.0.1",
        "CASCADE_WEBHOOKS_PORT": str(port),
        "CASCADE_LOG_LEVEL": "WARNING",
    }
    # cProfile of the whole service process (its event loop's thread), written when it stops.
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    process = await asyncio.create_subprocess_exec(sys.executable, *prof, "-m", "webhooks.server", cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(600):
                if process.returncode is not None:
                    raise RuntimeError(f"webhooks server exited with {process.returncode}")
                with suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("webhooks server did not answer within 60 s")
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)  # uvicorn drains and the relay settles
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def _worker_process(client: Client, task_queue: str) -> AsyncIterator[None]:
    """`python -m bench.signal_sink_worker` on the bench's dev server and task queue."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.signal_sink_worker",
        client.service_client.config.target_host,
        task_queue,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if b"ready" not in line:
            raise RuntimeError(f"bench worker did not start ({process.returncode})")
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _drop_schema(url: str, schema: str) -> None:
    database = Database.from_url(url)
    async with database.engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await database.dispose()


def _save(result: dict[str, Any], name: str) -> None:
    out = Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
