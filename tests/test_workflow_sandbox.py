"""The worker passes the `workflows` package through Temporal's sandbox (worker.py): what that needs.

A passed-through module is imported once, outside the sandbox, and shared by every
workflow run; so it must keep no mutable module state, and every pydantic model the
workflows build must be complete at import (a model built lazily looks its forward
references up in `sys.modules`, which inside the sandbox lacks the modules imported
outside it: the workflow task then fails on every attempt and the journey hangs;
tests/test_models.py checks every model of the project for that).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import worker
import workflows
import workflows.registry


def _modules(package: ModuleType) -> list[ModuleType]:
    return [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def test_the_worker_passes_the_workflow_modules_through_the_sandbox() -> None:
    runner = worker.WORKFLOW_RUNNER
    assert "workflows" in runner.restrictions.passthrough_modules


def _assigned(module: ModuleType) -> set[str]:
    """The names the module's own top-level statements assign (imported names are other modules' state)."""
    names: set[str] = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("module", _modules(workflows), ids=lambda m: m.__name__)
def test_a_workflow_module_keeps_no_mutable_state(module: ModuleType) -> None:
    mutable = {
        name: type(getattr(module, name)).__name__
        for name in _assigned(module)
        if isinstance(getattr(module, name), list | dict | set | bytearray)
    }
    assert mutable == {}


def test_the_registry_is_a_tuple() -> None:
    assert isinstance(workflows.registry.WORKFLOWS, tuple)
