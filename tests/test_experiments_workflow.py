"""Experiments in CascadeJourney on the time-skipping server: real activities, SQLite, sandbox.

Arms are found by the same hash the activity uses, so each test knows which arm a
customer id lands in before it starts the journey.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlmodel import select
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from analytics.assignment import assign_variant
from bench.experiment_simulation import simulate
from cascade.events.outbox import deliver
from cascade.events.service import record_app_event
from cascade.experiments.results import experiment_report
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from models import search_attributes as sa
from models.events import AppEvent
from models.journey import CONTROL_ARM, Experiment, JourneySpec, Outcome, StepStatus
from models.tables import ExperimentAssignment
from starter import start_journey
from tests.codec import CODEC_CONVERTER
from tests.conftest import seed
from tests.helpers import deliveries, original_links, outbox, spec, wait_for_state

# The control arm waits out a 7-day window on the skipped clock: a journey another module
# left with activities due would freeze the shared server's clock under it (the suite's
# xdist workers run modules in a different order than one process did), so a server of its own.
from tests.own_server import own_client, own_ts_env  # noqa: F401
from worker import build_worker
from workflows.registry import WORKFLOWS


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


def ids_by_arm(experiment: Experiment, prefix: str) -> dict[str, str]:
    """One customer id per arm of `experiment`, found by the assignment hash."""
    found: dict[str, str] = {}
    arms = set(experiment.planned_split())
    i = 0
    while set(found) != arms:
        cid = f"{prefix}-{i}"
        found.setdefault(assign_variant(experiment.name, cid, experiment.weights, experiment.control), cid)
        i += 1
    return found


async def assert_replays(handle: WorkflowHandle[Any, Any]) -> None:
    history = await handle.fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=CODEC_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def assignments(db: Database, experiment: str) -> dict[str, str]:
    async with db.session() as session:
        rows = (
            await session.exec(select(ExperimentAssignment).where(ExperimentAssignment.experiment == experiment))
        ).all()
    return {r.customer_id: r.variant for r in rows}


def with_experiment_name(journey: JourneySpec, name: str) -> JourneySpec:
    """The journey with its experiment renamed: each test its own experiment on the shared server."""
    assert journey.experiment is not None
    return journey.model_copy(update={"experiment": journey.experiment.model_copy(update={"name": name})})


async def test_subject_line_test_sends_each_arm_its_subject_and_holds_the_control_out(
    client, db, settings, run_worker, unique_id
):
    journey = with_experiment_name(load_journey("sale_subject_test"), f"subj-{unique_id}")
    assert journey.experiment is not None
    arms = ids_by_arm(journey.experiment, unique_id)
    handles = {}
    for arm, cid in arms.items():
        await seed(db, cid, name="Ann", email=f"{cid}@example.com")
        handles[arm] = await start_journey(cid, journey, client=client, db=db, settings=settings)
    results = {arm: await h.result() for arm, h in handles.items()}

    # Each arm walked its own content; the control group got nothing and ended held_out.
    for arm in ("plain", "personal"):
        assert results[arm].variant == arm and results[arm].outcome == Outcome.EXHAUSTED
    assert [m.subject for m in await outbox(db, arms["plain"])] == ["Spring sale: 20% off everything"]
    assert [m.subject for m in await outbox(db, arms["personal"])] == ["Ann, your 20% off is waiting"]
    control = results[CONTROL_ARM]
    assert control.variant == CONTROL_ARM and control.outcome == Outcome.HELD_OUT
    assert control.steps == [] and await outbox(db, arms[CONTROL_ARM]) == []
    assert await deliveries(db, handles[CONTROL_ARM].id) == []
    # Its conversion window (7 days) was observed before it ended.
    assert control.finished_at - control.started_at >= timedelta(days=7)

    # The arm is recorded, on the delivery row, in utm_content and in the Variant attribute.
    assert await assignments(db, journey.experiment.name) == {cid: arm for arm, cid in arms.items()}
    for arm in ("plain", "personal"):
        [row] = await deliveries(db, handles[arm].id)
        assert row.variant == arm
        [link] = await original_links(db, row.idempotency_key)
        assert parse_qs(urlsplit(link).query)["utm_content"] == [f"step0-{arm}"]
    for arm, handle in handles.items():
        assert (await handle.describe()).typed_search_attributes.get(sa.VARIANT) == arm
        await assert_replays(handle)


async def test_the_state_query_says_the_variant_while_it_runs(client, db, settings, run_worker, unique_id):
    journey = with_experiment_name(load_journey("sale_subject_test"), f"state-{unique_id}")
    assert journey.experiment is not None
    cid = ids_by_arm(journey.experiment, unique_id)["personal"]
    await seed(db, cid, email=f"{cid}@example.com")
    handle = await start_journey(cid, journey, client=client, db=db, settings=settings)
    state = await wait_for_state(handle, lambda s: s.status == "waiting")
    assert state.variant == "personal" and state.steps[0].status == StepStatus.SENT
    # Left running, its timer would hold the shared time-skipping server's clock for the next test.
    await handle.terminate("test done")


async def test_the_arm_is_stable_across_re_entry_and_a_control_conversion_is_counted(
    client, db, settings, run_worker, unique_id
):
    journey = with_experiment_name(load_journey("sale_subject_test"), f"reent-{unique_id}")
    assert journey.experiment is not None
    cid = ids_by_arm(journey.experiment, unique_id)[CONTROL_ARM]
    await seed(db, cid, email=f"{cid}@example.com")
    handle = await start_journey(cid, journey, client=client, db=db, settings=settings)
    await wait_for_state(handle, lambda s: s.status == "held_out")
    # A purchase during the hold-out: the conversion is noted, the outcome stays held_out.
    # The shop's purchase, as POST /v1/events stores and signals it.
    event = AppEvent(event_id=f"order-{cid}", customer_id=cid, type="purchase", properties={"amount": 40})
    await deliver(client, db, (await record_app_event(db, "shop", event, journeys=[journey])).rows)
    first = await handle.result()
    assert first.outcome == Outcome.HELD_OUT and first.reaction == "converted"
    assert "converted" in (first.outcome_reason or "")

    # Re-entry after the run ended (a new run of the same id): the same arm, still one row.
    again = await start_journey(cid, journey, client=client, db=db, settings=settings)
    second = await again.result()
    assert second.variant == CONTROL_ARM and second.outcome == Outcome.HELD_OUT
    assert await assignments(db, journey.experiment.name) == {cid: CONTROL_ARM}

    report = await experiment_report(db, journey.experiment.name)
    control = next(line for line in report.funnel if line.variant == CONTROL_ARM)
    assert (control.recipients, control.sent, control.converted, control.revenue) == (1, 0, 1, 40.0)


async def test_a_journey_level_variant_walks_its_own_chain(client, db, settings, run_worker, unique_id):
    base = spec("email", wait="1h", name="chains").model_dump(by_alias=True)
    base["experiment"] = {
        "name": f"chain-{unique_id}",
        "variants": [
            {"name": "email-only"},
            {
                "name": "sms-then-email",
                "steps": [
                    {"channel": "sms", "wait": "1h", "content": {"body": "sms: hi {{ name }}"}},
                    {"channel": "email", "wait": "1h", "content": {"subject": "Again", "body": "email: hi"}},
                ],
            },
        ],
    }
    journey = JourneySpec.model_validate(base)
    assert journey.experiment is not None
    arms = ids_by_arm(journey.experiment, unique_id)
    results, sent = {}, {}
    for n, (arm, cid) in enumerate(arms.items()):
        # Distinct phones: profiles sharing a contact point are merged into one customer.
        await seed(db, cid, email=f"{cid}@example.com", sms=f"+1415555267{n}")
        handle = await start_journey(cid, journey, client=client, db=db, settings=settings)
        results[arm] = await handle.result()
        sent[arm] = [(d.channel, d.variant) for d in await deliveries(db, handle.id)]
    assert [s.channel for s in results["email-only"].steps] == ["email"]
    assert [s.channel for s in results["sms-then-email"].steps] == ["sms", "email"]
    assert sent == {
        "email-only": [("email", "email-only")],
        "sms-then-email": [("sms", "sms-then-email"), ("email", "sms-then-email")],
    }


async def test_bandit_decisions_are_recorded_and_replay(client, db, settings, run_worker, unique_id):
    journey = with_experiment_name(load_journey("sale_subject_test"), f"bandit-{unique_id}")
    assert journey.experiment is not None
    journey = journey.model_copy(
        update={"experiment": journey.experiment.model_copy(update={"mode": "bandit", "control": 0.0})}
    )
    assert journey.experiment is not None
    handles = []
    for i in range(4):
        cid = f"{unique_id}-{i}"
        await seed(db, cid, email=f"{cid}@example.com")
        handles.append(await start_journey(cid, journey, client=client, db=db, settings=settings))
    results = [await h.result() for h in handles]
    async with db.session() as session:
        rows = (
            await session.exec(
                select(ExperimentAssignment).where(ExperimentAssignment.experiment == journey.experiment.name)
            )
        ).all()
    assert len(rows) == 4
    for row, result in zip(sorted(rows, key=lambda r: r.customer_id), results, strict=True):
        assert row.variant == result.variant and row.variant in ("plain", "personal")
        # The split each decision was made under is kept with it.
        assert row.allocation is not None and abs(sum(row.allocation.values()) - 1.0) < 1e-9
    for handle in handles:
        await assert_replays(handle)


async def test_the_simulated_population_report_comes_from_the_workflows(client, db, settings, run_worker):
    """The README's report is produced by bench/experiment_simulation.py: the same code, fewer customers."""
    # A fixed experiment name and customer prefix fix the split (2 hold-outs, 18 plain, 20
    # personal). With random ones, about 1 run in 70 put none of the 40 in the 10 % hold-out
    # (0.9**40), and a report without a control arm has no statistics to check.
    journey = with_experiment_name(load_journey("sale_subject_test"), "sim-report")
    report = await simulate(client, db, settings, 40, journey=journey, prefix="report")
    assert {line.variant: line.recipients for line in report.funnel} == {CONTROL_ARM: 2, "plain": 18, "personal": 20}
    assert sum(line.recipients for line in report.funnel) == 40
    by_arm = {line.variant: line for line in report.funnel}
    assert by_arm[CONTROL_ARM].sent == 0 and by_arm[CONTROL_ARM].cost == 0.0
    for arm in ("plain", "personal"):
        assert by_arm[arm].sent == by_arm[arm].recipients
    assert report.stats is not None and report.stats.sample_ratio is not None
