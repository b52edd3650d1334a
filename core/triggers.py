"""Trigger routing: one customer event -> the journeys it starts, converts and ends.

`route_event` is what the webhooks service (POST /v1/events) and the CLI
(`python starter.py event c-42 cart_abandoned --prop cart_id=9`) call:

- every journey file whose `trigger.events` names the event and whose `entry`
  conditions hold on the customer's profile (and the event's properties) is started
  (a no-op for one already running under the same id);
- running journeys of the customer (found in journey_runs) whose `convert_on` names
  the event get a `converted` engagement signal; those whose `exit_on` names it get
  a graceful `cancel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import select
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.rules import describe, failed_condition
from core.db import Database
from core.events import mark_run_finished, running_journeys
from core.journey_files import load_all_journeys
from core.profiles import resolve_customer_id, template_fields
from core.settings import Settings, get_settings
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import JourneySpec
from models.tables import Customer, utcnow


@dataclass
class RouteResult:
    """What one event did: workflow ids started, converted and ended; journeys not entered and why."""

    started: list[str] = field(default_factory=list)
    handles: dict[str, WorkflowHandle[Any, Any]] = field(default_factory=dict, repr=False)
    converted: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    not_entered: dict[str, str] = field(default_factory=dict)


def _deadline(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _deadline(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def matching_journeys(specs: Sequence[JourneySpec], event_type: str) -> list[JourneySpec]:
    """The journeys whose trigger names `event_type`."""
    return [s for s in specs if s.trigger is not None and event_type in s.trigger.events]


async def route_event(
    client: Client,
    db: Database,
    customer_id: str,
    event_type: str,
    properties: Mapping[str, Any] | None = None,
    *,
    journeys: Sequence[JourneySpec] | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> RouteResult:
    """Start, convert and end the customer's journeys for one event.

    `journeys` defaults to every file in journeys/ (read now, so an edited file
    applies to the next start while running journeys keep their snapshot). `now`
    is the time entry conditions judge against (default: the current time). Raises
    starter.UnknownCustomerError for a customer not in the profile database.
    """
    from starter import UnknownCustomerError, start_journey  # starter imports this module's users

    settings = settings or get_settings()
    props = dict(properties or {})
    specs = list(journeys) if journeys is not None else load_all_journeys()
    by_name = {s.name: s for s in specs}
    result = RouteResult()
    now = now or utcnow()

    async with db.session() as session:
        customer_id = await resolve_customer_id(session, customer_id)
        customer = (await session.exec(select(Customer).where(Customer.id == customer_id))).one_or_none()
        if customer is None:
            raise UnknownCustomerError(f"customer {customer_id!r} is not in the profile database")
        profile = template_fields(customer)
        runs = await running_journeys(session, customer_id)

    # Running journeys first, so an event that both ends one journey and starts
    # another (a purchase: cart ends, loyalty round starts) handles the old one first.
    for run in runs:
        spec = by_name.get(run.journey)
        if spec is None:
            continue
        handle = client.get_workflow_handle(run.workflow_id)
        try:
            if event_type in spec.exit_on:
                await handle.signal("cancel", CancelInput(reason=f"exit event {event_type}"))
                result.exited.append(run.workflow_id)
            elif event_type in spec.convert_on:
                await handle.signal("engagement", EngagementInput(type=EngagementType.CONVERTED, occurred_at=now))
                result.converted.append(run.workflow_id)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # Finished meanwhile: note it so later events skip the look-up.
            async with db.session() as session:
                await mark_run_finished(session, run.workflow_id, run.run_id)

    for spec in matching_journeys(specs, event_type):
        if (cond := failed_condition(spec.entry.conditions, profile, props, now)) is not None:
            result.not_entered[spec.name] = f"entry condition not met: {describe(cond)}"
            continue
        assert spec.trigger is not None
        key = None
        if spec.trigger.key_property and props.get(spec.trigger.key_property) is not None:
            key = str(props[spec.trigger.key_property]).replace("/", "_")[:128]
        deadline = _deadline(props.get(spec.trigger.deadline_property)) if spec.trigger.deadline_property else None
        try:
            handle = await start_journey(
                customer_id,
                spec,
                key=key,
                context={**props, "event_type": event_type},
                deadline=deadline,
                client=client,
                db=db,
                settings=settings,
            )
        except ValueError as exc:
            # One journey that cannot start (a template field the event did not carry,
            # a bad deadline) must not keep the others from starting.
            result.not_entered[spec.name] = str(exc)
            continue
        result.started.append(handle.id)
        result.handles[handle.id] = handle
    return result
