"""`docker compose up` without a Docker engine: the image and the compose file, checked by
running what they would run.

There is no Docker engine here, so the image is simulated as faithfully as it can be
without one: the build context is the project filtered by .dockerignore (Docker's
matching rules), the Dockerfile's WORKDIR and COPY instructions are replayed into a temp
folder, `pip install --no-deps .` is run on it, and then every entry point the Dockerfile
and the compose file name is started *from that folder* against the real dev server, with
the project's own checkout hidden from Python. A file an entry point needs that the image
lacks (migrations/, alembic.ini, customers.py, ...) fails here, as it would crash-loop the
container. What cannot be checked without Docker: that the images pull and that the
containers reach each other.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database, async_url
from cascade.infra.settings import PROJECT_ROOT, Settings
from channels.base import OutboundMessage
from channels.registry import build_channels, close_channels
from models import search_attributes as sa
from tests.conftest import quiet_port, start_dev_server
from tests.doubles.smtp import SmtpDouble, free_port

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _built(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this project's Dockerfile."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


# --- the build context: Docker's .dockerignore rules ------------------------------------


def _pattern(raw: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated paths (Go filepath.Match
    plus `**` for any number of folders), after Docker's own clean-up of the pattern."""
    pattern = os.path.normpath(raw.strip()).lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line[1:] if negated else line)))
    return rules


def _excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker: the last rule matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, rule in rules:
        if any(rule.fullmatch(p) for p in prefixes):
            verdict = not negated
    return verdict


def context_files(root: Path = PROJECT_ROOT, extra_ignores: str = "") -> list[str]:
    """The files `docker build .` would send, relative to the project."""
    rules = _rules((root / ".dockerignore").read_text() + "\n" + extra_ignores)
    can_prune = not any(negated for negated, _ in rules)
    kept: list[str] = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        if can_prune:
            dirs[:] = [d for d in dirs if not _excluded(rel + d, rules)]
        kept += [rel + f for f in files if not _excluded(rel + f, rules)]
    return sorted(kept)


def test_dockerignore_rules_follow_docker():
    rules = _rules("**/__pycache__\n.venv\ndocs/*.md\n!docs/keep.md\n")
    assert _excluded("cascade/__pycache__/db.pyc", rules) and _excluded("__pycache__/x.pyc", rules)
    assert _excluded(".venv/bin/python", rules) and not _excluded("core/venv.py", rules)
    assert _excluded("docs/a.md", rules) and not _excluded("docs/keep.md", rules)


def test_the_context_has_what_the_entry_points_read_and_nothing_private():
    files = set(context_files())
    for needed in ("alembic.ini", "customers.py", "worker.py", "migrations/env.py", "journeys/demo.yaml"):
        assert needed in files, f"{needed} is not in the build context"
    assert any(f.startswith("migrations/versions/") for f in files)
    top = {f.split("/")[0] for f in files}
    assert top.isdisjoint({".venv", "data", ".git", ".env", "tests", "bench"}), top
    assert not any("__pycache__" in f.split("/") for f in files)


# --- the image: the Dockerfile replayed ----------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def build_image_tree(target: Path, extra_ignores: str = "") -> tuple[Path, list[str]]:
    """Replay WORKDIR and COPY into `target`; returns (the workdir in it, the CMD)."""
    context = context_files(extra_ignores=extra_ignores)
    workdir = "/"
    cmd: list[str] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "WORKDIR":
            workdir = str(Path(workdir, args))
        elif keyword == "CMD":
            cmd = yaml.safe_load(args)  # the JSON (exec) form
        elif keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, dest = words
            assert not any(w.startswith("--from") for w in shlex.split(args)), "multi-stage COPY: extend this replay"
            into = target / Path(workdir, dest).relative_to("/")
            for source in sources:
                source = os.path.normpath(source)
                for rel in context:
                    if source == ".":
                        out = into / rel
                    elif rel == source:
                        out = into / Path(rel).name if dest.endswith("/") or len(sources) > 1 else into
                    elif rel.startswith(source + "/"):
                        out = into / rel[len(source) + 1 :]
                    else:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(PROJECT_ROOT / rel, out)
    return target / Path(workdir).relative_to("/"), cmd


# Runs an entry point as the container would: from the image's workdir (first on the path,
# as `python worker.py` and `python -m ...` put it there), without the editable install
# that maps imports to this checkout. The image's site-packages copy of the project
# (`pip install --no-deps .`) is left out: the workdir shadows it, and what matters is
# that the workdir has everything.
BOOT = """
import os, runpy, sys
root, mode, target, *argv = sys.argv[1:]
sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p not in ("", root) and "__editable__" not in p]
sys.path_importer_cache.clear()
sys.path.insert(0, os.getcwd())
sys.argv = [target, *argv]
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
elif mode == "-c":
    exec(compile(target, "<check>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_path(target, run_name="__main__")
"""


def _booted(command: list[str]) -> list[str]:
    assert command[0] == "python", command
    mode, target, *rest = command[1:] if command[1] in ("-m", "-c") else ["run", *command[1:]]
    return [sys.executable, "-c", BOOT, str(PROJECT_ROOT), mode, target, *rest]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(workdir, CMD) of the simulated image."""
    return build_image_tree(tmp_path_factory.mktemp("image"))


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE_", "PYTHONPATH")) and k != "DATABASE_URL"}
    return {**env, **overrides}


def _top_packages(project: dict[str, Any]) -> list[str]:
    """The top-level packages setuptools' package finder installs (its `include` patterns)."""
    return [pattern.removesuffix("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]]


def test_the_dockerfile_installs_the_project_from_the_copied_context(image):
    steps = _instructions(DOCKERFILE.read_text())
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert ". ." in copies, "the image must get the whole (filtered) context"
    assert any(keyword == "RUN" and re.search(r"pip install --no-deps \.(\s|$)", args) for keyword, args in steps)
    # What `pip install --no-deps .` reads from the workdir: setuptools stops on a missing
    # package folder, but only warns about a missing module (customers.py was one).
    app, _ = image
    project = tomllib.loads((app / "pyproject.toml").read_text())
    assert (app / project["project"]["readme"]).exists()
    for package in _top_packages(project):
        assert (app / package / "__init__.py").exists(), package
    for module in project["tool"]["setuptools"]["py-modules"]:
        assert (app / f"{module}.py").exists(), module


def _import_everything(app: Path) -> subprocess.CompletedProcess[str]:
    """Import every module of the project from the image's workdir, in a subprocess."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    names = list(project["tool"]["setuptools"]["py-modules"])
    for package in _top_packages(project):
        names += [
            ".".join(p.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted((PROJECT_ROOT / package).rglob("*.py"))
        ]
    check = (
        "import importlib, pathlib\n"
        f"names = {names!r}\n"
        "for name in names:\n"
        "    module = importlib.import_module(name)\n"
        "    assert pathlib.Path(module.__file__).is_relative_to(pathlib.Path.cwd()), (name, module.__file__)\n"
        "print(len(names))\n"
    )
    return subprocess.run(
        _booted(["python", "-c", check]), cwd=app, env=_env(), capture_output=True, text=True, timeout=120
    )


def _alembic(app: Path, database: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _booted(["python", "-m", "alembic", "upgrade", "head"]),
        cwd=app,
        env=_env(DATABASE_URL=f"sqlite:///{database}"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_project_module_imports_from_the_image(image):
    done = _import_everything(image[0])
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 20


def test_alembic_upgrades_a_database_from_the_image(image, tmp_path):
    done = _alembic(image[0], tmp_path / "image.db")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "image.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version", "customers", "deliveries"} <= tables, tables


def test_a_file_the_image_lacks_fails_these_checks(tmp_path):
    """The checks can fail: the image of a context without a project module (starter.py)
    and migrations/ is caught."""
    app, _ = build_image_tree(tmp_path / "fs", extra_ignores="starter.py\nmigrations\nalembic.ini\n")
    imported = _import_everything(app)
    assert imported.returncode != 0 and "starter" in imported.stderr
    migrated = _alembic(app, tmp_path / "x.db")
    assert migrated.returncode != 0


def _entry_points(compose: dict[str, Any], cmd: list[str]) -> dict[str, list[str]]:
    points = {"Dockerfile CMD": cmd}
    points.update({name: service["command"] for name, service in _built(compose).items()})
    return points


async def _wait_ready(
    proc: asyncio.subprocess.Process, output: list[str], ready: str | None, url: str | None, within: float = 90
) -> None:
    assert proc.stdout is not None
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient() as http:
        while asyncio.get_running_loop().time() < deadline:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=0.5)
            except TimeoutError:
                line = b""
            if line:
                output.append(line.decode(errors="replace"))
            elif proc.returncode is not None or proc.stdout.at_eof():
                await proc.wait()
                raise AssertionError(f"exited {proc.returncode} before it was up:\n{''.join(output)}")
            if ready and any(ready in o for o in output):
                return
            if url:
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
    raise AssertionError(f"not up within {within} s:\n{''.join(output)}")


@pytest.fixture(scope="module", name="dev_server")
async def own_dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server for this module only: the worker checks at start-up that its keys read the
    namespace's latest payloads, and on the session's shared server those may be another
    test's, encrypted with the dev key the compose environment does not hold."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


async def test_every_entry_point_starts_from_the_image(compose, image, dev_server: WorkflowEnvironment, tmp_path):
    """Each command (Dockerfile CMD, compose `command`) runs with its compose environment;
    only the addresses that exist inside the compose network are pointed at local ones."""
    app, cmd = image
    points = _entry_points(compose, cmd)
    assert set(points) >= {"Dockerfile CMD", "worker", "webhooks"}
    for name, command in points.items():
        service = _built(compose).get(name, _built(compose)["worker"])
        port = quiet_port()
        local = {
            "TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'compose.db'}",
            "CASCADE_TASK_QUEUE": f"compose-{name.replace(' ', '-')}",
            "CASCADE_WEBHOOKS_HOST": "127.0.0.1",
            "CASCADE_WEBHOOKS_PORT": str(port),
            "CASCADE_CODEC_SERVER_HOST": "127.0.0.1",
            "CASCADE_CODEC_SERVER_PORT": str(port),
            "CASCADE_SMTP__HOST": "127.0.0.1",
            "CASCADE_SMTP__PORT": str(free_port()),
        }
        env = _env(**{**{k: str(v) for k, v in service["environment"].items()}, **local})
        if command[1:] == ["worker.py"]:
            ready, url = "worker.started", None
        elif command[1:] in (["-m", "webhooks.server"], ["-m", "webhooks.codec_server"]):
            ready, url = None, f"http://127.0.0.1:{port}/healthz"
        else:
            raise AssertionError(f"{name} runs {command}: teach this test how to tell it is up")
        proc = await asyncio.create_subprocess_exec(
            *_booted(command),
            cwd=app,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output: list[str] = []
        try:
            await _wait_ready(proc, output, ready, url)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                rest, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
                output.append(rest.decode(errors="replace"))
        text = "".join(output)
        if url:
            # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
            assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text
        else:
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{text}"
        assert "Traceback" not in text, text


# --- the compose file ----------------------------------------------------------------------


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {d: v["condition"] for d, v in deps.items()}


def test_dependencies_name_services_that_exist_and_one_shot_jobs_are_waited_for(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep in _depends(service):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert _depends(services["temporal"])["temporal-schema"] == "service_completed_successfully"
    for ours in ("worker", "webhooks"):
        assert _depends(services[ours])["temporal-setup"] == "service_completed_successfully"


def test_temporal_runs_as_recommended_without_auto_setup(compose):
    images = {name: s.get("image", "") for name, s in compose["services"].items()}
    assert not any("auto-setup" in image for image in images.values()), images
    server = images["temporal"]
    tools = images["temporal-schema"]
    assert server.startswith("temporalio/server:") and tools.startswith("temporalio/admin-tools:")
    assert server.split(":")[1] == tools.split(":")[1], "server and admin-tools must share a version"
    assert images["temporal-setup"] == tools


def _script(service: dict[str, Any]) -> Path:
    """The file a one-shot job runs, found through its bind mount."""
    entry = service["entrypoint"]
    inside = Path(entry[-1])
    for volume in service["volumes"]:
        source, target, *_ = str(volume).split(":")
        if inside.is_relative_to(target):
            found: Path = PROJECT_ROOT / source / inside.relative_to(target)
            return found
    raise AssertionError(f"{entry} is not in a mounted folder")


def test_one_shot_scripts_exist_and_parse(compose):
    for name in ("temporal-schema", "temporal-setup"):
        script = _script(compose["services"][name])
        assert script.exists(), script
        assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    mounted = compose["services"]["temporal"]["volumes"][0].split(":")[0]
    assert (PROJECT_ROOT / mounted).exists()


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}\n')
    tool.chmod(0o755)


def test_the_schema_job_is_safe_to_run_on_every_up(compose, tmp_path):
    """Run the schema script twice with a stand-in temporal-sql-tool that behaves like the
    real one on a kept volume (its `create` fails with "already exists" the second time).
    This checks our shell logic and the calls it makes, not Temporal's tool itself."""
    bin_dir, made = tmp_path / "bin", tmp_path / "made"
    bin_dir.mkdir()
    made.mkdir()
    _fake_tool(
        bin_dir,
        "temporal-sql-tool",
        'if [ "$3" = create ]; then\n'
        '  [ -e "$MADE/$2" ] && { echo "pq: database \\"$2\\" already exists" >&2; exit 1; }\n'
        '  touch "$MADE/$2"\nfi\nexit 0',
    )
    service = compose["services"]["temporal-schema"]
    env = {
        **{k: str(v) for k, v in service["environment"].items()},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "MADE": str(made),
    }
    for run in (1, 2):
        done = subprocess.run(["sh", str(_script(service))], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"run {run}: {done.stderr}"
    calls = (tmp_path / "calls").read_text().splitlines()
    once = [
        "temporal-sql-tool --db temporal create",
        "temporal-sql-tool --db temporal setup-schema -v 0.0",
        "temporal-sql-tool --db temporal update-schema -d /etc/temporal/schema/postgresql/v12/temporal/versioned",
        "temporal-sql-tool --db temporal_visibility create",
        "temporal-sql-tool --db temporal_visibility setup-schema -v 0.0",
        "temporal-sql-tool --db temporal_visibility update-schema "
        "-d /etc/temporal/schema/postgresql/v12/visibility/versioned",
    ]
    assert calls == once + once

    _fake_tool(bin_dir, "temporal-sql-tool", 'echo "pq: password authentication failed" >&2; exit 1')
    failed = subprocess.run(["sh", str(_script(service))], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "password authentication failed" in failed.stderr


def test_the_setup_job_registers_every_search_attribute_the_code_needs(compose):
    service = compose["services"]["temporal-setup"]
    registered = service["environment"]["SEARCH_ATTRIBUTES"].split()
    assert sorted(registered) == sorted(f"{k.name}={sa.type_name(k)}" for k in sa.REGISTERED)


def test_environment_names_are_settings_the_code_reads(compose):
    known = {"TEMPORAL_ADDRESS", "DATABASE_URL"}
    for name, field in Settings.model_fields.items():
        known.add(f"CASCADE_{name.upper()}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            known |= {f"CASCADE_{name.upper()}__{sub.upper()}" for sub in field.annotation.model_fields}
    for name, service in _built(compose).items():
        env = service["environment"]
        assert set(env) <= known, (name, set(env) - known)
        assert async_url(env["DATABASE_URL"]).startswith("postgresql+asyncpg://")
        # Read as the containers read them: from the environment (JSON values included).
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, str(value))
            Settings()


class _Catcher(SmtpDouble):
    """Mailpit's SMTP side as the worker meets it: plain, no TLS, no login."""


@pytest.fixture
def mail_catcher() -> Iterator[tuple[_Catcher, int]]:
    catcher, port = _Catcher(), free_port()
    controller = Controller(catcher, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield catcher, port
    finally:
        controller.stop()


async def test_the_worker_sends_email_to_the_mail_catcher(compose, mail_catcher, db: Database, monkeypatch):
    """The compose file's email settings, as the worker reads them from its environment,
    deliver to a plain SMTP server like Mailpit's (only the address is local here)."""
    worker = compose["services"]["worker"]
    catcher_service = worker["environment"]["CASCADE_SMTP__HOST"]
    assert catcher_service in compose["services"]
    assert "mailpit" in compose["services"][catcher_service]["image"]
    exposed = {p.split(":")[-1].split()[0] for p in compose["services"][catcher_service]["ports"]}
    assert worker["environment"]["CASCADE_SMTP__PORT"] in exposed
    assert catcher_service in _depends(worker)

    catcher, port = mail_catcher
    for key, value in worker["environment"].items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("CASCADE_SMTP__HOST", "127.0.0.1")
    monkeypatch.setenv("CASCADE_SMTP__PORT", str(port))
    settings = Settings()
    assert settings.channel_email == "smtp"
    channels = build_channels(settings, db)
    try:
        receipt = await channels["email"].send(
            OutboundMessage(
                channel="email", to="ann@example.com", subject="Hi", body="Hello", idempotency_key="compose/1"
            )
        )
    finally:
        await close_channels(channels)
    assert receipt.provider_message_id
    [message] = catcher.messages
    assert message["To"] == "ann@example.com" and message["Subject"] == "Hi"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose CLI not installed here; the structural checks above still ran",
)
def test_docker_compose_config_accepts_it():
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=COMPOSE.parent,
    )
    assert result.returncode == 0, result.stderr
