"""Every command README.md shows is run here against a real `make run` demo, or is listed in
ALLOWED with the reason it is not (and where else it runs), so the README cannot go stale.

The walkthrough's commands run in README order against the demo's own stack (dev server,
worker, webhooks, the six sample customers) on free ports: `.venv/bin/cascade` becomes
`python -m cascade.cli` with the demo's environment.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cascade.infra.settings import PROJECT_ROOT
from tests.test_demo import Demo, demo_env  # noqa: F401  (demo_env is a fixture)

README = PROJECT_ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

# Not run by this test: the prefix of the command, and why (with where it does run).
ALLOWED = {
    "make run": ".ci/run runs `make run-once` (the same demo, exiting at the end); the walkthrough below runs it too",
    "make test": ".ci/run runs it",
    "temporal workflow list --query": "the Temporal CLI's; its query runs on the dev server in "
    "tests/test_search_attributes.py::test_every_query_the_readme_shows_runs_on_the_dev_server",
    ".venv/bin/cascade customers import customers.csv": "needs the reader's own file; the same command runs on "
    "written files in tests/test_cli.py and tests/test_import.py::test_cli_imports_exports_and_erases",
    ".venv/bin/cascade customers import big.jsonl": "as above (the importer's --skip-invalid path runs in "
    "tests/test_import.py)",
    "curl -X POST localhost:8000/v1/events": "curl is not a project dependency; the same authenticated POST "
    "/v1/events runs in tests/test_webhooks_events.py",
    "curl -X POST localhost:8000/v1/engagement": "the demo posts its reactions to /v1/engagement (cascade.simulator) "
    "in the walkthrough run below; a message id is only known at run time",
    "CASCADE_CHANNEL_": "provider settings for real accounts (credentials, internet), not commands",
}


def readme_commands(text: str) -> list[str]:
    """Commands in bash blocks (one per line, `\\` and open quotes continue it, comments
    dropped), and `$ `-prefixed lines of other blocks."""
    found: list[str] = []
    for lang, body in _FENCE.findall(text):
        if lang not in ("bash", ""):
            continue
        pending = ""
        for raw in body.splitlines():
            line = raw.strip()
            if lang == "" and not pending:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not pending and (not line or line.startswith("#")):
                continue
            pending = f"{pending} {line}".strip() if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            try:
                lexer = shlex.shlex(pending, posix=True, punctuation_chars=False)
                lexer.whitespace_split = True
                lexer.commenters = "#"
                words = list(lexer)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            command = _strip_comment(pending) if words else ""
            if command:
                found.append(command)
            pending = ""
    return found


def _strip_comment(line: str) -> str:
    # A `  # ...` after the command, outside quotes (the README aligns them with spaces).
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line


def _walkthrough(commands: list[str]) -> list[str]:
    return [c for c in commands if not any(c.startswith(prefix) for prefix in ALLOWED)]


def test_the_extraction_finds_commands_joins_continuations_and_drops_comments():
    text = (
        "```bash\nmake run   # all\n# a comment\ncurl -X POST x \\\n  -d '{\"a\":\n 1}'\n```\n"
        "```\n$ .venv/bin/cascade channels status   # exits 1\nnot a command\n```\n"
        "```python\nimport os\n```\n"
    )
    assert readme_commands(text) == ["make run", "curl -X POST x -d '{\"a\": 1}'", ".venv/bin/cascade channels status"]


def test_every_allowed_command_is_still_in_the_readme_and_every_other_one_is_a_cascade_command():
    commands = readme_commands(README.read_text())
    for prefix in ALLOWED:
        assert any(c.startswith(prefix) for c in commands), f"ALLOWED entry {prefix!r} is not in README.md any more"
    walkthrough = _walkthrough(commands)
    assert len(walkthrough) >= 10, walkthrough
    for command in walkthrough:
        # Only what this test can run: the project's own tool (KEY=$(...) assigns its output).
        assert re.match(r"(KEY=\$\()?\.venv/bin/cascade ", command), (
            f"README command neither run nor allowed: {command}"
        )


# What a command's output must show; status after the cancel must show the cancel and its reason.
EXPECT = {
    ".venv/bin/cascade journeys list --customer c-1002": ["journey/demo/c-1002"],
    ".venv/bin/cascade journeys status journey/demo/c-1002": ["clicked"],
    ".venv/bin/cascade customers show c-1005": ["bounced"],
    ".venv/bin/cascade journeys validate": ["abandoned_cart"],
    ".venv/bin/cascade journeys show abandoned_cart": ["cart_abandoned", "estimated cost"],
    ".venv/bin/cascade events send c-1003 cart_abandoned --prop cart_id=981 --prop cart_value=120": [
        "journey/abandoned_cart/c-1003/981"
    ],
    ".venv/bin/cascade journeys status journey/abandoned_cart/c-1003/981": ["journey/abandoned_cart/c-1003/981"],
    '.venv/bin/cascade journeys cancel journey/abandoned_cart/c-1003/981 --reason "asked by support"': ["cancel sent"],
    ".venv/bin/cascade journeys start c-1001 welcome": ["journey/welcome/c-1001"],
    ".venv/bin/cascade channels status": ["email"],
    "KEY=$(.venv/bin/cascade keys create --tenant shop1 --name backend)": ["csk_"],
    ".venv/bin/cascade customers export c-1001 > c-1001.json": ['"c-1001"'],
    ".venv/bin/cascade customers erase c-1001 --yes": ["erased"],
}


def _run(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    command = command.removeprefix("KEY=$(").removesuffix(")")
    words = shlex.split(command)
    target = None
    if ">" in words:
        at = words.index(">")
        words, target = words[:at], cwd / words[at + 1]
    assert words[0] == ".venv/bin/cascade", command
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli", *words[1:]],
        cwd=PROJECT_ROOT,
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if target is not None:
        target.write_text(done.stdout)
    return done.returncode, done.stdout + done.stderr


def _until(command: str, env: dict[str, str], cwd: Path, expected: list[str], within: float = 60) -> str:
    """Run until the output shows what it should (visibility and signals settle in a moment)."""
    deadline = time.monotonic() + within
    first: str | None = None
    while True:
        status, output = _run(command, env, cwd)
        if status == 0 and all(text in output for text in expected):
            return output
        # A retry can fail for another reason than the first try did: show both.
        first = first if first is not None else f"first try: exit {status}\n{output}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{command}: exit {status}, expected {expected}:\n{output}\n{first}")
        time.sleep(0.5)


def _the_console_shows_the_simulated_history(demo: Demo, env: dict[str, str]) -> None:
    """The console the demo points to opens with its key and shows the simulated weeks,
    the same numbers as the delivery log."""
    line = next(line for line in demo.seen if line.startswith("Console:"))
    found = re.search(r"Console: (\S+)\s+\(log in with the API key (\S+)\)", line)
    assert found, line
    url, key = found.groups()
    database = Path(env["CASCADE_DEMO_DATA_DIR"]) / "cascade.db"
    with sqlite3.connect(database) as conn:
        sent, simulated, first, last = conn.execute(
            "SELECT count(*), sum(customer_id LIKE 'sim-%'), min(created_at), max(created_at) FROM deliveries "
            "WHERE status IN ('sent', 'delivered', 'opened', 'clicked', 'unknown')"
        ).fetchone()
    assert simulated > 0 and sent > simulated  # the simulated customers' and the example journeys'
    # Weeks of history, not one burst: the simulated clock's dates.
    assert datetime.fromisoformat(last) - datetime.fromisoformat(first) > timedelta(days=7)
    page = httpx.get(f"{url}?days=90", headers={"X-API-Key": key}, timeout=60)
    assert page.status_code == 200, page.text[:500]
    shown = re.search(r'id="sent">(\d+)<', page.text)
    assert shown and int(shown.group(1)) == sent, (shown and shown.group(0), sent)
    assert "winback" in page.text and "abandoned_cart" in page.text


@pytest.mark.integration
def test_the_walkthrough_and_the_demos_closing_hint_work_after_make_run(demo_env, tmp_path):  # noqa: F811
    commands = _walkthrough(readme_commands(README.read_text()))
    demo = Demo(demo_env)
    try:
        demo.wait_for("Everything keeps running", within=240)
        hint = next(line for line in demo.seen if line.startswith("CLI:"))
        for command in hint.removeprefix("CLI:").split("|"):
            _until(command.strip(), demo_env, tmp_path, ["c-1002"])
        _the_console_shows_the_simulated_history(demo, demo_env)
        # The demo's JSON logs start with the worker's own lines, not alembic's.
        first = (Path(demo_env["CASCADE_DEMO_DATA_DIR"]) / "logs" / "worker.log").read_text().splitlines()[0]
        assert "alembic" not in first, first

        for command in commands:
            _until(command, demo_env, tmp_path, EXPECT.get(command, []))
        cancelled = _until(
            ".venv/bin/cascade journeys status journey/abandoned_cart/c-1003/981",
            demo_env,
            tmp_path,
            ["cancelled", "reason: asked by support"],
        )
        assert "Traceback" not in cancelled
        assert set(EXPECT) <= set(commands), set(EXPECT) - set(commands)
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(2)  # Ctrl-C, as a user ends `make run`
            try:
                demo.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.proc.kill()
                demo.proc.wait()
