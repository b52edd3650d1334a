"""The package structure holds: every module imports on its own, and imports point one way.

The layers, top to bottom (a module may import its own layer or any layer below it):
entry points (worker, starter, customers, demo, webhooks, cascade.cli, cascade.demo) -> workflows ->
activities -> channels -> domain services (cascade.<domain>, analytics) -> infrastructure
and wire types (cascade.infra, models). An import inside a function body would hide a
circle from the import graph, so project modules are imported at module level only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.workflow import _Definition

import worker
from models import workflow_types

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "bench", "migrations", "data", "build", "deploy", "journeys", "docs"}
TOP = {"worker", "starter", "customers", "demo", "webhooks", "workflows", "activities", "channels", "cascade"}
TOP |= {"analytics", "models"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] not in TOP or SKIP & set(parts) or ".venv" in parts:
            continue
        name = ".".join(parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def layer(module: str) -> int:
    """The module's layer: higher layers may import lower ones, never the other way."""
    top = module.split(".")[0]
    if module.startswith(("cascade.cli", "cascade.demo")):
        # The CLI and the demo's supervisor are entry points that live in the package.
        return 6
    if top in {"worker", "starter", "customers", "demo", "webhooks"}:
        return 6
    ranks = {"workflows": 5, "activities": 4, "channels": 3, "analytics": 2, "models": 0}
    if top in ranks:
        return ranks[top]
    if module == "cascade.infra" or module.startswith("cascade.infra."):
        return 0
    return 2  # cascade and cascade.<domain>


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function body) for each import."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                names = [f"{base}.{alias.name}" for alias in child.names] + [base]
            for name in names:
                target = _resolve(name)
                if target and target != module:
                    found.append((target, getattr(child, "lineno", 0), in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_modules_found() -> None:
    # The walk must see the whole tree, or the rules below would pass vacuously.
    for expected in ("worker", "workflows.cascade", "activities.journey", "cascade.events.service", "models.tables"):
        assert expected in MODULES
    assert len(MODULES) > 60


def test_every_import_points_down_the_layers() -> None:
    upward = []
    for module, path in MODULES.items():
        for target, line, _ in _imports(module, ast.parse(path.read_text(), str(path))):
            if layer(target) > layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line} {module} -> {target}")
    assert upward == []


def test_no_project_import_inside_a_function() -> None:
    hidden = []
    for module, path in MODULES.items():
        for target, line, in_function in _imports(module, ast.parse(path.read_text(), str(path))):
            if in_function:
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert hidden == []


def test_domain_never_imports_workflows_activities_or_entry_points() -> None:
    forbidden = ("workflows", "activities", "starter", "webhooks", "worker", "customers", "demo", "cascade.cli")
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith(("cascade.", "models", "analytics")) or module.startswith(
            ("cascade.cli", "cascade.demo")
        ):
            continue
        for target, line, _ in _imports(module, ast.parse(path.read_text(), str(path))):
            if target.startswith(forbidden):
                offenders.append(f"{path.relative_to(ROOT)}:{line} -> {target}")
    assert offenders == []


def test_the_layer_rule_catches_an_upward_import() -> None:
    # The checker itself: a domain module importing a workflow is found and ranked upward.
    tree = ast.parse("from workflows.cascade import CascadeJourney\ndef f():\n    import activities.journey\n")
    found = _imports("cascade.events.service", tree)
    assert ("workflows.cascade", 1, False) in found and ("activities.journey", 3, True) in found
    assert layer("workflows.cascade") > layer("cascade.events.service")


# One child process imports third-party libraries once, then forks a fresh child per project
# module: each child starts with no project module loaded, so an import that only works after
# another project module was imported first (an order dependency or a circle) fails there.
# The children run a few at a time (one per core): each spends most of its life reading and
# compiling files, so one after another kept all but one core idle.
_ISOLATED = """
import os, sys, importlib, traceback
import pydantic, sqlmodel, sqlalchemy, temporalio.workflow, temporalio.client, jinja2, fastapi, structlog, yaml
names = sys.argv[1:]
loaded = [m for m in sys.modules if m.split('.')[0] in {tops!r}]
assert not loaded, loaded
at_once = max(2, os.cpu_count() or 2)
running = {{}}
failed = 0

def reap():
    global failed
    pid, status = os.wait()
    name = running.pop(pid)
    if status != 0:
        print('FAILED', name, flush=True)
        failed += 1

for name in names:
    while len(running) >= at_once:
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            # One write per traceback, so those of children failing together do not interleave.
            os.write(2, ('--- ' + name + '\\n' + traceback.format_exc()).encode())
            os._exit(1)
        os._exit(0)
    running[pid] = name
while running:
    reap()
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = sorted(MODULES)
    script = _ISOLATED.format(tops=sorted(TOP))
    result = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]


def test_workflow_type_names_match_the_registered_classes() -> None:
    registered = {_Definition.must_from_class(cls).name for cls in worker.WORKFLOWS}
    named = {
        workflow_types.CASCADE_JOURNEY,
        workflow_types.LOYALTY_LOOP,
        workflow_types.BIRTHDAY_SCAN,
        workflow_types.WINBACK_SCAN,
        workflow_types.BROADCAST_WORKFLOW,
        workflow_types.SEGMENT_REFRESH,
        workflow_types.ANALYTICS_REFRESH,
    }
    assert named == registered
