"""`make run` (demo.py) as a supervisor: its children end with it, a taken port is named.

Each test starts the real demo in a subprocess on free ports with its own data folder
(never the fixed 7233/8233/8000 another run may hold), waits until the dev server, worker
and webhooks are up, ends the demo the way a user would, and then looks in /proc for every
process the demo had started.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import ScheduleActionStartWorkflow

from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.infra.temporal import connect
from tests.conftest import quiet_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)"),
]

UP = "are up"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")  # a zombie has ended


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))):
            children.setdefault(found[1], []).append(int(entry.name))
    seen: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _wait_gone(pids: set[int], within: float = 40) -> set[int]:
    deadline = time.monotonic() + within
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


class Demo:
    """demo.py in a subprocess; its stdout read line by line on a thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "demo.py", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]
                self.lines.put(line)
        except (ValueError, OSError):  # the test closed the pipe
            pass

    def wait_for(self, text: str, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while not any(text in line for line in self.seen):
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode}: {self.seen} {self.proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                self.seen.append(self.lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic()))))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"demo never printed {text!r}: {self.seen}") from None


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a demo of its own: free ports, a data folder in tmp_path."""
    data = tmp_path / "data"
    webhooks = quiet_port()
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{quiet_port()}",
        "CASCADE_DEMO_UI_PORT": str(quiet_port()),
        "CASCADE_WEBHOOKS_PORT": str(webhooks),
        "CASCADE_CODEC_SERVER_PORT": str(quiet_port()),
        "CASCADE_PUBLIC_URL": f"http://127.0.0.1:{webhooks}",
        "CASCADE_DEMO_DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite:///{data / 'cascade.db'}",
        # A small simulated history: enough for the console to show weeks, quick to play.
        "CASCADE_DEMO_SIMULATE_CUSTOMERS": "40",
        "CASCADE_DEMO_SIMULATE_WEEKS": "2",
    }


@pytest.fixture
def running_demo(demo_env: dict[str, str]) -> Iterator[tuple[Demo, set[int]]]:
    """A demo whose dev server, worker and webhooks are up, and the pids it started."""
    demo = Demo(demo_env)
    try:
        demo.wait_for(UP)
        started = _descendants(demo.proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in started}
        assert any("start-dev" in n for n in names), names
        assert any("worker.py" in n for n in names), names
        assert any("webhooks.server" in n for n in names), names
        assert any("webhooks.codec_server" in n for n in names), names
        yield demo, started
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
        demo.proc.wait()


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGHUP, 128 + signal.SIGHUP), (signal.SIGINT, 0)],
    ids=["SIGHUP-terminal-closed", "SIGINT-ctrl-c"],
)
def test_the_children_end_with_the_demo_on_a_signal(running_demo, sig, status):
    demo, started = running_demo
    demo.proc.send_signal(sig)
    assert demo.proc.wait(timeout=60) == status
    assert _wait_gone(started) == set()


def test_the_children_end_when_the_reader_of_its_output_goes_away(running_demo):
    """`make run | head -1`: the pipe closes; the demo must not carry on headless."""
    demo, started = running_demo
    assert demo.proc.stdout is not None
    demo.proc.stdout.close()
    assert demo.proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert _wait_gone(started) == set()
    assert "Traceback" not in (demo.proc.stderr.read() if demo.proc.stderr else "")


def _processes_mentioning(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                if text in Path(entry, "cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def test_a_reader_gone_before_the_first_line_stops_the_demo_cleanly(demo_env):
    """`make run | head -1`: make's own echo of the command is the one line head reads, so
    the demo's very first line meets a closed pipe (rich would exit 1 right there)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "demo.py"],
            cwd=PROJECT_ROOT,
            env=demo_env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
        )
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE, done.stderr
    assert "Traceback" not in done.stderr
    assert (Path(demo_env["CASCADE_DEMO_DATA_DIR"]) / "logs" / "temporal.log").exists()  # it had started one
    assert _wait_gone(_processes_mentioning(demo_env["CASCADE_DEMO_DATA_DIR"])) == set()


def test_the_children_end_when_the_demo_is_killed(running_demo):
    """SIGKILL leaves no chance to clean up: the kernel tells each child (PR_SET_PDEATHSIG)."""
    demo, started = running_demo
    demo.proc.kill()
    demo.proc.wait(timeout=10)
    assert _wait_gone(started) == set()


def test_taken_ports_are_named_with_what_to_do_and_nothing_starts(demo_env):
    """An earlier run still holding the ports: the demo says which and stops, instead of
    reusing them while saying "up"."""
    settings = ["TEMPORAL_ADDRESS", "CASCADE_DEMO_UI_PORT", "CASCADE_WEBHOOKS_PORT"]
    ports = {name: int(demo_env[name].rpartition(":")[2]) for name in settings}
    holders = []
    try:
        for port in ports.values():
            holder = socket.socket()
            holders.append(holder)
            holder.bind(("127.0.0.1", port))
            holder.listen()
        done = subprocess.run(
            [sys.executable, "demo.py", "--once"],
            cwd=PROJECT_ROOT,
            env=demo_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for holder in holders:
            holder.close()
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())  # rich may wrap
    for name, port in ports.items():
        assert f"Port {port} on 127.0.0.1 is already in use" in message and f"({name})" in message, message
    assert "ss -ltnp" in message and "--external-temporal" in message
    assert UP not in done.stdout
    assert not (Path(demo_env["CASCADE_DEMO_DATA_DIR"]) / "logs").exists()  # no child was started


def test_only_the_webhooks_port_matters_with_an_external_server(demo_env):
    port = int(demo_env["CASCADE_WEBHOOKS_PORT"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run(
            [sys.executable, "demo.py", "--once", "--external-temporal"],
            cwd=PROJECT_ROOT,
            env=demo_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    message = " ".join(done.stderr.split())
    assert done.returncode == 1 and f"Port {port} on 127.0.0.1" in message, message
    assert "TEMPORAL_ADDRESS)" not in message


async def test_a_running_demo_keeps_segments_and_the_console_current_with_schedules(running_demo):
    # `make run` left running is a shop's stack: the schedules that move customers between
    # segments as time passes and roll up the console's recent days must be there.
    demo, _ = running_demo
    await asyncio.to_thread(demo.wait_for, "Everything keeps running", 600)
    settings = Settings(temporal_address=demo.env["TEMPORAL_ADDRESS"])
    client = await connect(settings)
    for schedule_id, workflow in [
        ("cascade-segment-refresh", "SegmentRefresh"),
        ("cascade-analytics-refresh", "AnalyticsRefresh"),
    ]:
        described = await client.get_schedule_handle(schedule_id).describe()
        assert isinstance(described.schedule.action, ScheduleActionStartWorkflow)
        assert described.schedule.action.workflow == workflow
