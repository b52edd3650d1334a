"""Connecting to Temporal the same way everywhere (pydantic payloads, encrypted, one namespace)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from cascade.infra.codec import CodecError, EncryptionCodec, data_converter, is_encrypted, uses_dev_key
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from models import search_attributes as sa


async def connect(settings: Settings, check_keys: bool = True, warn_dev_key: bool = False) -> Client:
    """A client for the configured server and namespace, speaking encrypted pydantic payloads.

    Misconfigured keys fail here (CodecError naming the setting), and so does a key that
    cannot decrypt the namespace's latest workflows (see check_codec_keys): before any
    worker or service runs with it. Long-running services pass `warn_dev_key` so their logs
    say when the public development key is in use; a CLI command keeps its output clean.
    """
    converter = data_converter(settings)
    if warn_dev_key and uses_dev_key(settings):
        get_logger("temporal").warning(
            "codec.dev_key",
            detail="CASCADE_CODEC_KEYS holds the public dev-only key: anyone can decrypt those histories",
        )
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
    )
    if check_keys:
        await check_codec_keys(client)
    return client


async def check_codec_keys(client: Client, sample: int = 5, query: str | None = None) -> int:
    """Decrypt the inputs of the namespace's `sample` latest running workflows (those also
    matching `query`); how many of them were encrypted.

    A key id missing from the keyring, or a different key under a known id, raises a
    CodecError naming the workflow and the key id: a worker started with it would fail
    every task of those journeys. A server without visibility listing (the test server)
    is not checked.
    """
    running = 'ExecutionStatus = "Running"'
    query = f"{running} AND ({query})" if query else running
    codec = client.data_converter.payload_codec
    if not isinstance(codec, EncryptionCodec):
        return 0
    checked = 0
    try:
        async for execution in client.list_workflows(query, limit=sample):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            for event in history.events[:1]:
                if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                    continue
                started = event.workflow_execution_started_event_attributes
                payloads = [p for p in started.input.payloads if is_encrypted(p)]
                try:
                    await codec.decode(payloads)
                except CodecError as exc:
                    raise type(exc)(f"workflow {execution.id!r}: {exc}") from None
                checked += bool(payloads)
    except RPCError as exc:
        if exc.status not in (RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.NOT_FOUND):
            raise
    return checked


def quote(value: str) -> str:
    """A string literal for a visibility query (`CustomerId = "..."`)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def register_search_attributes(client: Client) -> None:
    """Register the journey search attributes on the client's namespace (idempotent).

    The dev server gets them from `--search-attribute` flags; this covers the test
    server and a server someone else started.
    """
    wanted = {k.name: k.indexed_value_type for k in sa.ALL}
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        known = set(existing.custom_attributes) | set(existing.system_attributes)
        wanted = {name: kind for name, kind in wanted.items() if name not in known}
    except RPCError as exc:
        # The time-skipping test server can add search attributes but not list them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
    if wanted:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=wanted)  # type: ignore[arg-type]
            )
        except RPCError as exc:
            # Without a listing (test server) a second registration is how we find out.
            if exc.status != RPCStatusCode.ALREADY_EXISTS and "already exists" not in str(exc):
                raise


async def erase_customer_histories(client: Client, customer_id: str) -> list[str]:
    """Delete every workflow history of `customer_id` (GDPR erasure); the workflow ids deleted.

    Journeys are found by their CustomerId search attribute; a running one is terminated
    by the server before its history is deleted. Deletion is asynchronous on the server:
    the histories disappear from listing within seconds. Histories closed earlier than the
    namespace's retention are already gone, so a customer's data leaves Temporal at the
    latest one retention period after their last journey, and at once with this.
    """
    query = f"{sa.CUSTOMER_ID.name} = {quote(customer_id)}"
    deleted: list[str] = []
    async for execution in client.list_workflows(query):
        try:
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=execution.id, run_id=execution.run_id),
                )
            )
        except RPCError as exc:
            # Listed, then deleted by retention or an earlier erasure before we got to it.
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
        deleted.append(execution.id)
    return deleted


def interval_schedule(
    workflow: str, arg: Any, schedule_id: str, task_queue: str, every: timedelta, catchup_window: timedelta
) -> Schedule:
    """A Schedule that starts `workflow(arg)` every `every`, never two at once (a slow run makes
    the next one skip, not pile up), catching up missed runs within `catchup_window`."""
    return Schedule(
        action=ScheduleActionStartWorkflow(workflow, arg, id=schedule_id, task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=catchup_window),
    )


async def upsert_schedule(client: Client, schedule_id: str, schedule: Schedule) -> bool:
    """Create the Schedule `schedule_id`, or replace the definition of the one there; True if created.

    Re-applying after a deploy must change the running schedule in place (its run count and
    recent runs stay), not fail because it exists.
    """
    try:
        await client.create_schedule(schedule_id, schedule)
        return True
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(replace)
        return False


async def delete_schedule(client: Client, schedule_id: str) -> str:
    """Delete the Schedule `schedule_id` (a run it started goes on to its end); LookupError when
    there is none, so a command can say so instead of showing an RPC error."""
    try:
        await client.get_schedule_handle(schedule_id).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise LookupError(f"no {schedule_id} schedule to delete") from None
        raise
    return f"deleted {schedule_id}"
