"""Record workflow histories for the replay tests: `python -m tests.histories.record`.

Run it only when a history of the *current* code is wanted as a new fixture; the
stored files are what running journeys look like, and every later change to the
workflow must still replay them (or guard the change with `workflow.patched`).
The loyalty-loop and scan scenarios (OTHER_SCENARIOS) are recorded only when named,
e.g. `python -m tests.histories.record loyalty_v2 scan_v2`.
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

from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from cascade.audiences.broadcasts import start_broadcast
from cascade.audiences.service import load_segments
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from cascade.journeys.files import load_journey
from cascade.profiles.service import upsert_customer
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from models.analytics import RefreshRollupsInput
from models.audiences import RefreshMembershipsInput
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import Condition, JourneySpec
from models.loyalty import ScanInput
from models.profiles import ContactIn, CustomerProfile
from models.tables import ContactStatus, Delivery
from starter import start_journey
from tests.conftest import binary, quiet_runtime, start_ts_env
from tests.doubles.sends import AnswerLost, FirstSendStarted, RefusesCredentials, SignalDuringCheck, SlowProvider
from tests.helpers import spec, wait_for_state
from worker import build_worker
from workflows.analytics import AnalyticsRefresh
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop
from workflows.scans import BirthdayScan, WinbackScan
from workflows.segments import SegmentRefresh

HERE = Path(__file__).parent
Scenario = Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]


async def _opened_first(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))


async def _nobody_reacts(handle: WorkflowHandle[Any, Any]) -> None:
    return None


async def _opened_twice(handle: WorkflowHandle[Any, Any]) -> None:
    await wait_for_state(handle, lambda s: s.status == "waiting")
    opened = EngagementInput(type=EngagementType.OPENED, step=0, event_id="replay-open-1")
    await handle.signal(CascadeJourney.engagement, opened)
    await handle.signal(CascadeJourney.engagement, opened)


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
    # Patch "local-run-records": the run's start and finish rows written by local activities.
    "cascade_local_rules_exhausted": (
        [ContactIn(channel="email", address="ann@example.com"), ContactIn(channel="sms", address="+14155552671")],
        _nobody_reacts,
    ),
    # Patch "lean-steps-3" (issue 17 B7): one marker for lean-steps-2 and local-run-records.
    "cascade_lean3_rules_exhausted": (
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
    # Recorded after runs recorded themselves ("record-run") and signals carried event
    # ids ("signal-dedup"): the open is sent twice and taken once.
    "cascade_run_recorded_dedup": (
        [ContactIn(channel="email", address="ann@example.com")],
        _opened_twice,
    ),
    "cascade_bounce_cancel": (
        [
            ContactIn(channel="email", address="ann@example.com"),
            ContactIn(channel="telegram", address="42"),
        ],
        _bounce_then_cancel,
    ),
    # Recorded on lean steps (patch "lean-steps": no check activity, the run row written
    # by the first send, upserts only on change), and again on "lean-steps-2" (one patch
    # marker standing for every earlier one, no "waiting" upsert when the wait is over
    # before it begins). Addresses of their own: profiles sharing one would be merged.
    "cascade_lean_opened_twice": ([ContactIn(channel="email", address="lean1@example.com")], _opened_twice),
    "cascade_lean_bounce_cancel": (
        [ContactIn(channel="email", address="lean2@example.com"), ContactIn(channel="telegram", address="4201")],
        _bounce_then_cancel,
    ),
    "cascade_lean2_opened_twice": ([ContactIn(channel="email", address="lean3@example.com")], _opened_twice),
    # Patch "local-run-records" (issue 17 B7): the finish row by a local activity.
    "cascade_local_opened_twice": ([ContactIn(channel="email", address="local1@example.com")], _opened_twice),
    "cascade_lean2_bounce_cancel": (
        [ContactIn(channel="email", address="lean4@example.com"), ContactIn(channel="telegram", address="4202")],
        _bounce_then_cancel,
    ),
    # Patch "lean-steps-3" (issue 17 B7): one marker where lean-steps-2 journeys had two.
    "cascade_lean3_opened_twice": ([ContactIn(channel="email", address="lean5@example.com")], _opened_twice),
    "cascade_lean3_bounce_cancel": (
        [ContactIn(channel="email", address="lean6@example.com"), ContactIn(channel="telegram", address="4203")],
        _bounce_then_cancel,
    ),
    # A first step with a delay, as a campaign's sleepers (issue 17 B8).
    "cascade_lean3_delayed": (
        [ContactIn(channel="email", address="lean7@example.com"), ContactIn(channel="telegram", address="4204")],
        _nobody_reacts,
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


def _write(name: str, history: WorkflowHistory) -> None:
    # The workflow id rides along: a loop derives its children's ids from it on replay.
    data = {"workflowId": history.workflow_id, **json.loads(history.to_json())}
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(f"recorded {name}.json ({len(history.events)} events)")


async def _loyalty_round(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """A loyalty loop: round 1 is bought in (continue-as-new), round 2 is left (cancel)."""
    customer = f"replay-{name}"
    contacts = [ContactIn(channel="email", address="ann@example.com"), ContactIn(channel="sms", address="+14155552671")]
    await upsert_customer(db, CustomerProfile(id=customer, name="Ann", contacts=contacts))
    journey = load_journey("loyalty")
    journey.quiet_hours = None
    handle = await start_journey(customer, journey, client=env.client, db=db, settings=settings)
    first_run = handle.result_run_id
    child = env.client.get_workflow_handle(f"{handle.id}/round-1")
    await _until(lambda: _child_waiting(child))
    purchase = EngagementInput(type=EngagementType.CONVERTED, event_id=f"{name}-purchase-1")
    await handle.signal(LoyaltyLoop.engagement, purchase)
    await handle.signal(LoyaltyLoop.engagement, purchase)  # sent again: counted once
    second = env.client.get_workflow_handle(f"{handle.id}/round-2")
    await _until(lambda: _child_waiting(second))
    await handle.signal(LoyaltyLoop.cancel, CancelInput(reason="loyalty_left"))
    await env.client.get_workflow_handle(handle.id).result()
    _write(f"{name}_purchase", await env.client.get_workflow_handle(handle.id, run_id=first_run).fetch_history())
    _write(f"{name}_left", await env.client.get_workflow_handle(handle.id).fetch_history())


async def _child_waiting(child: WorkflowHandle[Any, Any]) -> bool:
    try:
        return (await child.query(CascadeJourney.state)).status == "waiting"
    except RPCError:
        return False


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("scenario never reached the expected state")


async def _scans(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """A birthday scan and a win-back scan, each finding one customer."""
    now = await env.get_current_time()
    await upsert_customer(
        db,
        CustomerProfile(
            id=f"replay-{name}-b",
            name="Ann",
            contacts=[ContactIn(channel="email", address="ann.b@example.com")],
            birth_date=now.date().replace(year=1990),
        ),
    )
    await upsert_customer(
        db,
        CustomerProfile(
            id=f"replay-{name}-w",
            name="Bob",
            contacts=[ContactIn(channel="email", address="bob.w@example.com")],
            purchase_count=2,
            last_purchase_at=now - timedelta(days=400),
        ),
    )
    for workflow, journey in ((BirthdayScan, "birthday"), (WinbackScan, "winback")):
        handle = await env.client.start_workflow(
            workflow.run,
            ScanInput(journey=journey, at=now),
            id=f"replay-{name}-{journey}",
            task_queue=settings.task_queue,
        )
        await handle.result()
        _write(f"{name}_{journey}", await handle.fetch_history())


async def _broadcast(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """A broadcast to the built-in `new` segment: 3 recipients in pages of 2, so it continues as new."""
    for i in range(3):
        await upsert_customer(
            db,
            CustomerProfile(
                id=f"replay-{name}-{i}", name="Ann", contacts=[ContactIn(channel="email", address=f"b{i}@example.com")]
            ),
        )
    handle = await start_broadcast(
        env.client,
        load_segments(settings),
        settings.task_queue,
        broadcast_id=f"replay-{name}",
        segment="new",
        journey=spec("email", name="broadcast"),
        page_size=2,
        pages_per_run=1,
        rate_per_second=1000,
    )
    first_run = handle.result_run_id
    await env.client.get_workflow_handle(handle.id).result()
    _write(f"{name}_continued", await env.client.get_workflow_handle(handle.id, run_id=first_run).fetch_history())
    _write(f"{name}_done", await env.client.get_workflow_handle(handle.id).fetch_history())


async def _segment_refresh(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """One scheduled refresh of every segment's memberships."""
    await upsert_customer(db, CustomerProfile(id=f"replay-{name}", name="Ann"))
    handle = await env.client.start_workflow(
        SegmentRefresh.run, RefreshMembershipsInput(), id=f"replay-{name}", task_queue=settings.task_queue
    )
    await handle.result()
    _write(name, await handle.fetch_history())


async def _analytics_refresh(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """One scheduled refresh of the rollups' recent days."""
    handle = await env.client.start_workflow(
        AnalyticsRefresh.run, RefreshRollupsInput(), id=f"replay-{name}", task_queue=settings.task_queue
    )
    await handle.result()
    _write(name, await handle.fetch_history())


async def _optichannel(env: WorkflowEnvironment, db: Database, settings: Settings, name: str) -> None:
    """An optichannel journey (issue 16): every step routed, timed (`send_at: best`) and with an
    adaptive wait; the customer's telegram history puts telegram first, they ignore it and open
    the email of step 1. Recorded through the payload codec, as journeys run now."""
    customer = f"replay-{name}"
    contacts = [
        ContactIn(channel="email", address="ann.route@example.com"),
        ContactIn(channel="telegram", address="4202"),
        ContactIn(channel="sms", address="+14155550104"),
    ]
    await upsert_customer(db, CustomerProfile(id=customer, name="Ann", contacts=contacts))
    now = await env.get_current_time()
    async with db.session() as session:
        for i in range(6):
            at = now - timedelta(days=20 - i)
            session.add(
                Delivery(
                    idempotency_key=f"past/{customer}/{i}",
                    workflow_id=f"past-{customer}",
                    run_id="r",
                    journey="past",
                    step=0,
                    customer_id=customer,
                    channel="telegram",
                    status="opened",
                    sent_at=at,
                    opened_at=at + timedelta(minutes=20),
                )
            )
    routing = {"send_at": "best", "send_within": "24h", "wait": "adaptive", "wait_bounds": {"min": "1h", "max": "1d"}}
    journey = JourneySpec.model_validate(
        {
            "name": "optichannel",
            "route": "optichannel",
            "steps": [
                {"channel": ch, "await": "opened", "content": {"body": f"{ch}: sale"}, **routing}
                for ch in ("email", "telegram", "sms")
            ],
        }
    )
    routed = settings.model_copy(
        update={"task_queue": f"record-{name}", "channel_costs": {"email": 0.002, "telegram": 0.01, "sms": 0.05}}
    )
    async with build_worker(env.client, routed, db):
        handle = await start_journey(customer, journey, client=env.client, db=db, settings=routed)
        # The server's clock moves only while something waits on it: step through the send
        # times and the first wait ten minutes at a time until step 1 is out.
        for _ in range(600):
            state = await handle.query(CascadeJourney.state)
            if state.current_step == 1 and state.status == "waiting":
                break
            await env.sleep(timedelta(minutes=10))
        else:
            raise AssertionError(f"step 1 never went out: {state}")
        await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=1))
        await handle.result()
    _write(name, await handle.fetch_history())


# Scenarios recorded on a server of their own that speaks the production payload codec
# (payloads stored encrypted with the dev key, as journeys run now): recorded only when named.
CODEC_SCENARIOS: dict[str, Callable[[WorkflowEnvironment, Database, Settings, str], Awaitable[None]]] = {
    "cascade_optichannel": _optichannel,
}


# Whole-workflow scenarios beyond the cascade: recorded only when named.
OTHER_SCENARIOS: dict[str, Callable[[WorkflowEnvironment, Database, Settings, str], Awaitable[None]]] = {
    # Recorded on the code before "loyalty-round-v2", "record-run", "signal-dedup" and
    # "paged-scans"; the _v2 ones after.
    "loyalty_v1": _loyalty_round,
    "scan_v1": _scans,
    "loyalty_v2": _loyalty_round,
    "scan_v2": _scans,
    "broadcast": _broadcast,
    "segment_refresh": _segment_refresh,
    "analytics_refresh": _analytics_refresh,
}


async def record(env: WorkflowEnvironment, db: Database, settings: Settings, only: list[str] | None = None) -> None:
    """Run every scenario (or those named in `only`) and write its history next to this file."""
    client = env.client
    for name, other in OTHER_SCENARIOS.items():
        if only and name in only:
            await other(env, db, settings, name)
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
        if name.endswith("_delayed"):
            journey.steps[0].delay = timedelta(hours=1)
        handle = await start_journey(customer, journey, client=client, db=db, settings=settings)
        await scenario(handle)
        await handle.result()
        _write(name, await handle.fetch_history())


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
            await record(env, db, settings, only)
        await env.shutdown()
        for name, codec_scenario in CODEC_SCENARIOS.items():
            if name not in only:
                continue
            env = await start_ts_env()
            await register_search_attributes(env.client)
            await codec_scenario(env, db, settings, name)
            await env.shutdown()
        for name, scenario in SEND_SCENARIOS.items():
            if only and name not in only:
                continue
            env = await _server()
            handle = await scenario(env.client, db, settings.model_copy(update={"task_queue": f"record-{name}"}))
            _write(name, await handle.fetch_history())
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
