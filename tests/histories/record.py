"""Record workflow histories for the replay tests: `python -m tests.histories.record`.

Run it only when a history of the *current* code is wanted as a new fixture; the
stored files are what running journeys look like, and every later change to the
workflow must still replay them (or guard the change with `workflow.patched`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from core.db import Database, migrate
from core.profiles import upsert_customer
from core.settings import Settings
from core.temporal import register_search_attributes
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import Condition
from models.profiles import ContactIn, CustomerProfile
from models.tables import ContactStatus
from starter import start_journey
from tests.conftest import binary, quiet_runtime
from tests.doubles.sends import AnswerLost, FirstSendStarted, RefusesCredentials, SignalDuringCheck, SlowProvider
from tests.helpers import spec, wait_for_state
from worker import build_worker
from workflows.cascade import CascadeJourney

HERE = Path(__file__).parent
Scenario = Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]


async def _opened_first(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))


async def _nobody_reacts(handle: WorkflowHandle[Any, Any]) -> None:
    return None


async def _bounce_then_cancel(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.BOUNCED, step=0))
    await wait_for_state(handle, lambda s: s.current_step == 1 and s.status == "waiting")
    await handle.signal(CascadeJourney.cancel, CancelInput(reason="recorded"))


# Step rules (patched "step-rules"): a condition skips the email, stay-where-active is
# off, a plain delay precedes the SMS. Recorded by name (`python -m tests.histories.record
# cascade_rules_exhausted`), so the original three histories stay what running journeys
# of the old code look like.
RULES_SPEC = {
    "frequency_cap": {"max": 3, "per": "7d"},
    "quiet_hours": {"start": "03:00", "end": "03:01"},
}
RULE_SCENARIOS: dict[str, tuple[list[ContactIn], Scenario]] = {
    "cascade_rules_exhausted": (
        [ContactIn(channel="email", address="ann@example.com"), ContactIn(channel="sms", address="+14155552671")],
        _nobody_reacts,
    ),
}

SCENARIOS: dict[str, tuple[list[ContactIn], Scenario]] = {
    "cascade_reacted": (
        [ContactIn(channel="email", address="ann@example.com")],
        _opened_first,
    ),
    "cascade_skip_fail_exhausted": (
        [
            ContactIn(channel="email", address="ann@example.com", status=ContactStatus.UNSUBSCRIBED),
            ContactIn(channel="telegram", address="blocked-7"),
            ContactIn(channel="sms", address="+14155552671"),
        ],
        _nobody_reacts,
    ),
    # Recorded after sends moved to per-channel task queues (patch "per-channel-task-queue").
    "cascade_per_channel_queue": (
        [
            ContactIn(channel="email", address="bounce@example.com"),
            ContactIn(channel="telegram", address="42"),
            ContactIn(channel="sms", address="+14155552671"),
        ],
        _nobody_reacts,
    ),
    "cascade_bounce_cancel": (
        [
            ContactIn(channel="email", address="ann@example.com"),
            ContactIn(channel="telegram", address="42"),
        ],
        _bounce_then_cancel,
    ),
}


# Recorded after the send changes of issue 11 (patches send-outcome-from-log,
# stop-before-send, early-events-per-step). Each needs a worker of its own (a provider
# stand-in, or a signal arriving during the contact check), so each runs on its own
# task queue and, for the cap's clock, on a fresh time-skipping server. Addresses
# differ from every other scenario's: profiles sharing one would be merged.
SendScenario = Callable[[Client, Database, Settings], Awaitable[WorkflowHandle[Any, Any]]]


async def _customer(db: Database, name: str, *contacts: ContactIn) -> str:
    customer = f"replay-{name}"
    await upsert_customer(db, CustomerProfile(id=customer, name="Ann", contacts=list(contacts)))
    return customer


async def _unknown_and_refused(client: Client, db: Database, settings: Settings) -> WorkflowHandle[Any, Any]:
    """Email answer lost (unknown, waited on), Telegram token refused (settled failed), SMS sent."""
    customer = await _customer(
        db,
        "cascade_send_outcomes",
        ContactIn(channel="email", address="ann.outcomes@example.com"),
        ContactIn(channel="telegram", address="4201"),
        ContactIn(channel="sms", address="+14155550101"),
    )
    channels = dict(build_channels(settings, db))
    channels["email"] = AnswerLost(channels["email"])
    channels["telegram"] = RefusesCredentials("telegram")
    async with build_worker(client, settings, db, channels):
        handle = await start_journey(
            customer, spec("email", "telegram", "sms"), client=client, db=db, settings=settings
        )
        await handle.result()
    return handle


async def _cancel_during_check(client: Client, db: Database, settings: Settings) -> WorkflowHandle[Any, Any]:
    customer = await _customer(
        db, "cascade_stop_before_send", ContactIn(channel="email", address="ann.stop@example.com")
    )
    acts = SignalDuringCheck(db, settings, client, CancelInput(reason="recorded"), on="email")
    async with build_worker(client, settings, db, journey_activities=acts):
        handle = await start_journey(customer, spec("email", "sms"), client=client, db=db, settings=settings)
        await handle.result()
    return handle


async def _event_during_skipped_check(client: Client, db: Database, settings: Settings) -> WorkflowHandle[Any, Any]:
    customer = await _customer(db, "cascade_skipped_step_event", ContactIn(channel="sms", address="+14155550102"))
    acts = SignalDuringCheck(db, settings, client, EngagementInput(type=EngagementType.OPENED), on="email")
    async with build_worker(client, settings, db, journey_activities=acts):
        handle = await start_journey(customer, spec("email", "sms"), client=client, db=db, settings=settings)
        await handle.result()
    return handle


async def _cap_filled_first(client: Client, db: Database, settings: Settings) -> WorkflowHandle[Any, Any]:
    """Two journeys under a cap of one: the second's send is postponed a week."""
    customer = await _customer(
        db,
        "cascade_cap_postponed",
        ContactIn(channel="email", address="ann.cap@example.com"),
        ContactIn(channel="sms", address="+14155550103"),
    )
    slow = SlowProvider(SandboxChannel("email", db), seconds=1.0)
    cap = {"max": 1, "per": "7d"}
    async with build_worker(client, settings, db, journey_activities=FirstSendStarted(db, settings, slow)):
        first = await start_journey(
            customer, spec("email", name="cap-a", frequency_cap=cap), client=client, db=db, settings=settings
        )
        second = await start_journey(
            customer, spec("sms", name="cap-b", frequency_cap=cap), client=client, db=db, settings=settings
        )
        await first.result()
        await second.result()
    return second


SEND_SCENARIOS: dict[str, SendScenario] = {
    "cascade_send_outcomes": _unknown_and_refused,
    "cascade_stop_before_send": _cancel_during_check,
    "cascade_skipped_step_event": _event_during_skipped_check,
    "cascade_cap_postponed": _cap_filled_first,
}


async def _write(name: str, handle: WorkflowHandle[Any, Any]) -> None:
    history = await handle.fetch_history()
    (HERE / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1))
    print(f"recorded {name}.json ({len(history.events)} events)")


async def record(client: Client, db: Database, settings: Settings, only: list[str] | None = None) -> None:
    """Run every scenario (or those named in `only`) and write its history next to this file."""
    for name, (contacts, scenario) in {**SCENARIOS, **RULE_SCENARIOS}.items():
        if only and name not in only:
            continue
        customer = f"replay-{name}"
        rules = name in RULE_SCENARIOS
        await upsert_customer(db, CustomerProfile(id=customer, name="Ann", contacts=contacts))
        journey = spec("email", "telegram", "sms", **RULES_SPEC) if rules else spec("email", "telegram", "sms")  # type: ignore[arg-type]
        if rules:
            journey.steps[0].when = [Condition(field="purchase_count", op="gt", value=5)]
            journey.steps[2].delay = timedelta(hours=2)
        handle = await start_journey(customer, journey, client=client, db=db, settings=settings)
        await scenario(handle)
        await handle.result()
        await _write(name, handle)


async def main(only: list[str]) -> None:
    """Start a time-skipping server, a worker on a scratch database, and record.

    `python -m tests.histories.record NAME ...` records only the named scenarios, so
    the histories of older code stay as they were recorded.
    """
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/record.db", task_queue="record")
        db = Database.from_settings(settings)
        await migrate(db.engine)
        env = await _server()
        async with build_worker(env.client, settings, db):
            await record(env.client, db, settings, only)
        await env.shutdown()
        for name, scenario in SEND_SCENARIOS.items():
            if only and name not in only:
                continue
            env = await _server()
            handle = await scenario(env.client, db, settings.model_copy(update={"task_queue": f"record-{name}"}))
            await _write(name, handle)
            await env.shutdown()
        await db.dispose()


async def _server() -> WorkflowEnvironment:
    """A fresh time-skipping server (its clock starts at the real one) with our search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=quiet_runtime(),
    )
    await register_search_attributes(env.client)
    return env


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
