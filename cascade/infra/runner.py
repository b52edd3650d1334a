"""A workflow runner that enters Temporal's sandbox to run workflow code, and only for that.

For every payload list of every activation and completion (an activity's input and
result, a signal, the workflow's result...) the SDK asks the workflow instance which
serialization context applies, so that a context-aware converter or codec can encrypt
per workflow or per activity. A sandboxed instance answers by entering the sandbox:
it compiles and `exec`s a two-line string with the sandbox's importer applied, seven
times per payload list (decode: retrieve, reference, decode; encode: store context,
store, encode, reference). py-spy on `bench/throughput.py --sides cascade` put 21 % of
the event loop's busy time there, more than the workflow code itself.

Cascade's converter (pydantic JSON, AES-GCM with keys by id, no external storage) gives
the same payloads whatever the context: `DataConverter.with_context` returns the
converter itself. `ContextFreeRunner` checks that once, at the worker's start; when it
holds, its instances answer the context questions without entering the sandbox, and
they still run every activation (the workflow code) inside it, unchanged. A converter
that does use the context (a codec keyed per workflow, external payload storage) gets
the sandbox's own answers, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    WorkflowSerializationContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.workflow import Info, _Definition

if TYPE_CHECKING:
    # A private module of the SDK, needed only for the annotation: at run time an SDK
    # that moved it still imports this runner.
    from temporalio.worker._command_aware_visitor import CommandInfo


def context_free(converter: DataConverter) -> bool:
    """True when `converter` encodes and decodes alike in every serialization context.

    Its parts ignore the context (`with_context` gives the converter itself, for a
    workflow's context and an activity's) and it stores no payloads externally (whose
    store context names the workflow).
    """
    if converter.external_storage is not None:
        return False
    samples: list[SerializationContext] = [
        WorkflowSerializationContext(namespace="", workflow_id=""),
        ActivitySerializationContext(
            namespace="",
            workflow_id="",
            workflow_type="",
            activity_id="",
            activity_type="",
            activity_task_queue="",
            is_local=False,
        ),
    ]
    return all(converter.with_context(context) is converter for context in samples)


class ContextFreeRunner(WorkflowRunner):
    """`inner` (the sandboxed runner), without a sandbox entry per payload list for a context-free converter."""

    def __init__(self, inner: WorkflowRunner, converter: DataConverter) -> None:
        self.inner = inner
        self.skip_contexts = context_free(converter)

    def prepare_workflow(self, defn: _Definition) -> None:
        """Validate the definition the way the sandboxed runner does."""
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        """A sandboxed instance; when the converter ignores contexts, one that answers them itself."""
        instance = self.inner.create_instance(det)
        return _ContextFreeInstance(instance) if self.skip_contexts else instance

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        """Pass the worker's failure types on to the sandboxed runner."""
        self.inner.set_worker_level_failure_exception_types(types)


class _ContextFreeInstance(WorkflowInstance):
    """A sandboxed workflow instance whose context answers need no sandbox entry (the converter ignores them)."""

    def __init__(self, inner: WorkflowInstance) -> None:
        self.inner = inner

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        """Run the activation in the sandbox."""
        return self.inner.activate(act)

    def get_serialization_context(self, command_info: CommandInfo | None) -> SerializationContext | None:
        """None: the context-free converter, which is what every context gives (see context_free)."""
        return None

    def get_external_store_context(self, command_info: CommandInfo | None) -> StorageDriverStoreContext:
        """No target: nothing is stored externally (see context_free)."""
        return StorageDriverStoreContext(target=None)

    def get_info(self) -> Info:
        """The workflow's info."""
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        """The thread running the activation (the deadlock detector reads it)."""
        return self.inner.get_thread_id()
