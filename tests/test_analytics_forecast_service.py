"""Forecast of a journey and backtest of a past campaign from the database, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from analytics.forecast_model import ForecastSettings
from analytics.forecast_service import audience_size, backtest_campaign, channel_history, forecast_journey
from cascade.audiences.service import load_segments
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from models.tables import Customer
from tests.analytics_rows import T0, History

pytestmark = pytest.mark.postgres

PRICES = {"email": 0.001, "telegram": 0.0, "sms": 0.05}
FAST = ForecastSettings(draws=400, seed=7)


def _campaign(h: History, campaign: str, start: datetime, customers: int, clicked_every: int) -> None:
    for i in range(customers):
        who = f"{campaign}-{i}"
        r = h.run("winback", who, campaign=campaign, at=start)
        if i % clicked_every == 0:
            d = h.send(
                r,
                "winback",
                who,
                0,
                "email",
                cost=0.001,
                at=start,
                status="clicked",
                opened_after=timedelta(minutes=1),
                clicked_after=timedelta(minutes=2),
            )
            h.event(who, "purchase", start + timedelta(hours=1), amount=20.0)
            assert d
        else:
            h.send(r, "winback", who, 0, "email", cost=0.001, at=start)
            h.send(
                r,
                "winback",
                who,
                2,
                "sms",
                cost=0.05,
                at=start + timedelta(days=14),
                status="opened",
                opened_after=timedelta(minutes=3),
            )


async def test_history_counts_are_nested_per_channel(any_db: Database) -> None:
    h = History()
    _campaign(h, "spring", T0, 20, 4)
    await h.save(any_db)
    history, notes = await channel_history(any_db)
    email = history["email"]
    assert (email.sent, email.delivered, email.opened, email.clicked, email.converted) == (20, 20, 5, 5, 5)
    assert email.revenue == pytest.approx(100.0)
    assert (history["sms"].sent, history["sms"].opened, history["sms"].clicked) == (15, 15, 0)
    assert notes == []


async def test_forecast_of_a_journey_in_three_ordered_scenarios(any_db: Database) -> None:
    h = History()
    _campaign(h, "spring", T0, 40, 4)
    await h.save(any_db)
    result = await forecast_journey(any_db, load_journey("winback"), PRICES, audience=1000, settings=FAST)
    scenarios = {s.name: s for s in result.forecast.scenarios}
    assert [s.name for s in result.forecast.scenarios] == ["pessimistic", "neutral", "optimistic"]
    assert scenarios["pessimistic"].total.reacted <= scenarios["neutral"].total.reacted
    assert scenarios["neutral"].total.reacted <= scenarios["optimistic"].total.reacted
    assert [step.channel for step in scenarios["neutral"].steps] == ["email", "telegram", "sms"]
    # Telegram has no history at all: its rates are the prior's, and the forecast says so.
    assert "telegram" in result.forecast.assumptions.thin_channels
    assert result.audience_source == "given"


async def test_audience_counted_from_the_entry_conditions(any_db: Database) -> None:
    now = datetime.now(UTC)
    async with any_db.session() as session:
        session.add(Customer(id="dormant", last_purchase_at=now - timedelta(days=300)))
        session.add(Customer(id="recent", last_purchase_at=now - timedelta(days=3)))
        session.add(Customer(id="gone", last_purchase_at=now - timedelta(days=300), erased_at=now))
    assert await audience_size(any_db, load_journey("winback")) == 1
    assert await audience_size(any_db, load_journey("welcome")) == 2  # no entry conditions: every live customer
    result = await forecast_journey(any_db, load_journey("winback"), PRICES, settings=FAST)
    assert result.forecast.audience == 1 and "entry conditions" in result.audience_source


async def test_audience_of_a_segment_is_its_compiled_count(any_db: Database) -> None:
    now = datetime.now(UTC)
    async with any_db.session() as session:
        # dormant: last purchase 90-365 days ago (the built-in thresholds).
        session.add(Customer(id="d1", last_purchase_at=now - timedelta(days=120)))
        session.add(Customer(id="d2", last_purchase_at=now - timedelta(days=200)))
        session.add(Customer(id="recent", last_purchase_at=now - timedelta(days=3)))
        session.add(Customer(id="gone", last_purchase_at=now - timedelta(days=120), erased_at=now))
    catalog = load_segments(Settings())
    result = await forecast_journey(
        any_db, load_journey("winback"), PRICES, segment="dormant", catalog=catalog, settings=FAST
    )
    assert result.forecast.audience == 2 and result.segment == "dormant"
    assert result.audience_source == "2 customers are in segment dormant now"
    with pytest.raises(ValueError, match="segment: no segment named 'nobody'"):
        await forecast_journey(any_db, load_journey("winback"), PRICES, segment="nobody", catalog=catalog)
    with pytest.raises(ValueError, match="not both"):
        await forecast_journey(any_db, load_journey("winback"), PRICES, audience=5, segment="dormant", catalog=catalog)


async def test_backtest_of_a_past_campaign_uses_only_the_data_before_it(any_db: Database) -> None:
    h = History()
    _campaign(h, "spring", T0, 60, 4)
    _campaign(h, "autumn", T0 + timedelta(days=60), 40, 4)
    await h.save(any_db)
    bt = await backtest_campaign(any_db, load_journey("winback"), "autumn", PRICES, FAST)
    assert bt.audience == 40
    assert bt.started_at.replace(tzinfo=UTC) == (T0 + timedelta(days=60))
    errors = {e.metric: e for e in bt.result.errors}
    assert errors["sent"].actual == 40 + 30  # 40 emails, 30 sms
    assert errors["converted"].actual == 10
    assert errors["converted"].abs_error == pytest.approx(abs(errors["converted"].predicted - 10))
    # Only spring's 60 emails (not autumn's 40) are the email history behind the forecast.
    email = next(c for c in bt.result.forecast.assumptions.channels if c.channel == "email")
    assert next(r.trials for r in email.rates if r.stage == "delivered") == 60
    with pytest.raises(ValueError, match="has no runs"):
        await backtest_campaign(any_db, load_journey("winback"), "never", PRICES, FAST)
