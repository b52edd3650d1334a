"""Sleeping journeys: many journeys asleep on one worker, then all waking at once and sending.

    python bench/sleeping.py [-n 2000] [--wake K] [--cache N] [--server-db file]

N real CascadeJourneys (one email step with a delay, then a wait for a reaction) are
started with the same trigger time, so they all sleep on a durable timer (and listen for
signals) and wake at the same moment: a campaign's next step. One worker process runs
them (its sticky cache sized to hold them all unless --cache says otherwise); the bench
reports the worker's peak RSS and the dev server's RSS while they sleep and after the
burst, and the burst's sends/s: from the wake-up moment until the last message is with
the (sandbox) provider. In the same run, N raw workflows do the least the same moment
needs: sleep on one timer until the same kind of moment, then one activity, then wait
for a signal, in a worker process of their own. Both workers are child processes, so the
RSS is each one's own. Results go to bench/results/sleeping.json.

With --wake K only K of the N wake at that moment; the other N-K (started first) sleep
for days, past the end of the bench, held by the server (and by the worker only as far
as its sticky cache holds them), and none of them may send. For large N the dev server
keeps its state in a SQLite file (--server-db), whose size is reported, so its memory is
not the in-memory store's. Progress (started so far, rate) is printed every --progress
seconds, and the CPU each process spent per start is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event
from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.runtime import LoggingConfig, PrometheusConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import Worker

from bench.bare_workflow import RawSleeper
from bench.procfs import child_pids, cpu_seconds, tree_cpu_seconds
from cascade.infra.codec import data_converter
from cascade.infra.db import Database, migrate
from cascade.infra.logging import configure_logging
from cascade.infra.settings import Settings
from cascade.profiles.importer import import_profiles
from channels.base import OutboundMessage, SendReceipt
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from models.journey import JourneySpec
from models.search_attributes import dev_server_flags
from tests.conftest import binary, quiet_runtime

HERE = Path(__file__).resolve().parent
# How long the N-K journeys that must not wake sleep: far past any bench's end.
SLEEPER_DELAY = timedelta(days=7)
SPEC: dict[str, Any] = {
    "name": "sleepers",
    "steps": [
        {
            "channel": "email",
            "delay": "1h",  # replaced by --sleep
            "wait": "1d",
            "content": {"subject": "Hi {{ name }}", "body": "Your cart misses you, {{ name }}"},
        }
    ],
}


# ------------------------------------------------------------------ the raw baseline
class FileLog:
    """Appends one line per send (the time, the message's key, which journey number) to a file the parent counts."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def sent(self, key: str, who: str) -> None:
        self._file.write(f"{time.time()} {key} {who}\n")


class LoggingSandbox(SandboxChannel):
    """The sandbox provider, noting the time of every send."""

    def __init__(self, name: str, db: Database, log: FileLog) -> None:
        super().__init__(name, db)
        self._log = log

    async def send(self, message: OutboundMessage) -> SendReceipt:
        receipt = await super().send(message)
        # The address is s<i>@example.com: i tells a journey meant to wake from a sleeper.
        self._log.sent(message.idempotency_key, message.to.partition("@")[0].removeprefix("s"))
        return receipt


# ------------------------------------------------------------------ child: a worker
async def run_worker(args: argparse.Namespace) -> None:
    """The worker process of one side, until SIGTERM."""
    settings = Settings(database_url=args.database_url, task_queue=args.task_queue)
    settings = settings.model_copy(update={"worker_max_cached_workflows": args.cache})
    # As worker.py does: every log line to stderr (the parent points it at a file). Left
    # unconfigured, structlog prints to stdout, the pipe the parent reads "ready" from
    # and nothing after: once the pipe's buffers filled (about 800 `send.sent` lines),
    # every print blocked the worker's event loop, so heartbeats stopped and retried
    # sends were never polled.
    configure_logging(args.log_level, "json")
    if args.tracemalloc:
        # What the process holds while its journeys sleep, by source line, on SIGUSR1.
        tracemalloc.start(1)

        def snapshot() -> None:
            top = tracemalloc.take_snapshot().statistics("lineno")
            lines = [f"{s.size / 1024:10.1f} KiB {s.count:8d} {s.traceback}" for s in top[:40]]
            Path(args.sent_log + ".tracemalloc").write_text("\n".join(lines) + "\n")

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, snapshot)
    runtime = quiet_runtime()
    if args.metrics_port:
        # --counts: the SDK core's own counters (workflow tasks, sticky cache hits and
        # misses, replays, activities) read by the parent before and after the burst.
        runtime = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")),
                metrics=PrometheusConfig(bind_address=f"127.0.0.1:{args.metrics_port}"),
            )
        )
    client = await Client.connect(args.address, data_converter=data_converter(settings), runtime=runtime)
    log = FileLog(Path(args.sent_log))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if args.role == "raw":

        @activity.defn(name="raw_send")
        async def raw_send(workflow_id: str) -> str:
            log.sent(workflow_id, workflow_id.rpartition("/")[2])
            return f"msg-{workflow_id}"

        worker: Any = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[RawSleeper],
            activities=[raw_send],
            max_cached_workflows=args.cache,
        )
        async with worker:
            print("ready", flush=True)
            await stop.wait()
        return
    from worker import build_worker

    db = Database.from_settings(settings)
    if args.metrics_port:
        # --counts: SQL statements by verb, written to <sent log>.sql on SIGUSR2.
        statements: Counter[str] = Counter()

        def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            statements[statement.split(None, 1)[0].upper()] += 1

        for engine in db.sync_engines():
            event.listen(engine, "before_cursor_execute", count)
        sql_path = Path(args.sent_log + ".sql")
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR2, lambda: sql_path.write_text(json.dumps(dict(statements)))
        )
    channels = dict(build_channels(settings, db))
    channels["email"] = LoggingSandbox("email", db, log)
    async with build_worker(client, settings, db, channels):
        print("ready", flush=True)
        await stop.wait()
    await db.dispose()


# ------------------------------------------------------------------ parent
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS now, VmHWM its peak) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _load() -> str:
    """The machine's load averages (1, 5, 15 minutes), to read next to every figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _tree_rss_mib(pid: int) -> float:
    """RSS of `pid` and its children (the dev server CLI runs the server in-process)."""
    return _rss_mib(pid) + sum(_tree_rss_mib(c) for c in child_pids(pid))


def _keep_snapshot(snapshot: Path, to: Path) -> None:
    if snapshot.exists():
        to.write_text(snapshot.read_text())


def _sends(path: Path) -> dict[str, tuple[float, int]]:
    """Each message's first send time and journey number (a retried provider call with the same key counts once)."""
    if not path.exists():
        return {}
    first: dict[str, tuple[float, int]] = {}
    for line in path.read_text().splitlines():
        at, key, who = line.split(" ")
        first.setdefault(key, (float(at), int(who)))
    return first


def _lines(path: Path) -> list[float]:
    """The first send time of each message, in order."""
    return sorted(at for at, _ in _sends(path).values())


def _truncate(path: Path) -> None:
    path.write_text("")


def _file_mib(path: Path) -> float:
    """Size of a SQLite database with its -wal and -shm files, in MiB (0 if it has none)."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


# The SDK core counters --counts reads from a worker (summed over its task queues).
CORE_COUNTERS = {
    "temporal_workflow_task_execution_latency_count": "workflow_tasks",
    "temporal_workflow_task_replay_latency_count": "replayed_tasks",
    "temporal_sticky_cache_hit": "sticky_cache_hits",
    "temporal_sticky_cache_miss": "sticky_cache_misses",
    "temporal_sticky_cache_total_forced_eviction": "forced_evictions",
    "temporal_activity_execution_latency_count": "activities",
    "temporal_local_activity_execution_latency_count": "local_activities",
}


def _core_counters(port: int) -> Counter[str]:
    """The worker's core counters now (its Prometheus endpoint), by CORE_COUNTERS' names."""
    found: Counter[str] = Counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in CORE_COUNTERS:
            found[CORE_COUNTERS[name]] += int(float(line.rsplit(" ", 1)[1]))
    return found


def _read_counts(path: Path, remove: bool = False) -> Counter[str] | None:
    """The statement counts the worker wrote to `path` (None: not yet); `remove`: delete the file first."""
    if remove:
        path.unlink(missing_ok=True)
        return None
    text = path.read_text() if path.exists() else ""
    return Counter(json.loads(text)) if text else None


async def _sql_counts(child: asyncio.subprocess.Process, sent_log: Path) -> Counter[str]:
    """SQL statements the cascade worker ran so far, by verb (it writes them on SIGUSR2)."""
    path = Path(str(sent_log) + ".sql")
    _read_counts(path, remove=True)
    child.send_signal(signal.SIGUSR2)
    for _ in range(100):
        if (found := _read_counts(path)) is not None:
            return found
        await asyncio.sleep(0.1)
    return Counter()


async def _history_counts(client: Client, workflow_id: str) -> dict[str, Any]:
    """One run's history: events by type (all, and from its wake on), bytes, payload bytes."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    kinds = [str(e.WhichOneof("attributes")).removesuffix("_event_attributes") for e in history.events]
    woke = next((i for i, kind in enumerate(kinds) if kind == "timer_fired"), len(kinds))
    return {
        "events": len(kinds),
        "bytes": sum(e.ByteSize() for e in history.events),
        "by_type": dict(sorted(Counter(kinds).items())),
        "bytes_before_wake": sum(e.ByteSize() for e in history.events[:woke]),
        "from_wake": dict(sorted(Counter(kinds[woke:]).items())),
    }


async def _until_asleep(client: Client, queue: str, cascade: bool, label: str, progress: float) -> tuple[float, int]:
    """Wait until every started workflow has run its first task (gone to sleep).

    Returns the seconds it took and how many had not run it at the first look.

    A start is accepted long before the worker runs the journey's first task: at 100,000
    the starts outran the worker (about 40 first tasks/s on this machine), and journeys
    that had not yet run one were still in the queue when the wake came.
    """
    began = time.perf_counter()
    last_report = began
    pending_at_first: int | None = None
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        report_stats=True,
    )
    while True:
        backlog = (await client.workflow_service.describe_task_queue(request)).stats.approximate_backlog_count
        # A journey upserts "delayed" in its first task: none left "running" is exact.
        running = (await client.count_workflows('JourneyStatus="running"')).count if cascade else 0
        if pending_at_first is None:
            pending_at_first = max(backlog, running)
        if backlog == 0 and running == 0:
            return time.perf_counter() - began, pending_at_first
        if progress and time.perf_counter() - last_report >= progress:
            last_report = time.perf_counter()
            print(
                f"{label}: waiting for first tasks, backlog {backlog}"
                + (f", {running} not yet asleep" if cascade else "")
                + f", {last_report - began:.0f} s, load {_load()}",
                flush=True,
            )
        await asyncio.sleep(2)


async def _start_all(indices: range, concurrency: int, one: Any, label: str = "", progress: float = 0) -> float:
    """Start `one(i)` for every index, `concurrency` at a time; print progress every `progress` s."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)
    done = 0

    async def pump() -> None:
        nonlocal done
        while not queue.empty():
            await one(queue.get_nowait())
            done += 1

    async def report() -> None:
        # A long run (100,000 starts) can be watched: started so far, overall and recent rate.
        last, last_at = 0, started
        while True:
            await asyncio.sleep(progress)
            now = time.perf_counter()
            print(
                f"{label}: started {done}/{len(indices)} in {now - started:.0f} s, {done / (now - started):.1f}/s "
                f"(last {now - last_at:.0f} s: {(done - last) / (now - last_at):.1f}/s), load {_load()}",
                flush=True,
            )
            last, last_at = done, now

    started = time.perf_counter()
    reporter = asyncio.create_task(report()) if progress else None
    await asyncio.gather(*(pump() for _ in range(concurrency)))
    if reporter:
        reporter.cancel()
    return time.perf_counter() - started


async def side(
    name: str,
    args: argparse.Namespace,
    address: str,
    database_url: str,
    tmp: Path,
    client: Client,
    server_pid: int,
    server_db: Path | None,
) -> dict[str, Any]:
    """Start N sleepers of one side, let K of them wake together, time the burst."""
    sent_log = tmp / f"{name}.sent"
    queue = f"sleep-{name}"
    worker_log = (HERE / "results" / f"sleeping-{name}-worker.log").open("w")
    if args.counts:
        args.metrics_port = _free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", name, "--address", address, "--database-url", database_url,
        "--task-queue", queue, "--sent-log", str(sent_log), "--cache", str(args.cache or args.n),
        "--log-level", args.log_level, *(["--tracemalloc"] if args.tracemalloc else []),
        *(["--metrics-port", str(args.metrics_port)] if args.counts else []),
        stdout=subprocess.PIPE, stderr=worker_log, env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )  # fmt: skip
    try:
        return await _side(name, args, child, database_url, sent_log, queue, client, server_pid, server_db)
    finally:
        # Whatever happened, no worker is left running.
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            await child.wait()
        worker_log.close()


async def _side(
    name: str,
    args: argparse.Namespace,
    child: asyncio.subprocess.Process,
    database_url: str,
    sent_log: Path,
    queue: str,
    client: Client,
    server_pid: int,
    server_db: Path | None,
) -> dict[str, Any]:
    assert child.stdout is not None
    await child.stdout.readline()  # "ready"
    # Whatever else the child prints is read and dropped: a full pipe would block it.
    drain = asyncio.create_task(child.stdout.read())
    settings = Settings(database_url=database_url, task_queue=queue)
    db = Database.from_settings(settings)
    wake = args.wake
    # One workflow id of each kind (the journey that wakes, one that sleeps on), for --counts.
    samples: dict[str, str] = {}

    def starter(prefix: str, wake_at: datetime | None, sleep: float) -> Any:
        """Starts journey i waking at `wake_at`, or (None) a sleeper that wakes SLEEPER_DELAY from now."""
        if name == "raw":
            raw_at = wake_at or datetime.now(UTC) + SLEEPER_DELAY

            async def raw(i: int) -> None:
                handle = await client.start_workflow(
                    RawSleeper.run, raw_at.isoformat(), id=f"raw/{prefix}/{i}", task_queue=queue
                )
                samples.setdefault("waker" if wake_at else "sleeper", handle.id)

            return raw
        from starter import start_journey

        delay = f"{sleep}s" if wake_at else f"{SLEEPER_DELAY.days}d"
        spec = JourneySpec.model_validate({**SPEC, "steps": [{**SPEC["steps"][0], "delay": delay}]})
        origin = wake_at - timedelta(seconds=sleep) if wake_at else None

        async def cascade(i: int) -> None:
            handle = await start_journey(
                f"s-{i}", spec, client=client, db=db, settings=settings, key=prefix, triggered_at=origin
            )
            samples.setdefault("waker" if wake_at else "sleeper", handle.id)

        return cascade

    # Warm-up: a worker's first workflow tasks import the workflow modules into the
    # sandbox; a cold worker hit by hundreds of starts times its tasks out meanwhile.
    warm = 5
    await _start_all(range(warm), warm, starter(f"warm-{name}", datetime.now(UTC) + timedelta(seconds=2), 2))
    while True:
        if len(_lines(sent_log)) >= warm:
            break
        await asyncio.sleep(0.5)
    _truncate(sent_log)  # the child appends to the same open file
    samples.clear()
    prefix = f"{name}-{time.monotonic_ns()}"
    # Where starting time goes: CPU seconds of this process (start_journey's checks and
    # writes, the client), the worker (each journey's first task) and the dev server.
    cpu_before = cpu_seconds(os.getpid()), tree_cpu_seconds(child.pid), tree_cpu_seconds(server_pid)
    # The N-K sleepers first (their timers are days away, so their start time does not
    # matter), then the K that wake: the wake moment is set once the sleepers are in.
    sleepers_seconds = await _start_all(
        range(wake, args.n), args.concurrency, starter(prefix, None, 0), f"{name} sleepers", args.progress
    )
    cpu_wait = tree_cpu_seconds(child.pid), tree_cpu_seconds(server_pid)
    sleepers_asleep_seconds, pending_after_starts = await _until_asleep(
        client, queue, name == "cascade", f"{name} sleepers", args.progress
    )
    # Cores the worker and the dev server kept busy while only first tasks ran: under
    # 1 each, and well under the machine's 2, means the rate is not their CPU.
    cpu_wait = tree_cpu_seconds(child.pid) - cpu_wait[0], tree_cpu_seconds(server_pid) - cpu_wait[1]
    # Every one of the K wakes at the same moment: far enough ahead for all of them to be
    # started and asleep first (the cascade side checks below).
    wake_at = datetime.now(UTC) + timedelta(seconds=args.sleep)
    wakers_seconds = await _start_all(
        range(wake), args.concurrency, starter(prefix, wake_at, args.sleep), f"{name} wakers", args.progress
    )
    start_seconds = sleepers_seconds + wakers_seconds
    cpu_starts = [
        after - before
        for before, after in zip(
            cpu_before,
            (cpu_seconds(os.getpid()), tree_cpu_seconds(child.pid), tree_cpu_seconds(server_pid)),
            strict=True,
        )
    ]
    # Let the first workflow tasks finish (each journey goes to sleep), then measure.
    now = datetime.now(UTC)
    asleep_margin = (wake_at - now).total_seconds()
    await asyncio.sleep(max(asleep_margin - 2, 0))
    asleep = None
    if name == "cascade":
        counted = await client.count_workflows('JourneyStatus="delayed"')
        asleep = counted.count
    asleep_rss = _rss_mib(child.pid)
    if args.tracemalloc:
        child.send_signal(signal.SIGUSR1)
        await asyncio.sleep(5)
        _keep_snapshot(Path(str(sent_log) + ".tracemalloc"), HERE / "results" / f"sleeping-{name}-tracemalloc.txt")
    server_asleep = _tree_rss_mib(server_pid)
    server_db_asleep = _file_mib(server_db) if server_db else None
    sends_before_wake = len(_lines(sent_log))
    load_at_wake = _load()
    await asyncio.sleep(max((wake_at - datetime.now(UTC)).total_seconds(), 0))
    # CPU of the worker and the dev server through the burst: less swayed by other work on
    # the machine than the rate is (the server's includes whatever else it serves then).
    if args.counts:
        counters_before = await asyncio.to_thread(_core_counters, args.metrics_port)
        sql_before = await _sql_counts(child, sent_log) if name == "cascade" else Counter()
    cpu_worker, cpu_server = tree_cpu_seconds(child.pid), tree_cpu_seconds(server_pid)
    deadline = time.monotonic() + args.timeout
    last_report = time.monotonic()
    while True:
        count = len(_lines(sent_log))
        if count >= wake or time.monotonic() > deadline:
            break
        if args.progress and time.monotonic() - last_report >= args.progress:
            last_report = time.monotonic()
            elapsed = time.time() - wake_at.timestamp()
            print(f"{name} burst: {count}/{wake} sent in {elapsed:.0f} s, load {_load()}", flush=True)
        await asyncio.sleep(0.5)
    if wake < args.n:
        # Room for a sleeper that wrongly woke with the others to show up.
        await asyncio.sleep(5)
    sends = _sends(sent_log)
    times = sorted(at for at, who in sends.values() if who < wake)
    by_sleepers = sum(1 for _, who in sends.values() if who >= wake)
    cpu_worker_at_wake, cpu_server_at_wake = cpu_worker, cpu_server
    cpu_worker, cpu_server = tree_cpu_seconds(child.pid) - cpu_worker, tree_cpu_seconds(server_pid) - cpu_server
    peak = _rss_mib(child.pid, "VmHWM")
    server_after = _tree_rss_mib(server_pid)
    counts: dict[str, Any] | None = None
    settle_seconds = None
    if args.counts and times:
        # The burst is over when the last message is out, but each woken journey still
        # has its workflow task after the send (the raw side's timer, Cascade's upsert and
        # timer): wait for them (two tasks per send at least) so the CPU per send below
        # counts the same work on both sides, whatever order the worker took tasks in.
        settle_began = time.monotonic()
        while time.monotonic() - settle_began < 300:
            done = (await asyncio.to_thread(_core_counters, args.metrics_port))["workflow_tasks"]
            if done - counters_before["workflow_tasks"] >= 2 * len(times):
                break
            await asyncio.sleep(0.5)
        settle_seconds = round(time.monotonic() - settle_began, 1)
        cpu_worker_settled = tree_cpu_seconds(child.pid) - cpu_worker_at_wake
        cpu_server_settled = tree_cpu_seconds(server_pid) - cpu_server_at_wake
        # What the burst cost per send, as the worker's core counted it, and one history.
        counters = await asyncio.to_thread(_core_counters, args.metrics_port)
        counters.subtract(counters_before)
        sql = (await _sql_counts(child, sent_log)) if name == "cascade" else Counter()
        sql.subtract(sql_before)
        counts = {
            # From the wake until every woken journey's task after its send had run.
            "settle_seconds_after_last_send": settle_seconds,
            "worker_cpu_ms_per_send_settled": round(1000 * cpu_worker_settled / len(times), 1),
            "server_cpu_ms_per_send_settled": round(1000 * cpu_server_settled / len(times), 1),
            "per_send": {k: round(v / len(times), 2) for k, v in sorted(counters.items())},
            "sql_per_send": {k: round(v / len(times), 2) for k, v in sorted(sql.items()) if v},
            **{kind: await _history_counts(client, wid) for kind, wid in samples.items()},
        }
    child.send_signal(signal.SIGTERM)
    await child.wait()
    await drain
    await db.dispose()
    burst = (max(times) - wake_at.timestamp()) if times else float("nan")
    started = args.n
    result = {
        "side": name,
        "journeys": args.n,
        "wake": wake,
        "cache": args.cache or args.n,
        "start_seconds": round(start_seconds, 2),
        "starts_per_s": round(started / start_seconds, 1),
        "sleepers_start_seconds": round(sleepers_seconds, 2),
        "wakers_start_seconds": round(wakers_seconds, 2),
        # After the sleepers' starts, until the worker had run every one's first task.
        "sleepers_asleep_wait_seconds": round(sleepers_asleep_seconds, 2),
        # The worker's first workflow tasks per second while the sleepers went to sleep:
        # from the first sleeper's start until every one had run its first task.
        "first_tasks_per_s": round((args.n - wake) / (sleepers_seconds + sleepers_asleep_seconds), 1)
        if args.n > wake
        else None,
        # Only after the starts, with no start competing: the backlog then, over the wait.
        "first_tasks_after_starts_per_s": round(pending_after_starts / sleepers_asleep_seconds, 1)
        if pending_after_starts > 20
        else None,
        "pending_after_starts": pending_after_starts,
        "cores_busy_after_starts": {
            who: round(cpu / max(sleepers_asleep_seconds, 0.01), 2)
            for who, cpu in zip(("worker", "server"), cpu_wait, strict=True)
        },
        "start_concurrency": args.concurrency,
        # CPU ms per start: the starting process, the worker (first tasks), the dev server.
        "start_cpu_ms_per_start": {
            who: round(1000 * cpu / started, 2)
            for who, cpu in zip(("starter", "worker", "server"), cpu_starts, strict=True)
        },
        "slack_before_wake_s": round(asleep_margin, 1),
        "sends_before_wake": sends_before_wake,
        "asleep_before_wake": asleep,
        "sends": len(times),
        "missed": wake - len(times),
        "sent_by_sleepers": by_sleepers,
        "burst_seconds": round(burst, 2),
        # A burst's sends do not start at the wake: the woken journeys' workflow tasks come first.
        "first_send_after_wake_s": round(min(times) - wake_at.timestamp(), 2) if times else None,
        "sends_per_s": round(len(times) / burst, 2) if times and burst > 0 else None,
        "worker_cpu_ms_per_send": round(1000 * cpu_worker / len(times), 1) if times else None,
        "server_cpu_ms_per_send": round(1000 * cpu_server / len(times), 1) if times else None,
        "load_at_wake": load_at_wake,
        "load": _load(),
        "worker_rss_asleep_mib": round(asleep_rss, 1),
        "worker_peak_rss_mib": round(peak, 1),
        "server_rss_asleep_mib": round(server_asleep, 1),
        "server_rss_after_mib": round(server_after, 1),
        "server_db_asleep_mib": round(server_db_asleep, 1) if server_db_asleep is not None else None,
        "server_db_after_mib": round(_file_mib(server_db), 1) if server_db else None,
        "counts": counts,
    }
    print(json.dumps(result), flush=True)
    return result


async def main(args: argparse.Namespace) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    (HERE / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server_db = tmp / "temporal.db" if args.server_db == "file" else None
        # On a file (as bench/broadcast.py): the in-memory store is never trimmed (some
        # 15 GB at 100,000 journeys). WAL without fsync: the file is thrown away after
        # the run, and the default rollback journal makes every start wait for fsyncs.
        on_file = [
            *("--db-filename", str(server_db)),
            *("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=off"),
        ]
        server = await asyncio.create_subprocess_exec(
            binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--log-level", "error", *dev_server_flags(), *(on_file if server_db else []),
            "--dynamic-config-value", "frontend.rps=100000", *args.server_flag,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            database_url = f"sqlite:///{tmp}/sleeping.db"
            settings = Settings(database_url=database_url)
            db = Database.from_settings(settings)
            await migrate(db.engine)
            csv_path = tmp / "customers.csv"
            with csv_path.open("w") as out:
                out.write("id,name,email,marketing_consent\n")
                for i in range(args.n):
                    out.write(f"s-{i},S{i},s{i}@example.com,true\n")
            await import_profiles(db, csv_path)
            await db.dispose()
            client = None
            for _ in range(120):
                try:
                    client = await Client.connect(
                        address, data_converter=data_converter(settings), runtime=quiet_runtime()
                    )
                    break
                except RuntimeError:
                    await asyncio.sleep(0.5)
            assert client is not None, "the dev server did not come up"
            results = {
                name: await side(name, args, address, database_url, tmp, client, server.pid, server_db)
                for name in args.sides
            }
        finally:
            server.terminate()
            await server.wait()
    results_dir = HERE / "results"
    if set(results) != {"raw", "cascade"}:
        print(json.dumps(results))
        # One side alone (a long run split in two): its own file, the pair's left as it was.
        side_name = next(iter(results))
        (results_dir / f"sleeping-{side_name}-{args.n}.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    raw, ours = results["raw"], results["cascade"]
    ratio = (ours["sends_per_s"] / raw["sends_per_s"]) if ours["sends_per_s"] and raw["sends_per_s"] else None
    summary = {
        "n": args.n,
        "wake": args.wake,
        "cache": args.cache or args.n,
        "raw": raw,
        "cascade": ours,
        "burst_ratio": round(ratio, 2) if ratio else None,
    }
    print(
        f"\n{args.n} sleeping journeys, one worker: peak RSS {ours['worker_peak_rss_mib']} MiB "
        f"(raw workflows {raw['worker_peak_rss_mib']} MiB), dev server {ours['server_rss_asleep_mib']} MiB asleep\n"
        f"wake burst: Cascade {ours['sends_per_s']} sends/s, raw timer + activity {raw['sends_per_s']}/s, ratio {ratio}"
    )
    (results_dir / "sleeping.json").write_text(json.dumps(summary, indent=1) + "\n")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="sleeping journeys per side")
    parser.add_argument("--wake", type=int, default=0, help="how many of the n wake together (default: n)")
    parser.add_argument("--cache", type=int, default=0, help="sticky cache size of the worker (default: n)")
    parser.add_argument(
        "--sleep",
        type=float,
        default=0,
        help="seconds from the sleepers' last start until the wake (default: from --wake)",
    )
    parser.add_argument(
        "--server-db",
        choices=["auto", "memory", "file"],
        default="auto",
        help="dev server state in memory or a SQLite file (auto: a file from 10,000 journeys)",
    )
    parser.add_argument(
        "--progress", type=float, default=30, help="print starts and sends every this many s (0: never)"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="starts in flight")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on the burst after this many seconds")
    parser.add_argument(
        "--sides", default="raw,cascade", type=lambda v: v.split(","), help="which sides to run (no ratio unless both)"
    )
    parser.add_argument("--log-level", default="INFO", help="the workers' log level (INFO: a line per send)")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="write each worker's top allocations while asleep (slow)"
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="per send of the burst: workflow tasks, replays, activities, SQL statements; one history of each kind",
    )
    parser.add_argument(
        "--server-flag", action="append", default=[], help="one more dev server argument (repeat it for more)"
    )
    parser.add_argument("--metrics-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["raw", "cascade"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    parser.add_argument("--sent-log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.wake or args.wake > args.n:
        args.wake = args.n
    if args.server_db == "auto":
        args.server_db = "file" if args.n >= 10000 else "memory"
    if not args.sleep:
        # Room for the K wakers' starts and first workflow tasks on a loaded 2-core machine.
        args.sleep = 40 + args.wake / 10
    return args


if __name__ == "__main__":
    parsed = _args()
    asyncio.run(run_worker(parsed) if parsed.role else main(parsed))
