"""Optichannel routing and adaptive waits through the real workflow (issue 16).

Time-skipping Temporal server, the real activities, real SQLite (and PostgreSQL for the
delivery-log queries). Exploration is off unless a test is about it, so every decision
is the ranking by posterior means and can be asserted.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey, parse_journey_text
from cascade.profiles.service import upsert_customer
from cascade.routing.history import channel_history, reaction_delays
from cascade.routing.sendtime import preview
from cascade.routing.timing import preview_send_times
from models.events import EngagementInput, EngagementType
from models.journey import JourneyResult, JourneySpec, Outcome, StepStatus
from models.profiles import ContactIn, CustomerProfile
from models.tables import Customer, Delivery, RoutingDecision
from starter import start_journey
from tests.codec import CODEC_CONVERTER, decrypt_history, payloads_in
from tests.helpers import deliveries, spec, wait_for_state
from worker import WORKFLOWS, build_worker
from workflows.cascade import CascadeJourney

COSTS = {"email": 0.005, "telegram": 0.01, "sms": 0.05}
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def routed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"routing_exploration": 0.0, "channel_costs": COSTS})


@pytest.fixture
async def now(ts_env: WorkflowEnvironment) -> datetime:
    """The time-skipping server's clock: other tests' timers move it far beyond the wall clock."""
    return await ts_env.get_current_time()


@pytest.fixture
async def run_worker(client: Client, routed_settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, routed_settings, db):
        yield


async def _customer(db: Database, cid: str, **extra: object) -> None:
    contacts = [
        ContactIn(channel="email", address=f"{cid}@example.com"),
        ContactIn(channel="telegram", address="100200300"),
        ContactIn(channel="sms", address="+14155552671"),
    ]
    await upsert_customer(db, CustomerProfile.model_validate({"id": cid, "name": "Ann", "contacts": contacts, **extra}))


async def _history(
    db: Database,
    cid: str,
    channel: str,
    sent: int,
    opened: int,
    *,
    delay: timedelta = timedelta(hours=2),
    now: datetime = NOW,
) -> None:
    """`sent` past messages to `cid` on `channel`, the first `opened` of them opened after `delay`."""
    async with db.session() as session:
        for i in range(sent):
            at = now - timedelta(days=30) + timedelta(hours=i)
            session.add(
                Delivery(
                    idempotency_key=f"past/{cid}/{channel}/{i}",
                    workflow_id=f"past-{cid}",
                    run_id="r",
                    journey="past",
                    step=0,
                    customer_id=cid,
                    channel=channel,
                    status="opened" if i < opened else "sent",
                    sent_at=at,
                    opened_at=at + delay if i < opened else None,
                )
            )


async def _mixed_population(db: Database, now: datetime) -> None:
    """Customers who read one channel and never the other: 50 % on each, and a weak prior (spread)."""
    for i in range(20):
        await _history(db, f"pop{i}", "email", 4, 4 if i % 2 else 0, now=now)
        await _history(db, f"pop{i}", "telegram", 4, 0 if i % 2 else 4, now=now)


def optichannel(*channels: str, **extra: Any) -> JourneySpec:
    return spec(*channels, route="optichannel", **extra)


async def _start(
    client: Client, db: Database, settings: Settings, cid: str, journey: JourneySpec
) -> WorkflowHandle[Any, Any]:
    return await start_journey(cid, journey, client=client, db=db, settings=settings)


# --- the YAML ---------------------------------------------------------------------


def test_yaml_route_and_adaptive_wait_parse_and_fixed_specs_serialise_as_before():
    text = """
name: routed
route: optichannel
max_steps: 2
steps:
  - channel: email
    wait: adaptive
    wait_bounds: {min: 5m, max: 6h}
    content: {body: hi}
  - channel: sms
    content: {body: hi}
"""
    journey = parse_journey_text(text, "routed.yaml")
    assert journey.route == "optichannel" and journey.max_steps == 2
    bounds = journey.steps[0].adaptive_wait
    assert bounds is not None and bounds.min == timedelta(minutes=5) and bounds.max == timedelta(hours=6)
    assert journey.steps[0].wait == timedelta(hours=6)
    # The stored form (a workflow's input) reads back the same.
    assert JourneySpec.model_validate(journey.model_dump(mode="json", by_alias=True)) == journey
    fixed = spec("email", "sms").model_dump(mode="json", by_alias=True)
    assert "route" not in fixed and "max_steps" not in fixed and "adaptive_wait" not in fixed["steps"][0]
    assert "max_cost_per_reaction" not in fixed
    capped = parse_journey_text(text.replace("max_steps: 2", "max_cost_per_reaction: 0.2"), "capped.yaml")
    assert capped.max_cost_per_reaction == 0.2
    assert JourneySpec.model_validate(capped.model_dump(mode="json", by_alias=True)) == capped


def test_yaml_errors_name_file_field_and_line():
    twice = (
        "name: x\nroute: optichannel\nsteps:\n"
        "  - {channel: email, content: {body: a}}\n  - {channel: email, content: {body: b}}\n"
    )
    with pytest.raises(ValueError, match=r"x\.yaml: route.*line 2.*email is at steps 0 and 1"):
        parse_journey_text(twice, "x.yaml")
    bounds = "name: y\nsteps:\n  - channel: email\n    wait: 1d\n    wait_bounds: {max: 2d}\n    content: {body: a}\n"
    with pytest.raises(ValueError, match=r"y\.yaml: steps\.0.*line 3.*wait_bounds needs `wait: adaptive`"):
        parse_journey_text(bounds, "y.yaml")
    backwards = (
        "name: z\nsteps:\n  - channel: email\n    wait: adaptive\n"
        "    wait_bounds: {min: 2d, max: 1h}\n    content: {body: a}\n"
    )
    with pytest.raises(ValueError, match=r"need 0 < min <= max"):
        parse_journey_text(backwards, "z.yaml")
    with pytest.raises(ValidationError, match="optichannel"):
        JourneySpec.model_validate(
            {"name": "w", "route": "cheapest", "steps": [{"channel": "sms", "content": {"body": "a"}}]}
        )
    # A ceiling means nothing on a fixed chain (every step is sent): refused, not ignored.
    ceiling = "name: v\nmax_cost_per_reaction: 0.2\nsteps:\n  - {channel: sms, content: {body: a}}\n"
    with pytest.raises(ValueError, match=r"v\.yaml: max_cost_per_reaction.*line 2.*needs route: optichannel"):
        parse_journey_text(ceiling, "v.yaml")
    with pytest.raises(ValueError, match="max_cost_per_reaction"):
        parse_journey_text(ceiling.replace("0.2", "-1").replace("name: v", "name: v\nroute: optichannel"), "v.yaml")


# --- the delivery-log queries (SQLite and PostgreSQL) ----------------------------------


async def test_history_counts_own_segment_and_population(any_db: Database):
    for cid, segment in (("a", "north"), ("b", "north"), ("c", "south")):
        await upsert_customer(any_db, CustomerProfile(id=cid, attributes={"segment": segment}))
    await _history(any_db, "a", "email", 4, 1)
    await _history(any_db, "b", "email", 6, 5, delay=timedelta(minutes=10))
    await _history(any_db, "c", "email", 10, 0)
    await _history(any_db, "a", "sms", 2, 2)
    async with any_db.session() as session:
        conn = await session.connection()
        got = await channel_history(
            conn, "a", {"email": "opened", "sms": "clicked"}, NOW - timedelta(days=365), ("segment", "north")
        )
        own_delays = await reaction_delays(conn, "email", "opened", "b", NOW - timedelta(days=365))
        all_delays = await reaction_delays(conn, "email", "opened", None, NOW - timedelta(days=365))
        recent_only = await channel_history(conn, "a", {"email": "opened"}, NOW, None)
    assert (got.own["email"].reactions, got.own["email"].messages) == (1, 4)
    # sms awaits a click: opens are not reactions there.
    assert (got.own["sms"].reactions, got.own["sms"].messages) == (0, 2)
    assert (got.segment["email"].reactions, got.segment["email"].messages) == (6, 10)
    assert (got.population["email"].reactions, got.population["email"].messages) == (6, 20)
    assert got.last_reaction_at["email"] == NOW - timedelta(days=30) + timedelta(hours=2)
    assert "email" in got.prior_strength and got.prior_strength["email"] > 0
    assert own_delays == [timedelta(minutes=10)] * 5
    assert sorted(all_delays) == [timedelta(minutes=10)] * 5 + [timedelta(hours=2)]
    assert recent_only.own == {} and recent_only.population == {}


# --- the workflow -------------------------------------------------------------------


async def test_cold_start_ranks_by_population_and_records_the_reasons(
    client, db, routed_settings, run_worker, unique_id, now
):
    await _customer(db, unique_id)
    # Everyone else reads telegram often and email rarely: a new customer starts there.
    for i in range(20):
        await _history(db, f"other{i}", "telegram", 5, 4, now=now)
        await _history(db, f"other{i}", "email", 5, 0, now=now)
    handle = await _start(client, db, routed_settings, unique_id, optichannel("email", "sms", "telegram", wait="1h"))
    state = await wait_for_state(handle, lambda s: s.status == "waiting")
    assert state.current_channel == "telegram" and state.current_step == 0
    assert state.steps[0].channel == "telegram" and state.steps[0].status == StepStatus.SENT
    assert state.steps[0].routing is not None and state.steps[0].routing.startswith("telegram: 0.7")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))
    result = await handle.result()
    assert result.outcome == Outcome.REACTED
    [row] = await deliveries(db, handle.id)
    async with db.session() as session:
        decision = (
            await session.exec(select(RoutingDecision).where(RoutingDecision.idempotency_key == row.idempotency_key))
        ).one()
    assert row.channel == decision.chosen == "telegram"
    assert decision.ranking[0]["channel"] == "telegram" and decision.summary == result.steps[0].routing


async def test_own_history_beats_the_population_and_a_miss_switches_channel(
    client, db, routed_settings, run_worker, unique_id, now
):
    await _customer(db, unique_id)
    await _mixed_population(db, now)
    # This customer reads telegram, never email: their own history wins over the population.
    await _history(db, unique_id, "telegram", 10, 9, now=now)
    await _history(db, unique_id, "email", 10, 0, now=now)
    journey = optichannel("email", "telegram", "sms", wait="1d", stay_active_days=None)
    first = await (await _start(client, db, routed_settings, unique_id, journey)).result()
    sent = [(s.channel.value, s.status) for s in first.steps]
    assert sent[0] == ("telegram", StepStatus.SENT)
    # No reaction: the next step re-ranked and moved on; the last is the dearest.
    assert [c for c, _ in sent] == ["telegram", "email", "sms"]
    assert all(s.routing for s in first.steps)


async def test_misses_in_one_journey_teach_the_next(client, db, routed_settings, run_worker, unique_id, now, ts_env):
    await _customer(db, unique_id)
    await _mixed_population(db, now)
    journey = optichannel("email", "telegram", wait="1h", max_steps=1)
    choices = []
    for n in range(6):
        handle = await _start(client, db, routed_settings, unique_id, journey.model_copy(update={"name": f"promo{n}"}))
        await wait_for_state(handle, lambda s: s.status == "waiting")
        # Exactly the step's wait, not handle.result(): the test server jumps years ahead
        # after a result, and the routing model reads only the last year of the log.
        await ts_env.sleep(timedelta(hours=1, minutes=1))
        result = await wait_for_state(handle, lambda s: s.outcome is not None)
        choices.append(result.steps[0].channel.value)
        assert result.steps[1].status == StepStatus.SKIPPED and result.steps[1].reason == "max_steps 1 reached"
    # Email starts cheapest per expected reaction; unanswered emails lower it until telegram
    # wins, and unanswered telegrams lower that in turn.
    assert choices[:3] == ["email", "email", "telegram"], choices
    assert choices.count("telegram") >= 2


async def test_the_ceiling_spares_an_sms_the_customer_never_answers(
    client, db, routed_settings, run_worker, unique_id, now
):
    await _customer(db, unique_id)
    # Others answer half their SMS; this customer answered none of 10, and reads email.
    for i in range(10):
        await _history(db, f"pop{i}", "sms", 4, 2, now=now)
    await _history(db, unique_id, "sms", 10, 0, now=now)
    await _history(db, unique_id, "email", 4, 2, now=now)
    journey = optichannel("email", "sms", wait="1h", max_cost_per_reaction=0.1, stay_active_days=None)
    handle = await _start(client, db, routed_settings, unique_id, journey)
    result = await handle.result()
    # Email went out and was not answered; the SMS is above the ceiling for this customer.
    assert [(s.channel.value, s.status) for s in result.steps] == [
        ("email", StepStatus.SENT),
        ("sms", StepStatus.SKIPPED),
    ]
    assert re.fullmatch(
        r"0\.\d{3} per expected reaction above max_cost_per_reaction 0\.100", result.steps[1].reason or ""
    )
    assert result.outcome == Outcome.EXHAUSTED
    assert [row.channel for row in await deliveries(db, handle.id)] == ["email"]
    async with db.session() as session:
        rows = (
            await session.exec(
                select(RoutingDecision)
                .where(col(RoutingDecision.customer_id) == unique_id)
                .order_by(col(RoutingDecision.step))
            )
        ).all()
    assert [r.chosen for r in rows] == ["email", None]
    assert rows[1].summary.startswith("every channel above max_cost_per_reaction 0.100: sms:")
    assert rows[1].model_version == "beta-binomial-v3"
    # Without the ceiling the same customer gets the SMS.
    free = journey.model_copy(update={"name": "free", "max_cost_per_reaction": None})
    again = await (await _start(client, db, routed_settings, unique_id, free)).result()
    assert [s.status for s in again.steps] == [StepStatus.SENT, StepStatus.SENT]


async def test_preference_and_consent_are_obeyed(client, db, routed_settings, run_worker, unique_id, now):
    await _customer(db, unique_id, preferred_channel="sms")
    await upsert_customer(
        db, CustomerProfile(id=unique_id, contacts=[ContactIn(channel="telegram", address="100200300", consent=False)])
    )
    for i in range(10):
        await _history(db, f"pop{i}", "sms", 4, 3, now=now)
        await _history(db, f"pop{i}", "email", 4, 1, now=now)
    handle = await _start(client, db, routed_settings, unique_id, optichannel("email", "telegram", "sms", wait="1h"))
    result = await handle.result()
    # sms: 0.05 / min(1, 0.75 * 1.5) = 0.05 per reaction; email: 0.005 / 0.25 = 0.02 -> email still first,
    # sms second (preferred); telegram has no consent and is never used.
    assert [s.channel.value for s in result.steps[:2]] == ["email", "sms"]
    assert result.steps[2].channel == "telegram" and result.steps[2].status == StepStatus.SKIPPED
    assert result.steps[2].reason == "no consent"
    assert "preferred" not in (result.steps[0].routing or "")


async def test_no_usable_channel_is_unreachable(client, db, routed_settings, run_worker, unique_id, now):
    await upsert_customer(db, CustomerProfile(id=unique_id, contacts=[ContactIn(channel="vk", address="id1")]))
    result = await (await _start(client, db, routed_settings, unique_id, optichannel("email", "sms"))).result()
    assert result.outcome == Outcome.UNREACHABLE
    assert [s.reason for s in result.steps] == ["no email contact", "no sms contact"]
    async with db.session() as session:
        rows = (await session.exec(select(RoutingDecision).where(col(RoutingDecision.customer_id) == unique_id))).all()
    assert len(rows) == 1 and rows[0].chosen is None and "no usable channel" in rows[0].summary


async def test_adaptive_wait_follows_the_customers_reaction_times(
    client, db, routed_settings, run_worker, unique_id, now
):
    await _customer(db, unique_id)
    await _history(db, unique_id, "email", 8, 8, delay=timedelta(minutes=20), now=now)
    journey = JourneySpec.model_validate(
        {
            "name": "adaptive",
            "steps": [
                {
                    "channel": "email",
                    "wait": "adaptive",
                    "wait_bounds": {"min": "10m", "max": "2d"},
                    "content": {"body": "a"},
                },
                {
                    "channel": "sms",
                    "wait": "adaptive",
                    "wait_bounds": {"min": "3h", "max": "2d"},
                    "content": {"body": "b"},
                },
            ],
        }
    )
    result = await (await _start(client, db, routed_settings, unique_id, journey)).result()
    first, second = result.steps
    assert first.sent_at is not None and second.sent_at is not None and result.finished_at is not None
    # Fast reader: escalated after about 20 minutes, not a day.
    assert timedelta(minutes=19) <= second.sent_at - first.sent_at <= timedelta(minutes=25)
    assert first.wait_reason is not None and "own reactions" in first.wait_reason
    # No sms history anywhere: the default (1 day) within the bounds.
    assert timedelta(hours=23) <= result.finished_at - second.sent_at <= timedelta(hours=25)
    assert second.wait_reason is not None and "too little history" in second.wait_reason


async def test_decisions_replay_from_history(client, db, settings, unique_id):
    explore = settings.model_copy(update={"routing_exploration": 1.0, "channel_costs": COSTS})
    await _customer(db, unique_id)
    async with build_worker(client, explore, db):
        handle = await _start(client, db, explore, unique_id, optichannel("email", "telegram", "sms", wait="1h"))
        result = await handle.result()
        history = await handle.fetch_history()
    assert all(s.status == StepStatus.SENT and s.routing and s.routing.endswith("explored") for s in result.steps)
    # The workflow is replayed without any database: the decisions come from the history.
    replay = await Replayer(workflows=WORKFLOWS, data_converter=CODEC_CONVERTER).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replay.replay_failure is None


STORED = Path(__file__).parent / "histories" / "cascade_optichannel.json"


async def test_the_stored_optichannel_history_replays_with_its_decisions():
    """An optichannel journey recorded through the payload codec (tests/histories/record.py):
    routed, timed and adaptively waited steps replay on the current code without a database."""
    data = json.loads(STORED.read_text())
    history = WorkflowHistory.from_json(data.pop("workflowId"), data)
    # The journey's input and every activity's result are ciphertext (search attributes and
    # patch markers are not payloads the codec sees).
    started = history.events[0].workflow_execution_started_event_attributes.input
    results = [e.activity_task_completed_event_attributes.result for e in history.events]
    encodings = {p.metadata["encoding"].decode() for m in (started, *results) for p in payloads_in(m)}
    assert encodings == {"binary/encrypted"}
    replay = await Replayer(workflows=WORKFLOWS, data_converter=CODEC_CONVERTER).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replay.replay_failure is None
    clear = await decrypt_history(history)
    activities = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in clear.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert activities.count("choose_channel") == activities.count("choose_wait") == 2
    assert activities.count("choose_send_time") == 2
    (done,) = [e for e in clear.events if e.HasField("workflow_execution_completed_event_attributes")]
    result = JourneyResult.model_validate_json(
        done.workflow_execution_completed_event_attributes.result.payloads[0].data
    )
    # The decisions the activities made are what the journey recorded and replay repeats.
    assert [s.channel.value for s in result.steps[:2]] == ["telegram", "email"]
    assert result.steps[0].routing and result.steps[0].routing.startswith("telegram: 0.86 past reaction rate")
    assert result.steps[0].wait_reason and "clamped to 1.0 h" in result.steps[0].wait_reason
    assert result.outcome == Outcome.REACTED and result.reacted_step == 1


# --- send time -------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


async def _opens_at_local_hour(db: Database, cid: str, hour: int, now: datetime, days: int = 12) -> None:
    """`days` past emails to `cid`, each opened at `hour`:05 Berlin time."""
    async with db.session() as session:
        for d in range(1, days + 1):
            local = (now - timedelta(days=d)).astimezone(BERLIN).replace(hour=hour, minute=5, second=0, microsecond=0)
            opened = local.astimezone(UTC)
            session.add(
                Delivery(
                    idempotency_key=f"past/{cid}/t/{d}",
                    workflow_id=f"past-{cid}",
                    run_id="r",
                    journey="past",
                    step=0,
                    customer_id=cid,
                    channel="email",
                    status="opened",
                    sent_at=opened - timedelta(minutes=3),
                    opened_at=opened,
                )
            )


async def _berliner(db: Database, cid: str, segment: str | None = None) -> None:
    profile: dict[str, Any] = {
        "id": cid,
        "timezone": "Europe/Berlin",
        "contacts": [{"channel": "email", "address": f"{cid}@x.org"}],
    }
    if segment:
        profile["attributes"] = {"segment": segment}
    await upsert_customer(db, CustomerProfile.model_validate(profile))


def _best_time_journey(**extra: Any) -> JourneySpec:
    return JourneySpec.model_validate(
        {
            "name": "besttime",
            "steps": [
                {"channel": "email", "send_at": "best", "send_within": "24h", "wait": "1h", "content": {"body": "a"}}
            ],
            **extra,
        }
    )


async def test_send_at_best_sends_at_the_customers_hour(client, db, routed_settings, run_worker, unique_id, now):
    await _berliner(db, unique_id)
    await _opens_at_local_hour(db, unique_id, 19, now)
    result = await (await _start(client, db, routed_settings, unique_id, _best_time_journey())).result()
    step = result.steps[0]
    assert step.status == StepStatus.SENT and step.sent_at is not None and result.started_at is not None
    assert step.sent_at.astimezone(BERLIN).hour == 19
    assert timedelta(0) <= step.sent_at - result.started_at <= timedelta(hours=24)
    assert step.send_reason is not None and "from 12 own reactions" in step.send_reason


async def test_quiet_hours_beat_the_best_hour(client, db, routed_settings, run_worker, unique_id, now):
    await _berliner(db, unique_id)
    # A night owl (23:00) under quiet hours 21:00-08:00: the nearest allowed evening hour.
    await _opens_at_local_hour(db, unique_id, 23, now)
    journey = _best_time_journey(quiet_hours={"start": "21:00", "end": "08:00"})
    result = await (await _start(client, db, routed_settings, unique_id, journey)).result()
    sent = result.steps[0].sent_at
    assert sent is not None and sent.astimezone(BERLIN).hour == 20


async def test_without_history_the_fallback_hour_is_used(client, db, routed_settings, run_worker, unique_id):
    await _berliner(db, unique_id)
    result = await (await _start(client, db, routed_settings, unique_id, _best_time_journey())).result()
    step = result.steps[0]
    assert step.sent_at is not None and step.sent_at.astimezone(BERLIN).hour == 10
    assert step.send_reason is not None and "no history" in step.send_reason


async def test_preview_over_a_segment_uses_own_hours_then_the_segments(any_db: Database):
    for cid in ("s1", "s2", "s3"):
        await _berliner(any_db, cid, segment="eve")
    await _berliner(any_db, "lone")
    await _opens_at_local_hour(any_db, "s1", 19, NOW, days=20)
    await _opens_at_local_hour(any_db, "s2", 19, NOW, days=20)
    await _opens_at_local_hour(any_db, "s3", 8, NOW, days=20)
    async with any_db.session() as session:
        customers = [await session.get(Customer, c) for c in ("s1", "s2", "s3", "lone")]
        conn = await session.connection()
        decisions = await preview_send_times(
            conn,
            [c for c in customers if c is not None],
            segment_attribute="segment",
            at=NOW,
            window=timedelta(hours=24),
            quiet=[],
            history=timedelta(days=365),
        )
    hours = [d.send_at.astimezone(BERLIN).hour for d in decisions]
    assert hours == [19, 19, 8, 10]
    assert [d.source for d in decisions] == ["customer", "customer", "customer", "fallback"]
    counts = preview(decisions)
    assert sum(counts.values()) == 4 and max(counts.values()) == 2


async def test_the_example_journey_file_runs(client, db, routed_settings, run_worker, unique_id):
    await _customer(db, unique_id)
    journey = load_journey("optichannel_promo")
    # A new customer has no history on any channel: the ceiling holds nothing back.
    assert journey.max_cost_per_reaction == 0.25
    result = await (await _start(client, db, routed_settings, unique_id, journey)).result()
    sent = [s for s in result.steps if s.status == StepStatus.SENT]
    assert result.outcome == Outcome.EXHAUSTED and len(sent) == 2
    assert result.steps[2].reason == "max_steps 2 reached"
    for step in sent:
        assert step.routing and step.send_reason and step.wait_reason
        local = step.sent_at.astimezone(ZoneInfo("UTC")) if step.sent_at else None
        # No history anywhere: the fallback hour (10:00 in the customer's zone, UTC here).
        assert local is not None and local.hour == 10
