"""A journey's life: who converts it, how often a trigger may start it, the loyalty loop's
rounds, the run index it keeps itself, paged scans, and what its input may hold.

Time-skipping server, real activities, a real SQLite database, the sandbox channels.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.loyalty import LoyaltyActivities
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import JourneyDefinitionError, load_journey
from cascade.journeys.triggers import route_event
from models import search_attributes as sa
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import JourneyInput, Outcome
from models.loyalty import LoyaltyInput, ScanInput
from models.tables import Customer, JourneyRun
from starter import start_journey
from tests.codec import decrypt_history
from tests.helpers import deliveries, eventually, outbox, spec, wait_for_state
from tests.test_journeys_ready import customer, result_of
from worker import build_worker
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop
from workflows.scans import WinbackScan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


async def runs_of(db: Database, workflow_id: str) -> list[JourneyRun]:
    async with db.session() as session:
        found = await session.exec(
            select(JourneyRun).where(JourneyRun.workflow_id == workflow_id).order_by(col(JourneyRun.id))
        )
        return list(found.all())


# ------------------------------------------------------------------ item 4: conversions


async def test_a_purchase_converts_only_the_journeys_whose_convert_on_names_it(
    client, db, settings, run_worker, unique_id, ts_env
):
    await customer(db, ts_env, unique_id, purchase_count=1)
    order = await route_event(
        client, db, unique_id, "order_shipped", {"order_id": "o-1", "status": "shipped"}, settings=settings
    )
    referral = await route_event(client, db, unique_id, "order_delivered", {}, settings=settings)
    welcome = await route_event(client, db, unique_id, "registered", {}, settings=settings)
    [order_id], [referral_id], [welcome_id] = order.started, referral.started, welcome.started
    await wait_for_state(order.handles[order_id], lambda s: s.status == "waiting")

    bought = await route_event(client, db, unique_id, "purchase", {"order_id": "o-2"}, settings=settings)
    assert (bought.converted, bought.exited) == ([welcome_id], [])
    result = await welcome.handles[welcome_id].result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"
    # The transactional and the referral journey go on: a purchase is not their goal.
    for handle in (order.handles[order_id], referral.handles[referral_id]):
        state = await handle.query(CascadeJourney.state)
        assert state.outcome is None and state.reaction is None
    # The referral converts on its own event.
    assert (await route_event(client, db, unique_id, "referral_registered", {}, settings=settings)).converted == [
        referral_id
    ]
    assert (await referral.handles[referral_id].result()).reaction == "converted"
    # Every journey ends before the worker stops: a workflow left with work and no worker
    # would keep the time-skipping server from skipping time for the tests after this one.
    await order.handles[order_id].signal(CascadeJourney.cancel, CancelInput(reason="test over"))
    assert (await order.handles[order_id].result()).reaction is None


# ------------------------------------------------------------------ item 5: once per key


async def test_a_rescan_after_the_winback_ended_starts_nothing(client, db, settings, run_worker, unique_id, ts_env):
    now = await ts_env.get_current_time()
    await customer(db, ts_env, unique_id, purchase_count=2, last_purchase_at=now - timedelta(days=200))
    winback_id = f"journey/winback/{unique_id}/{(now - timedelta(days=200)).date().isoformat()}"

    async def scan(tag: str) -> Any:
        return await client.execute_workflow(
            WinbackScan.run, ScanInput(journey="winback"), id=f"scan-{unique_id}-{tag}", task_queue=settings.task_queue
        )

    assert (await scan("1")).started == 1
    first = await result_of(ts_env, winback_id)
    assert first.outcome == Outcome.EXHAUSTED
    sent = len(await outbox(db, unique_id))
    # Still dormant, still the same lapse: the chain ran once for this key and does not again.
    again = await scan("2")
    assert (again.scanned, again.started, again.not_entered) == (1, 0, 1)
    [run] = await runs_of(db, winback_id)
    assert run.finished_at is not None and run.outcome == "exhausted"
    assert (await client.get_workflow_handle(winback_id).describe()).run_id == run.run_id
    assert len(await outbox(db, unique_id)) == sent


async def test_reentry_lets_a_key_run_again_after_its_time(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    keyed = spec("email", wait="1h", name="promo-test", trigger={"events": ["promo"], "key_property": "code"})
    first = await route_event(client, db, unique_id, "promo", {"code": "A"}, journeys=[keyed], settings=settings)
    await first.handles[first.started[0]].result()
    refused = await route_event(client, db, unique_id, "promo", {"code": "A"}, journeys=[keyed], settings=settings)
    assert refused.started == [] and "once per key" in refused.not_entered["promo-test"]
    other = await route_event(client, db, unique_id, "promo", {"code": "B"}, journeys=[keyed], settings=settings)
    assert other.started == [f"journey/promo-test/{unique_id}/B"]

    [run] = await runs_of(db, first.started[0])
    again = keyed.model_copy(deep=True)
    assert again.trigger is not None
    again.trigger.reentry = timedelta(days=30)
    entered = run.started_at.replace(tzinfo=run.started_at.tzinfo or UTC)
    soon = await route_event(
        client,
        db,
        unique_id,
        "promo",
        {"code": "A"},
        journeys=[again],
        now=entered + timedelta(days=1),
        settings=settings,
    )
    assert soon.started == [] and "again from" in soon.not_entered["promo-test"]
    later = await route_event(
        client,
        db,
        unique_id,
        "promo",
        {"code": "A"},
        journeys=[again],
        now=entered + timedelta(days=31),
        settings=settings,
    )
    assert later.started == first.started
    assert later.handles[first.started[0]].result_run_id != run.run_id
    assert len(await runs_of(db, first.started[0])) == 2
    await other.handles[other.started[0]].result()
    await later.handles[first.started[0]].result()


def test_a_bad_reentry_names_the_file_the_field_and_the_line(tmp_path: Path):
    path = tmp_path / "promo.yaml"
    path.write_text(
        "name: promo\ntrigger:\n  events: [promo_issued]\n  key_property: code\n  reentry: soon\n"
        "steps:\n  - channel: email\n    content: {body: hi}\n"
    )
    with pytest.raises(JourneyDefinitionError) as err:
        load_journey(path)
    assert f"{path}: trigger.reentry (line 5)" in str(err.value)
    path.write_text(path.read_text().replace("soon", "-3d"))
    with pytest.raises(JourneyDefinitionError, match=r"trigger.reentry \(line 5\): .*must be positive"):
        load_journey(path)
    path.write_text(path.read_text().replace("-3d", "180d"))
    loaded = load_journey(path).trigger
    assert loaded is not None and loaded.reentry == timedelta(days=180)
    # Without one, a journey's input reads as before re-entry existed (workers of the
    # previous release, which refuse unknown fields, still run it).
    assert '"reentry"' not in load_journey("winback").model_dump_json()


# ------------------------------------------------------------------ item 7: the loyalty loop

LOOP = spec(
    "email",
    "sms",
    wait="1h",
    name="loop",
    convert_on=["purchase"],
    exit_on=["loop_left"],
    loop={"points_per_purchase": 100, "idle_timeout": "2h"},
)


def purchase(event_id: str) -> EngagementInput:
    return EngagementInput(type=EngagementType.CONVERTED, event_id=event_id)


async def in_round(client: Client, handle: Any, number: int) -> Any:
    async def check() -> Any:
        state = await handle.query(LoyaltyLoop.state)
        return state if state.round == number else None

    state = await eventually(check)
    await wait_for_state(client.get_workflow_handle(f"{handle.id}/round-{number}"), lambda s: s.status == "waiting")
    return state


async def status_attribute(handle: Any) -> str | None:
    status: str | None = (await handle.describe()).typed_search_attributes.get(sa.JOURNEY_STATUS)
    return status


async def test_a_purchase_while_the_round_starts_counts_and_no_message_goes_out(
    client, db, settings, run_worker, unique_id, ts_env, caplog
):
    caplog.set_level(logging.WARNING)
    await customer(db, ts_env, unique_id)
    # Signal-with-start: the purchase is there before the round's cascade is.
    handle = await client.start_workflow(
        LoyaltyLoop.run,
        LoyaltyInput(journey=JourneyInput(spec=LOOP, customer_id=unique_id)),
        id=f"journey/loop/{unique_id}",
        task_queue=settings.task_queue,
        start_signal="engagement",
        start_signal_args=[purchase("buy-0")],
    )
    state = await in_round(client, handle, 2)
    assert state.points_accrued == 100
    # Round 1 never sent a message: the customer had already bought.
    assert await deliveries(db, f"{handle.id}/round-1") == []
    assert [m.channel for m in await outbox(db, unique_id)] == ["email"]  # round 2's
    await route_event(client, db, unique_id, "loop_left", {}, journeys=[LOOP], settings=settings)
    result = await handle.result()
    assert result.status == "finished" and result.points_accrued == 100
    assert await status_attribute(handle) == "finished"
    # The loop recorded its run itself (no starter was involved): one row for the chain.
    [run] = await runs_of(db, handle.id)
    assert run.run_id == handle.result_run_id and run.workflow_type == "LoyaltyLoop" and run.outcome == "cancelled"
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


async def test_every_purchase_of_a_round_counts_once(client, db, settings, run_worker, unique_id, ts_env, caplog):
    caplog.set_level(logging.WARNING)
    await customer(db, ts_env, unique_id)
    handle = await start_journey(unique_id, LOOP, client=client, db=db, settings=settings)
    await in_round(client, handle, 1)
    assert await status_attribute(handle) == "running"
    # Two purchases in one round, and the first one delivered twice (the outbox is at least once).
    for event_id in ("buy-1", "buy-2", "buy-1"):
        await handle.signal(LoyaltyLoop.engagement, purchase(event_id))
    state = await in_round(client, handle, 2)
    assert state.points_accrued == 200
    # Round 2: nobody buys; its cascade runs out and the loop waits for a purchase.
    await ts_env.sleep(timedelta(hours=2, minutes=30))
    waiting = await handle.query(LoyaltyLoop.state)
    assert waiting.status == "waiting for a purchase" and await status_attribute(handle) == "waiting"
    # The same purchase again, carried into this round: still counted once.
    await handle.signal(LoyaltyLoop.engagement, purchase("buy-2"))
    result = await handle.result()
    assert result.outcome_reason == "no purchase within the idle timeout" and result.points_accrued == 200
    assert await status_attribute(handle) == "finished"
    async with db.session() as session:
        bought = await session.get(Customer, unique_id)
    assert bought is not None and bought.loyalty_points == 200
    [run] = await runs_of(db, handle.id)
    assert run.finished_at is not None and run.outcome == "idle"
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


async def test_starter_status_shows_a_loop_and_its_round(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    handle = await start_journey(unique_id, LOOP, client=client, db=db, settings=settings)
    await in_round(client, handle, 1)
    env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host, "COLUMNS": "200"}
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        "status",
        handle.id,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await cli.communicate()
    text = out.decode()
    assert cli.returncode == 0, text
    assert f"{handle.id}: loyalty loop, round 1, running; 0 points accrued" in text
    assert f"{handle.id}/round-1: waiting" in text and "email" in text and "sent" in text
    await handle.signal(LoyaltyLoop.cancel, CancelInput(reason="test over"))
    await handle.result()


# ------------------------------------------------------------------ item 8: runs record themselves


async def test_a_journey_records_its_run_even_if_the_starter_died(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    journey = spec("email", "sms", wait="1h", convert_on=["purchase"])
    # Started as start_journey would, but its process "died" before writing journey_runs.
    handle = await client.start_workflow(
        CascadeJourney.run,
        JourneyInput(spec=journey, customer_id=unique_id),
        id=f"journey/test/{unique_id}",
        task_queue=settings.task_queue,
    )

    async def recorded() -> JourneyRun | None:
        rows = await runs_of(db, handle.id)
        return rows[0] if rows else None

    run = await eventually(recorded)
    assert (run.run_id, run.journey, run.customer_id) == (handle.result_run_id, "test", unique_id)
    assert run.convert_on == ["purchase"] and run.finished_at is None
    await wait_for_state(handle, lambda s: s.status == "waiting")
    # No journey file is named "test": the run's own snapshot says what converts it.
    routed = await route_event(client, db, unique_id, "purchase", {}, journeys=[], settings=settings)
    assert routed.converted == [handle.id]
    assert (await handle.result()).outcome == Outcome.REACTED
    [run] = await runs_of(db, handle.id)
    assert run.finished_at is not None and run.outcome == "reacted"


# ------------------------------------------------------------------ item 9: paged scans


async def test_a_scan_pages_heartbeats_its_place_and_resumes_there(client, db, settings, run_worker, unique_id, ts_env):
    now = await ts_env.get_current_time()
    ids = [f"{unique_id}-{i}" for i in range(1, 6)]
    for cid in ids:
        await customer(
            db, ts_env, cid, channels=("email",), purchase_count=1, last_purchase_at=now - timedelta(days=400)
        )
    settings.scan_page_size = 2
    acts = LoyaltyActivities(db, client, settings)
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    env.info = dataclasses.replace(env.info, workflow_id=f"scan-{unique_id}", workflow_run_id="run-1")

    result = await env.run(acts.scan_winback, ScanInput(journey="winback", at=now))
    assert (result.scanned, result.started, result.exited, result.at) == (5, 5, 0, now)
    assert [b["cursor"] for b in beats] == [ids[1], ids[3], ids[4]]
    assert beats[-1]["result"]["started"] == 5
    # A retry after the worker died on the last page: only that page is read again.
    beats.clear()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[{"cursor": ids[3], "result": beats_of(4)}])
    resumed = await env.run(acts.scan_winback, ScanInput(journey="winback", at=now))
    assert [b["cursor"] for b in beats] == [ids[4]]
    assert (resumed.scanned, resumed.started) == (5, 5)
    lapse = (now - timedelta(days=400)).date().isoformat()
    for cid in ids:  # one journey each, started by the first pass
        assert len(await runs_of(db, f"journey/winback/{cid}/{lapse}")) == 1
        journey = client.get_workflow_handle(f"journey/winback/{cid}/{lapse}")
        await wait_for_state(journey, lambda s: s.status == "waiting")
        await journey.signal(CascadeJourney.cancel, CancelInput(reason="test over"))
        assert (await journey.result())["outcome"] == "cancelled"


def beats_of(done: int) -> dict[str, Any]:
    return {"scanned": done, "started": done, "exited": 0, "not_entered": 0, "at": None}


# ------------------------------------------------------------------ item 16: what the input holds


async def test_a_raw_history_holds_only_the_event_properties_the_journey_uses(
    client, db, settings, run_worker, unique_id, ts_env
):
    await customer(db, ts_env, unique_id)
    private = {"email": "eve.private@example.org", "phone": "+447700900123", "street": "221B Baker Street"}
    routed = await route_event(
        client,
        db,
        unique_id,
        "cart_abandoned",
        {"cart_id": "c-77", "cart_value": 150, "coupon": "NOT-USED", **private},
        settings=settings,
    )
    handle = routed.handles[routed.started[0]]
    await ts_env.sleep(timedelta(hours=2))
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.cancel, CancelInput(reason="test over"))
    await handle.result()
    # Decrypted (issue 17): the context must be minimal even for those holding the keys.
    history = await decrypt_history(await handle.fetch_history())
    [payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert json.loads(payload.data)["context"] == {"cart_id": "c-77", "cart_value": 150}
    raw = history_text(json.loads(history.to_json()))
    assert '"cart_value":150' in raw  # the payloads were read
    for value in [*private.values(), "NOT-USED"]:
        assert value not in raw


def history_text(node: Any) -> str:
    """Every string in a history's JSON, with each payload's data decoded (it is base64)."""
    if isinstance(node, dict):
        parts = [history_text(v) for k, v in node.items() if k != "data"]
        if isinstance(node.get("data"), str) and "metadata" in node:
            parts.append(base64.b64decode(node["data"]).decode(errors="replace"))
        return "\n".join(parts)
    if isinstance(node, list):
        return "\n".join(history_text(v) for v in node)
    return str(node)
