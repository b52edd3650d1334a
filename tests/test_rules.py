"""Step rules: pure functions, the check_contact activity on a real database, and the
cascade holding a step through quiet hours on a durable timer."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from activities.journey import JourneyActivities
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import JourneyDefinitionError, estimate_cost, load_journey
from cascade.journeys.rules import cap_frees_at, condition_holds, quiet_hours_end, stay_channels
from cascade.profiles.service import upsert_customer
from channels.registry import build_channels
from models.activities import CheckContactInput, StepRules
from models.journey import ChannelName, Condition, FrequencyCap, QuietHours, StepStatus
from models.profiles import ContactIn, CustomerProfile
from models.tables import Delivery, Topic
from starter import start_journey
from tests.helpers import spec
from worker import build_worker

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NIGHT = QuietHours(start=time(21), end=time(9))


def test_quiet_hours_over_midnight_in_the_customers_zone():
    from zoneinfo import ZoneInfo

    tokyo = ZoneInfo("Asia/Tokyo")  # 12:00 UTC is 21:00 in Tokyo: quiet until 09:00 local
    assert quiet_hours_end(NIGHT, "sms", tokyo, NOW) == datetime(2026, 3, 11, 0, 0, tzinfo=UTC)
    assert quiet_hours_end(NIGHT, "sms", ZoneInfo("UTC"), NOW) is None
    only_sms = QuietHours(start=time(21), end=time(9), channels=[ChannelName.SMS])
    assert quiet_hours_end(only_sms, "email", tokyo, NOW) is None


def test_frequency_cap_frees_when_the_oldest_send_leaves_the_window():
    cap = FrequencyCap(max=3, per=timedelta(days=7))
    sends = [NOW - timedelta(days=d) for d in (6, 2, 1)]
    assert cap_frees_at(cap, sends, NOW) == NOW + timedelta(days=1)
    assert cap_frees_at(cap, sends[1:], NOW) is None
    assert cap_frees_at(cap, [NOW - timedelta(days=8), *sends[1:]], NOW) is None


def test_stay_where_active():
    journey = ["email", "telegram", "sms"]
    recent = [("email", NOW - timedelta(days=3)), ("sms", NOW - timedelta(days=100))]
    assert stay_channels(recent, NOW, 30, journey) == {"email"}
    # Only ever reacted to push, long ago: push only -- if the journey has push.
    push_only = [("fcm", NOW - timedelta(days=300))]
    assert stay_channels(push_only, NOW, 30, ["fcm", "email"]) == {"fcm"}
    assert stay_channels(push_only, NOW, 30, journey) is None
    assert stay_channels([], NOW, 30, journey) is None


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"field": "purchase_count", "op": "lt", "value": 3}, True),
        ({"field": "city", "op": "in", "value": ["Oslo", "Riga"]}, True),
        ({"field": "event.cart_value", "op": "gte", "value": 100}, False),
        ({"field": "shoe_size", "op": "eq", "value": 42}, True),
        ({"field": "last_purchase_at", "op": "older_than", "value": "180d"}, True),
        ({"field": "last_purchase_at", "op": "within", "value": "180d"}, False),
        ({"field": "loyalty_points", "op": "gt", "value": "x"}, False),
        ({"field": "nickname", "op": "missing"}, True),
    ],
)
def test_conditions(cond, expected):
    profile = {
        "purchase_count": 1,
        "city": "Riga",
        "attributes": {"shoe_size": 42},
        "shoe_size": 42,
        "last_purchase_at": NOW - timedelta(days=200),
        "loyalty_points": 5,
    }
    assert condition_holds(Condition.model_validate(cond), profile, {"cart_value": 40}, NOW) is expected


def test_errors_name_file_line_and_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nfrequency_cap: {max: 0, per: 7d}\nsteps:\n  - channel: email\n    content: {body: hi}\n"
        "    if:\n      - {field: x, op: older_than, value: soon}\n"
    )
    with pytest.raises(JourneyDefinitionError) as info:
        load_journey(bad)
    text = str(info.value)
    assert "bad.yaml: frequency_cap.max (line 2)" in text
    assert "bad.yaml: steps.0.if.0 (line 7)" in text


def test_cost_estimate_cheapest_first():
    journey = load_journey("welcome")
    expected, worst, shares = estimate_cost(journey, {"email": 0.001, "telegram": 0.002, "sms": 0.05})
    assert worst == pytest.approx(0.053)
    assert shares[0] == 1.0 and shares[1] == pytest.approx(0.8) and shares[2] == pytest.approx(0.76)
    assert expected == pytest.approx(0.001 + 0.8 * 0.002 + 0.76 * 0.05)


async def test_check_contact_applies_cap_quiet_hours_and_stay(any_db: Database):
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="r1",
            name="Ann",
            timezone="Asia/Tokyo",
            contacts=[
                ContactIn(channel="email", address="a@example.com"),
                ContactIn(channel="sms", address="+14155552671"),
            ],
        ),
    )
    acts = JourneyActivities(any_db, build_channels(Settings(), any_db), Settings())
    async with any_db.session() as session:
        for i, days in enumerate((1, 2, 3)):
            session.add(
                Delivery(
                    idempotency_key=f"k{i}",
                    workflow_id="w",
                    run_id="r",
                    journey="j",
                    step=i,
                    customer_id="r1",
                    channel="email",
                    topic="marketing",
                    status="sent",
                    sent_at=NOW - timedelta(days=days),
                    opened_at=NOW - timedelta(days=days),
                )
            )
        await session.commit()

    def check(channel: str, **rules: object) -> CheckContactInput:
        return CheckContactInput(
            customer_id="r1",
            channel=channel,
            topic=Topic.MARKETING,
            rules=StepRules(at=NOW, journey_channels=["email", "sms"], **rules),
        )

    capped = await acts.check_contact(check("email", frequency_cap=FrequencyCap(max=3, per=timedelta(days=7))))
    assert not capped.usable and capped.wake_at == NOW + timedelta(days=4)  # the oldest of the 3 leaves the window
    quiet = await acts.check_contact(check("email", quiet_hours=NIGHT))
    assert quiet.wake_at == datetime(2026, 3, 11, 0, 0, tzinfo=UTC)
    stay = await acts.check_contact(check("sms", stay_active_days=30))
    assert not stay.usable and stay.wake_at is None and stay.reason == "customer is active on email"
    assert (await acts.check_contact(check("email", stay_active_days=30))).usable
    transactional = check("email", frequency_cap=FrequencyCap(max=3, per=timedelta(days=7)))
    transactional.topic = Topic.TRANSACTIONAL
    assert (await acts.check_contact(transactional)).usable


async def test_quiet_hours_hold_the_step_on_a_durable_timer(client, db, settings, ts_env, unique_id):
    now = await ts_env.get_current_time()
    # A quiet window that started an hour ago and ends in three hours (customer in UTC).
    start, end = (now - timedelta(hours=1)).time(), (now + timedelta(hours=3)).time()
    await upsert_customer(
        db,
        CustomerProfile(
            id=unique_id, name="Ann", timezone="UTC", contacts=[ContactIn(channel="sms", address="+14155552671")]
        ),
    )
    journey = spec("sms", quiet_hours={"start": start.isoformat(), "end": end.isoformat()})
    async with build_worker(client, settings, db):
        handle = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
        result = await handle.result()
    assert result.steps[0].status == StepStatus.SENT
    assert result.steps[0].sent_at >= now + timedelta(hours=2, minutes=59)
