"""Start journeys and read where they stand: the application API behind `start_journey`.

Application code imports `start_journey` from `starter` (the design card's entry point),
which re-exports this module; the CLI, the triggers and the demo use it too. Workflows are
started and queried by type name (models/workflow_types.py), so this service depends on
no workflow module and the dependencies point one way.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from cascade.content.templates import SEND_TIME_FIELDS as TEMPLATE_EXTRAS
from cascade.content.templates import check_journey
from cascade.infra.db import Database
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import connect
from cascade.journeys.definition import check_spec, journey_input
from cascade.journeys.files import JourneyDefinitionError, describe_validation_error, load_journey
from cascade.journeys.inputs import UnknownCustomerError, journey_context, journey_workflow_id
from cascade.journeys.runs import record_run
from cascade.profiles.service import survivor, template_fields
from models import search_attributes as sa
from models.ids import check_customer_id, check_run_key
from models.journey import JourneyInput, JourneyResult, JourneySpec, JourneyState
from models.loyalty import LoyaltyInput, LoyaltyResult, LoyaltyState
from models.runs import RecordRunStartedInput
from models.tables import utcnow
from models.workflow_types import CASCADE_JOURNEY, LOYALTY_LOOP, STATE_QUERY

__all__ = [
    "TemplateFieldError",
    "UnknownCustomerError",
    "journey_state",
    "journey_status",
    "journey_workflow_id",
    "start_journey",
]


class TemplateFieldError(ValueError):
    """A template reads a field the customer's profile and the context lack; nothing was started."""


async def start_journey(
    customer_id: str,
    journey: JourneySpec | str | Path,
    *,
    key: str | None = None,
    context: dict[str, Any] | None = None,
    deadline: datetime | None = None,
    client: Client | None = None,
    db: Database | None = None,
    settings: Settings | None = None,
    rerun: bool = True,
    triggered_at: datetime | None = None,
) -> WorkflowHandle[Any, Any]:
    """Start `journey` for `customer_id`, or return the handle of the one already running.

    `journey` is a JourneySpec or the name/path of a file in journeys/; one with a
    `loop` section runs as a LoyaltyLoop, any other as a CascadeJourney. Use `key` when
    the same journey may run more than once at a time for a customer (one per cart).
    Only the `context` entries the journey's templates and step conditions read go into
    the workflow input (it is readable in Temporal: no stray email or address). With
    `rerun` False, a closed run of the same id is not run again (temporalio's
    WorkflowAlreadyStartedError). `triggered_at` is when the trigger happened if it was
    before the start (default: the start itself): the first step's delay counts from it.
    Everything is validated before a workflow starts: a bad
    definition raises JourneyDefinitionError, an unknown customer UnknownCustomerError,
    a template field that neither the profile nor `context` has TemplateFieldError, a
    bad deadline or context ValueError, each naming what was wrong.
    """
    settings = settings or get_settings()
    if isinstance(journey, JourneySpec):
        spec = journey
        try:
            # A spec built in application code skipped the authoring checks a file gets.
            check_spec(spec)
        except ValidationError as exc:
            raise JourneyDefinitionError(describe_validation_error(exc, f"journey {spec.name!r}")) from exc
    else:
        spec = load_journey(journey)
    # One id rule everywhere (models/ids.py): no '/' in ids or keys, so workflow ids never collide.
    check_customer_id(customer_id)
    try:
        payload = journey_input(spec, customer_id, deadline, journey_context(spec, context or {}), triggered_at)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, f"journey {spec.name!r} input")) from exc
    if key is not None:
        check_run_key(key, loop=spec.loop is not None)

    own_db = db is None
    db = db or Database.from_settings(settings)
    try:
        # A profile merged into another one: the journey belongs to the survivor.
        customer = await db.transaction(survivor, customer_id)
        if customer is None:
            raise UnknownCustomerError(f"customer {customer_id!r} is not in the profile database")
        if customer.erased_at is not None:
            # Like the events API (404): an erased customer gets no journey, ever.
            raise UnknownCustomerError(f"customer {customer_id!r} was erased; no journey can start for them")
        customer_id = payload.customer_id = customer.id
        # A template field that neither the profile nor the context has would fail the
        # send days from now, in the worker: refuse the start instead, naming it.
        available = {*template_fields(customer), *payload.context, *TEMPLATE_EXTRAS}
        if missing := check_journey(spec, available)[0]:
            raise TemplateFieldError(
                f"journey {spec.name!r} for customer {customer_id!r}: "
                + "; ".join(missing)
                + " (not on the profile and not in the context)"
            )
        handle = await _start_workflow(client, settings, spec, payload, key, rerun)
        # The workflow records its run itself (activities/runs.py), so the row exists even
        # if this process dies right here; written here too, so an event a moment after
        # the start finds the run before the workflow's first task has run. The same row
        # either way: whoever comes second changes nothing.
        run = RecordRunStartedInput(
            workflow_id=handle.id,
            run_id=handle.result_run_id or "",
            journey=spec.name,
            customer_id=customer_id,
            campaign=spec.campaign,
            workflow_type=LOYALTY_LOOP if spec.loop is not None else CASCADE_JOURNEY,
            convert_on=spec.convert_on,
            exit_on=spec.exit_on,
            started_at=utcnow(),
        )
        await db.transaction(record_run, db, run)
        return handle
    finally:
        if own_db:
            await db.dispose()


async def _start_workflow(
    client: Client | None, settings: Settings, spec: JourneySpec, payload: JourneyInput, key: str | None, rerun: bool
) -> WorkflowHandle[Any, Any]:
    customer_id = payload.customer_id

    client = client or await connect(settings)
    attributes: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.CUSTOMER_ID, customer_id),
        SearchAttributePair(sa.JOURNEY, spec.name),
        SearchAttributePair(sa.JOURNEY_STATUS, "running"),
        SearchAttributePair(sa.STEP, 0),
        SearchAttributePair(sa.CHANNEL, spec.steps[0].channel.value),
    ]
    if spec.campaign:
        attributes.append(SearchAttributePair(sa.CAMPAIGN, spec.campaign))
    # Which definition a running journey uses: its snapshot is in the input, the
    # version and hash in the memo, so an operator sees who runs an older file.
    memo = {
        "journey": spec.name,
        "channels": [s.channel.value for s in spec.steps],
        "spec_version": spec.version,
        "spec_hash": spec.content_hash(),
    }
    common: dict[str, Any] = {
        "id": journey_workflow_id(spec.name, customer_id, key),
        "task_queue": settings.task_queue,
        # A second trigger while the journey runs must not start a second cascade.
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE if rerun else WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "search_attributes": TypedSearchAttributes(attributes),
        "memo": memo,
    }
    if spec.loop is not None:
        return await client.start_workflow(
            LOYALTY_LOOP, LoyaltyInput(journey=payload), result_type=LoyaltyResult, **common
        )
    return await client.start_workflow(CASCADE_JOURNEY, payload, result_type=JourneyResult, **common)


async def journey_state(client: Client, workflow_id: str) -> JourneyState | LoyaltyState:
    """Where a journey stands: the `state` query of a running one, the result of a finished one.

    A loyalty loop answers with its LoyaltyState (round, points); the cascade of its
    current round is `journey_state(client, f"{workflow_id}/round-{state.round}")`.
    """
    description = await client.get_workflow_handle(workflow_id).describe()
    running = description.status is not None and description.status.name == "RUNNING"
    loop = description.workflow_type == LOYALTY_LOOP
    # A running journey answers its state query; a finished one returned its result
    # (a subclass of the state with the outcome).
    state_type: type[JourneyState | LoyaltyState] = LoyaltyState if loop else JourneyState
    result_type: type[JourneyResult | LoyaltyResult] = LoyaltyResult if loop else JourneyResult
    handle = client.get_workflow_handle(workflow_id, result_type=result_type)
    if running:
        state: JourneyState | LoyaltyState = await handle.query(STATE_QUERY, result_type=state_type)
        return state
    finished: JourneyState | LoyaltyState = await handle.result()
    return finished


async def journey_status(client: Client, workflow_id: str) -> list[tuple[str, JourneyState | LoyaltyState]]:
    """The journey's state, and for a loop also its current round's cascade (if it exists)."""
    state = await journey_state(client, workflow_id)
    found: list[tuple[str, JourneyState | LoyaltyState]] = [(workflow_id, state)]
    if isinstance(state, LoyaltyState):
        round_id = f"{workflow_id}/round-{state.round}"
        try:
            found.append((round_id, await journey_state(client, round_id)))
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return found
