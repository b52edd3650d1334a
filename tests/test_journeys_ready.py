"""The ready-made journeys in journeys/, end to end on the time-skipping server.

Real activities, a real SQLite database and the sandbox channels; events go through
`route_event` exactly as the webhooks and the CLI send them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from cascade.journeys.triggers import route_event
from cascade.profiles.service import upsert_customer
from models.events import EngagementInput, EngagementType
from models.journey import Outcome, StepStatus
from models.loyalty import ScanInput
from models.profiles import ContactIn, CustomerProfile
from models.tables import Customer
from tests.helpers import original_links, outbox, wait_for_state
from worker import build_worker
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop
from workflows.scans import BirthdayScan, WinbackScan

ALL = {
    "email": "{cid}@example.com",
    "telegram": "100200300",
    "sms": "+14155552671",
    "fcm": "tok-{cid}",
    "webpush": "wp-{cid}",
}


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


async def midday_zone(env: WorkflowEnvironment) -> str:
    """A time zone where it is about noon now, so quiet hours never interfere by accident."""
    offset = 12 - (await env.get_current_time()).hour
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


async def customer(
    db: Database, env: WorkflowEnvironment, cid: str, channels: tuple[str, ...] = tuple(ALL), **fields: Any
) -> None:
    contacts = [ContactIn(channel=ch, address=ALL[ch].format(cid=cid)) for ch in channels]
    fields.setdefault("timezone", await midday_zone(env))
    await upsert_customer(db, CustomerProfile(id=cid, name="Ann", contacts=contacts, **fields))


async def result_of(env: Any, workflow_id: str) -> Any:
    """The result of a journey an activity started (time skips while we wait, as in handle.result())."""
    async with env.time_skipping_unlocked():
        return await env.client.get_workflow_handle_for(CascadeJourney.run, workflow_id).result()


async def route(client: Client, db: Database, settings: Settings, cid: str, event: str, **props: Any):
    return await route_event(client, db, cid, event, props, settings=settings)


async def test_abandoned_cart_small_cart_gets_no_sms(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    routed = await route(client, db, settings, unique_id, "cart_abandoned", cart_id="c1", cart_value=40)
    assert routed.started == [f"journey/abandoned_cart/{unique_id}/c1"]
    result = await (routed.handles[routed.started[0]]).result()

    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.SENT, StepStatus.SKIPPED]
    assert result.steps[2].reason == "condition not met: event.cart_value gte 100"
    # The plain delay came before the first send.
    assert result.steps[0].sent_at - result.started_at >= timedelta(hours=1)
    sent = await outbox(db, unique_id)
    assert [m.channel for m in sent] == ["email", "fcm"]
    assert "(40)" in sent[0].body and "/t/c/" in sent[0].body
    # The cart link from the event went out as a tracked redirect to the cart.
    assert any("/cart/c1" in link for link in await original_links(db, sent[0].idempotency_key))


async def test_abandoned_cart_ends_on_purchase(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    routed = await route(client, db, settings, unique_id, "cart_abandoned", cart_id="c2", cart_value=250)
    handle = routed.handles[routed.started[0]]
    await ts_env.sleep(timedelta(hours=2))  # past the plain 1h delay before the email
    await wait_for_state(handle, lambda s: s.status == "waiting" and s.current_step == 0)

    ended = await route(client, db, settings, unique_id, "purchase", order_id="o1")
    assert (ended.converted, ended.exited) == ([handle.id], [])
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"
    assert [m.channel for m in await outbox(db, unique_id)] == ["email"]


async def test_order_status_is_transactional_push_email_sms(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    # No marketing consent anywhere: order updates still go out (a service, not marketing).
    await upsert_customer(
        db,
        CustomerProfile(
            id=unique_id,
            contacts=[ContactIn(channel=ch, address=ALL[ch].format(cid=unique_id), consent=False) for ch in ALL],
        ),
    )
    routed = await route(client, db, settings, unique_id, "order_shipped", order_id="o-7", status="shipped")
    result = await (routed.handles[routed.started[0]]).result()
    assert [s.channel for s in result.steps] == ["fcm", "email", "sms"]
    assert all(s.status == StepStatus.SENT for s in result.steps)
    assert (await outbox(db, "+14155552671"))[-1].body == "Order o-7: shipped."


async def test_order_status_push_delivered_stops_it(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    routed = await route(client, db, settings, unique_id, "order_ready", order_id="o-8", status="ready")
    handle = routed.handles[routed.started[0]]
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.DELIVERED, step=0))
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reacted_step == 0
    assert [m.channel for m in await outbox(db, unique_id)] == ["fcm"]


async def test_promo_cascade_runs_until_the_code_expires(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    expires = await ts_env.get_current_time() + timedelta(days=3)
    routed = await route(
        client, db, settings, unique_id, "promo_issued", code="SPRING20", expires_at=expires.isoformat()
    )
    result = await (routed.handles[routed.started[0]]).result()
    assert result.outcome == Outcome.DEADLINE
    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.SENT, StepStatus.PENDING]
    assert abs(result.finished_at - expires) < timedelta(minutes=1)


async def test_welcome_is_not_for_loyal_customers(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id, purchase_count=7)
    routed = await route(client, db, settings, unique_id, "registered")
    assert routed.started == []
    assert routed.not_entered == {"welcome": "entry condition not met: purchase_count lt 3"}


async def test_welcome_converts_on_purchase(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    routed = await route(client, db, settings, unique_id, "registered")
    handle = routed.handles[routed.started[0]]
    await wait_for_state(handle, lambda s: s.status == "waiting")
    converted = await route(client, db, settings, unique_id, "purchase")
    assert converted.converted == [handle.id]
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"


async def test_abandoned_browse_two_cheap_channels(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id, channels=("email", "webpush"))
    routed = await route(client, db, settings, unique_id, "product_viewed", product_id="p9", product_name="Red shoes")
    result = await (routed.handles[routed.started[0]]).result()
    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.SENT]
    assert (await outbox(db, unique_id))[0].subject == "Still looking at Red shoes?"


async def test_referral_invites_buyers_only(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id, purchase_count=0)
    assert (await route(client, db, settings, unique_id, "order_delivered")).started == []
    await upsert_customer(db, CustomerProfile(id=unique_id, purchase_count=1))
    routed = await route(client, db, settings, unique_id, "order_delivered")
    handle = routed.handles[routed.started[0]]
    await ts_env.sleep(timedelta(days=2, hours=1))  # the invitation waits 2 days after delivery
    await wait_for_state(handle, lambda s: s.status == "waiting")
    assert (await route(client, db, settings, unique_id, "referral_registered")).converted == [handle.id]
    assert (await handle.result()).outcome == Outcome.REACTED
    invite = (await outbox(db, unique_id))[0]
    assert any(f"/r/{unique_id}" in link for link in await original_links(db, invite.idempotency_key))


async def test_birthday_scan_starts_the_birthday_journey_once(client, db, settings, run_worker, unique_id, ts_env):
    now = await ts_env.get_current_time()
    await customer(db, ts_env, unique_id, birth_date=now.date().replace(year=1990))
    await customer(db, ts_env, f"{unique_id}-other", birth_date=(now + timedelta(days=2)).date().replace(year=1990))
    scan = ScanInput(journey="birthday", at=now)
    first = await client.execute_workflow(
        BirthdayScan.run, scan, id=f"scan-bday-{unique_id}", task_queue=settings.task_queue
    )
    assert (first.scanned, first.started, first.at) == (1, 1, now)
    result = await result_of(ts_env, f"journey/birthday/{unique_id}/{now.year}")
    assert result.steps[0].status == StepStatus.SENT
    assert (await outbox(db, unique_id))[0].subject == "Happy birthday, Ann!"


async def test_winback_after_six_months_without_purchase(client, db, settings, run_worker, unique_id, ts_env):
    start = await ts_env.get_current_time()
    await customer(db, ts_env, unique_id, purchase_count=2, last_purchase_at=start)
    news = await route(client, db, settings, unique_id, "news_issue", issue="1")
    assert len(news.started) == 1

    async def scan(tag: str) -> Any:
        return await client.execute_workflow(
            WinbackScan.run,
            ScanInput(journey="winback"),
            id=f"scan-wb-{unique_id}-{tag}",
            task_queue=settings.task_queue,
        )

    # Three months on: still an active customer, nothing happens (the news waits 7d and ends).
    await ts_env.sleep(timedelta(days=90))
    assert (await scan("3m")).started == 0
    # Seven months on: dormant. A news issue no longer enters, the scan starts win-back.
    await ts_env.sleep(timedelta(days=120))
    late_news = await route_event(
        client, db, unique_id, "news_issue", {"issue": "30"}, settings=settings, now=await ts_env.get_current_time()
    )
    assert late_news.not_entered == {"news": "entry condition not met: last_purchase_at within 15552000.0"}
    found = await scan("7m")
    assert (found.started, found.exited) == (1, 0)  # the news journey of 7 months ago has ended
    winback_id = f"journey/winback/{unique_id}/{start.date().isoformat()}"
    first_run = (await client.get_workflow_handle(winback_id).describe()).run_id
    # Scanning again the same lapse is a no-op: the same journey, not a second one.
    assert (await scan("7m-again")).started == 1
    assert (await client.get_workflow_handle(winback_id).describe()).run_id == first_run
    result = await result_of(ts_env, winback_id)
    assert [s.status for s in result.steps] == [StepStatus.SENT] * 3
    assert result.started_at - start > timedelta(days=180)
    assert (await outbox(db, "+14155552671"))[-1].body.startswith("Ann, 20% off")


async def test_loyalty_loop_rounds_continue_as_new(client, db, settings, run_worker, unique_id, ts_env):
    await customer(db, ts_env, unique_id)
    routed = await route(client, db, settings, unique_id, "loyalty_joined")
    handle = routed.handles[routed.started[0]]
    run_ids = set()
    for round_ in (1, 2, 3):
        # Wait for this round's cascade to send its first message, then buy.
        async def in_round(r: int = round_) -> bool:
            state = await handle.query(LoyaltyLoop.state)
            return bool(state.round == r)

        for _ in range(300):
            if await in_round():
                break
            await ts_env.sleep(timedelta(seconds=1))
        child = client.get_workflow_handle(f"{handle.id}/round-{round_}")
        await wait_for_state(child, lambda s: s.status == "waiting")
        run_ids.add((await handle.describe()).run_id)
        assert (await route(client, db, settings, unique_id, "purchase")).converted == [handle.id]
    # The fourth round: nobody buys, and the customer leaves the programme. Left only once
    # round 4 has begun: a leave that overtakes the third purchase's continue-as-new
    # rightly ends the loop in round 3.
    for _ in range(300):
        if (await handle.query(LoyaltyLoop.state)).round == 4:
            break
        await ts_env.sleep(timedelta(seconds=1))
    await route(client, db, settings, unique_id, "loyalty_left")
    result = await handle.result()
    assert result.round == 4 and result.points_accrued == 300
    assert len(run_ids) == 3  # one run per round: continue-as-new keeps each history small
    async with db.session() as session:
        points = (await session.exec(select(Customer.loyalty_points).where(Customer.id == unique_id))).one()
    assert points == 300
    bodies = [m.body for m in await outbox(db, f"{unique_id}@example.com")]
    assert "you have 0 points" in bodies[0] and "you have 200 points" in bodies[2]


def test_every_ready_made_journey_validates():
    names = [
        "welcome",
        "abandoned_cart",
        "abandoned_browse",
        "order_status",
        "promo_expiring",
        "loyalty",
        "referral",
        "birthday",
        "winback",
        "news",
        "demo",
    ]
    specs = [load_journey(n) for n in names]
    assert all(s.name == n for s, n in zip(specs, names, strict=True))
    assert all(s.trigger is not None for s in specs if s.name != "demo")
