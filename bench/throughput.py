"""Journeys per second through the real dev server, against raw Temporal in the same run.

    python bench/throughput.py [-n 1000] [--concurrency 100] [--rounds 1] [--sides raw,cascade] [--counts]

Both sides do the same Temporal work per journey: start, two activities (check + send),
one signal delivered as soon as the message is "sent", completion. Cascade's side runs
the real CascadeJourney with the real activities (SQLite delivery log, sandbox channel);
the raw side is a minimal hand-written workflow whose activities do nothing. The ratio
is what Cascade's bookkeeping costs on top of Temporal itself. Since patch
"local-run-records" Cascade's second activity (the run's finish row) is a local one: a
plain journey takes 2 workflow tasks and 1 queued activity where the raw side, two
regular activities as written by hand, takes 3 and 2 (`--counts` shows both).

`--rounds R` alternates raw and cascade R times (raw first and last: R+1 raw runs, R
cascade runs) and averages each side; `--counts` prints what one journey costs on each
side: its history events by type (workflow tasks, activities, timers, upserts), and the
SQL statements Cascade ran per journey (starter and worker together, one process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.bare_workflow import BareJourney
from bench.procfs import child_pids, cpu_seconds
from cascade.infra.codec import data_converter
from cascade.infra.db import Database, migrate
from cascade.infra.logging import configure_logging
from cascade.infra.settings import Settings
from cascade.profiles.service import upsert_customer
from channels.base import OutboundMessage, SendReceipt
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from models.events import EngagementInput, EngagementType
from models.journey import JourneySpec
from models.profiles import ContactIn, CustomerProfile
from models.search_attributes import ALL
from starter import start_journey
from tests.conftest import binary, quiet_runtime
from worker import build_worker
from workflows.cascade import CascadeJourney

SPEC = JourneySpec.model_validate(
    {
        "name": "bench",
        "steps": [
            {"channel": "email", "wait": "1h", "content": {"subject": "Hi {{ name }}", "body": "Hello {{ name }}"}},
            {"channel": "sms", "wait": "1h", "content": {"body": "Hello {{ name }}"}},
        ],
    }
)


# ---------------------------------------------------------------- raw Temporal baseline
@activity.defn(name="bare_check")
async def bare_check(customer_id: str) -> bool:
    return True


@activity.defn(name="bare_send")
async def bare_send(workflow_id: str) -> str:
    await SENT.put((workflow_id, None))
    return f"msg-{workflow_id}"


# ---------------------------------------------------------------- signalling on send
SENT: asyncio.Queue[tuple[str, int | None]] = asyncio.Queue()


class ReportingSandbox(SandboxChannel):
    """The sandbox channel, telling the bench which journey just got its message."""

    async def send(self, message: OutboundMessage) -> SendReceipt:
        receipt = await super().send(message)
        workflow_id, _, step = message.idempotency_key.rpartition("/")
        await SENT.put((workflow_id.rpartition("/")[0], int(step)))
        return receipt


async def signaller(client: Client, cascade: bool) -> None:
    """Deliver the reaction to each message as soon as it is sent (as a webhook would)."""
    while True:
        workflow_id, step = await SENT.get()
        handle = client.get_workflow_handle(workflow_id)
        if cascade:
            await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=step))
        else:
            await handle.signal(BareJourney.react)


@dataclass
class Run:
    side: str
    journeys: int
    seconds: float
    # One journey's workflow id.
    sample: str = ""
    # CPU seconds per journey: this process (starter, signaller, workers) and the dev server.
    # Less swayed by other work on the machine than the rates are.
    cpu_here: float = 0.0
    cpu_server: float = 0.0
    # Every journey's workflow id, for --counts (not written to the JSON).
    ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.journeys / self.seconds


async def run_side(client: Client, side: str, n: int, concurrency: int, settings: Settings, db: Database) -> Run:
    limit = asyncio.Semaphore(concurrency)
    prefix = f"{side}-{time.monotonic_ns()}"
    ids: list[str] = []

    async def one(i: int) -> None:
        async with limit:
            if side == "cascade":
                handle = await start_journey(f"b-{i}", SPEC, client=client, db=db, settings=settings, key=prefix)
                result = await handle.result()
                assert result.outcome == "reacted", result
                ids.append(handle.id)
            else:
                ids.append(f"bare/{prefix}/{i}")
                await client.execute_workflow(BareJourney.run, f"b-{i}", id=ids[-1], task_queue=settings.task_queue)

    task = asyncio.create_task(signaller(client, side == "cascade"))
    started, here, server = time.perf_counter(), time.process_time(), children_cpu()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    task.cancel()
    return Run(side, n, elapsed, ids[-1], (time.process_time() - here) / n, (children_cpu() - server) / n, ids)


def children_cpu() -> float:
    """CPU seconds used so far by this process's child processes (the dev server)."""
    return sum(cpu_seconds(pid) for pid in child_pids(os.getpid()))


async def history_counts(client: Client, workflow_ids: list[str]) -> dict[str, float]:
    """History events by type (EVENT_TYPE_ prefix dropped), per journey over `workflow_ids`.

    Averaged over every journey of a run, not one: whether the reaction reaches a
    journey before or after its send's result (a timer and a `waiting` upsert, or
    neither) depends on the race between the signaller and the worker.
    """
    total: Counter[str] = Counter()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        total.update(str(event.WhichOneof("attributes")).removesuffix("_event_attributes") for event in history.events)
    return {k: round(v / len(workflow_ids), 2) for k, v in sorted(total.items())}


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="journeys per side")
    parser.add_argument("--concurrency", type=int, default=100, help="journeys in flight")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1, help="cascade runs, each between two raw runs")
    parser.add_argument("--sides", default="raw,cascade", help="raw,cascade (default) or one of them (profiling)")
    parser.add_argument("--counts", action="store_true", help="print history events and SQL statements per journey")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the worker's log level (INFO: a line per send, as in production; the raw side logs nothing)",
    )
    args = parser.parse_args()
    configure_logging(args.log_level, "json")
    sides = args.sides.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db", task_queue="bench")
        db = Database.from_settings(settings)
        await migrate(db.engine)
        customers = max(args.n, args.warmup)
        for i in range(customers):
            contacts = [ContactIn.model_validate({"channel": "email", "address": f"b{i}@example.com"})]
            await upsert_customer(db, CustomerProfile(id=f"b-{i}", name=f"B{i}", contacts=contacts))
        statements: Counter[str] = Counter()

        def _count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            statements[statement.split(None, 1)[0].upper()] += 1

        # The async engine's statements and those of Database.transaction's threads.
        for engine in db.sync_engines():
            event.listen(engine, "before_cursor_execute", _count)

        env = await WorkflowEnvironment.start_local(
            # Encrypted payloads on both sides, as production runs (cascade.infra.codec).
            data_converter=data_converter(settings),
            dev_server_existing_path=binary("temporal"),
            search_attributes=ALL,
            runtime=quiet_runtime(),
        )
        channels = dict(build_channels(settings, db))
        channels["email"] = ReportingSandbox("email", db)
        cascade_worker = build_worker(env.client, settings, db, channels)
        bare_settings = settings.model_copy(update={"task_queue": "bench-bare"})
        bare_worker = Worker(
            env.client, task_queue="bench-bare", workflows=[BareJourney], activities=[bare_check, bare_send]
        )
        side_settings = {"raw": bare_settings, "cascade": settings}
        runs: list[Run] = []
        per_journey: dict[str, dict[str, float]] = {}
        async with cascade_worker, bare_worker:
            for side in sides:
                await run_side(env.client, side, args.warmup, args.concurrency, side_settings[side], db)
            # Alternate the order so neither side always gets the warmer server.
            order = ["raw", "cascade"] * args.rounds + ["raw"]
            for side in (s for s in order if s in sides):
                statements.clear()
                runs.append(await run_side(env.client, side, args.n, args.concurrency, side_settings[side], db))
                print(
                    f"{side:8s} {args.n} journeys in {runs[-1].seconds:6.2f} s = {runs[-1].rate:7.1f}/s"
                    f"  CPU ms/journey: here {runs[-1].cpu_here * 1000:5.1f}, server {runs[-1].cpu_server * 1000:5.1f}"
                    f"  (load {load()})",
                    flush=True,
                )
                if args.counts and side == "cascade":
                    per_journey["sql"] = {k: round(v / args.n, 2) for k, v in sorted(statements.items())}
            if args.counts:
                for side in sides:
                    last = [r for r in runs if r.side == side][-1]
                    per_journey[side] = await history_counts(env.client, last.ids)
                    print(f"{side} history events per journey: {per_journey[side]}")
                if "sql" in per_journey:
                    print(f"cascade SQL statements per journey: {per_journey['sql']}")
        await env.shutdown()
        await db.dispose()

    rates = {side: [r.rate for r in runs if r.side == side] for side in sides}
    mean = {side: sum(v) / len(v) for side, v in rates.items()}
    ratio = mean["cascade"] / mean["raw"] if len(mean) == 2 else None
    print(
        "\n"
        + ", ".join(f"{side} {mean[side]:.1f} journeys/s" for side in sides)
        + (f", ratio {ratio:.2f}" if ratio is not None else "")
        + f" (load {load()})"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(
        json.dumps(
            {
                "n": args.n,
                "log_level": args.log_level,
                "runs": [{k: v for k, v in asdict(r).items() if k != "ids"} for r in runs],
                "ratio": ratio,
                "per_journey": per_journey,
                "load": load(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
