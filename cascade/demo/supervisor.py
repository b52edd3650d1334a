"""The demo's process supervision: its console output, the child processes, the ports.

The children end with the demo however it ends: Ctrl-C, SIGTERM, a closed terminal
(SIGHUP), a reader that went away (`make run | head -1`), or the demo itself killed (on
Linux each child asks the kernel for SIGTERM when its parent dies). A port the stack needs
that is already taken is reported, with what to do, before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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
from typing import IO, Any

import httpx
from rich.console import Console
from temporalio.client import Client

from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.infra.temporal import connect


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


def binary(name: str) -> str:
    """A program installed with the project (temporal), found on PATH or next to this Python."""
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


def taken(port: Port) -> bool:
    """True when something already listens on the port."""
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


def ports(settings: Settings, external_temporal: bool) -> list[Port]:
    """The ports the stack will listen on (none of Temporal's with an external server)."""
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


async def connect_when_up(settings: Settings, stack: Stack, within: float = 60) -> Client:
    """A client once the dev server answers; exits if it died or did not answer `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await connect(settings)
        except RuntimeError:
            stack.check_alive()
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"Temporal did not answer at {settings.temporal_address}") from None
            await asyncio.sleep(0.5)


async def wait_http(url: str, stack: Stack, within: float = 30) -> None:
    """Return once `url` answers 200; exit if a child died or it did not answer in time."""
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


async def server_answers(settings: Settings) -> bool:
    """True when a Temporal server answers at TEMPORAL_ADDRESS within 2 s."""
    try:
        await asyncio.wait_for(connect(settings), timeout=2)
    except (RuntimeError, TimeoutError):
        return False
    return True


async def watch_stdout() -> None:
    """Stop the demo when the reader of its stdout pipe goes away, even while it is quiet."""
    while True:
        if say.reader_left():
            say.lost()  # calls stop() through say.on_gone
            return
        await asyncio.sleep(0.5)
