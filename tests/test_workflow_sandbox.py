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
import dataclasses
import importlib
import inspect
import pkgutil
import uuid
from collections.abc import Sequence
from types import ModuleType

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import PayloadCodec, SerializationContext, WithSerializationContext
from temporalio.worker import Worker

import worker
import workflows
import workflows.registry
from cascade.infra.db import Database
from cascade.infra.runner import ContextFreeRunner, context_free
from cascade.infra.settings import Settings
from tests.codec import CODEC_CONVERTER
from tests.doubles.sandbox_probe import WhereItRuns
from worker import build_worker


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


# ---------------------------------------------------------------- the runner (cascade/infra/runner.py)
class _PerWorkflowCodec(PayloadCodec, WithSerializationContext):
    """A codec that would encrypt per workflow: the context matters to it."""

    def __init__(self, workflow_id: str = "") -> None:
        self.workflow_id = workflow_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    def with_context(self, context: SerializationContext) -> _PerWorkflowCodec:
        return _PerWorkflowCodec(getattr(context, "workflow_id", ""))


def test_the_project_converter_ignores_the_serialization_context() -> None:
    assert context_free(CODEC_CONVERTER)
    assert ContextFreeRunner(worker.WORKFLOW_RUNNER, CODEC_CONVERTER).skip_contexts


def test_a_converter_that_uses_the_context_gets_the_sandbox_answers() -> None:
    converter = dataclasses.replace(CODEC_CONVERTER, payload_codec=_PerWorkflowCodec())
    assert not context_free(converter)
    assert not ContextFreeRunner(worker.WORKFLOW_RUNNER, converter).skip_contexts


async def test_the_main_worker_skips_the_context_entries_and_runs_workflow_code_in_the_sandbox(
    client: Client, settings: Settings, db: Database
) -> None:
    main = build_worker(client, settings, db, channels={}).workers[0]
    runner = main.config().get("workflow_runner")
    assert isinstance(runner, ContextFreeRunner) and runner.skip_contexts
    queue = f"sandbox-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[WhereItRuns], workflow_runner=runner):
        inside = await client.execute_workflow(WhereItRuns.run, id=f"where-{uuid.uuid4()}", task_queue=queue)
    assert inside is True
