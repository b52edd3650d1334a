"""Cost per channel/journey/reaction/conversion and savings per run, from rows in both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from analytics.funnel import FunnelQuery
from analytics.money import cost_report, refresh_recent_savings, run_costs, savings_from_runs, savings_report
from analytics.savings_model import run_savings
from cascade.infra.db import Database
from cascade.journeys.files import load_journey
from models.tables import Consent
from tests.analytics_rows import T0, History, add_customer

pytestmark = pytest.mark.postgres

PRICES = {"email": 0.001, "telegram": 0.0, "sms": 0.05}


async def _winback(db: Database) -> None:
    """Three winback runs (steps email, telegram, sms in journeys/winback.yaml)."""
    # ann reacted to the email: the cascade stopped there; telegram and sms were usable.
    await add_customer(db, "ann", {"email": True, "telegram": True, "sms": True})
    # bob ignored email and had no telegram: the sms reached him.
    await add_customer(db, "bob", {"email": True, "sms": True})
    # cid unsubscribed from sms: only email was usable, and it was ignored.
    await add_customer(db, "cid", {"email": True, "sms": False})
    h = History()
    r = h.run("winback", "ann", outcome="reacted")
    h.send(r, "winback", "ann", 0, "email", cost=0.001, status="clicked", clicked_after=timedelta(hours=1))
    h.event("ann", "purchase", T0 + timedelta(days=1), amount=30.0)
    r = h.run("winback", "bob", outcome="reacted")
    h.send(r, "winback", "bob", 0, "email", cost=0.001)
    h.send(
        r,
        "winback",
        "bob",
        2,
        "sms",
        cost=0.05,
        at=T0 + timedelta(days=14),
        status="clicked",
        opened_after=timedelta(minutes=1),
        clicked_after=timedelta(minutes=2),
    )
    r = h.run("winback", "cid", outcome="exhausted")
    h.send(r, "winback", "cid", 0, "email", cost=0.001)
    await h.save(db)


async def test_cost_per_channel_reaction_and_conversion(any_db: Database) -> None:
    await _winback(any_db)
    rows = {r.key["channel"]: r for r in await cost_report(any_db, FunnelQuery(by=["channel"]), "EUR")}
    email, sms = rows["email"], rows["sms"]
    assert (email.currency, email.sent) == ("EUR", 3) and email.cost == pytest.approx(0.003)
    assert email.reactions == 1 and email.cost_per_reaction == pytest.approx(0.003)
    assert email.conversions == 1 and email.cost_per_conversion == pytest.approx(0.003)
    assert sms.conversions == 0 and sms.cost_per_conversion is None
    assert sms.cost_per_reaction == pytest.approx(0.05)


async def test_runs_are_judged_step_by_step_from_the_journey_and_the_contacts(any_db: Database) -> None:
    await _winback(any_db)
    runs = {r.run_id.split("-")[1]: r for r in await run_costs(any_db, FunnelQuery(), PRICES)}
    assert [(s.channel, s.usable, s.sent) for s in runs["ann"].steps] == [
        ("email", True, True),
        ("telegram", True, False),
        ("sms", True, False),
    ]
    assert [(s.channel, s.usable, s.sent) for s in runs["bob"].steps] == [
        ("email", True, True),
        ("telegram", False, False),
        ("sms", True, True),
    ]
    assert [s.usable for s in runs["cid"].steps] == [True, False, False]


async def test_savings_against_both_counterfactuals(any_db: Database) -> None:
    await _winback(any_db)
    report = await savings_report(any_db, FunnelQuery(journey="winback"), PRICES, "USD")
    total = report.total
    # actual: ann 0.001, bob 0.051, cid 0.001.
    assert total.actual == pytest.approx(0.053)
    # everywhere at once: ann 0.051, bob 0.051, cid 0.001.
    assert total.all_usable == pytest.approx(0.103)
    assert total.saved_vs_all == pytest.approx(0.05)
    assert total.saved_vs_all_pct == pytest.approx(100 * 0.05 / 0.103)
    # dearest only: ann 0.05, bob 0.05, cid 0.001.
    assert total.dearest_usable == pytest.approx(0.101)
    assert total.saved_vs_dearest == pytest.approx(0.048)
    assert report.groups["winback"].runs == 3


async def test_a_withdrawn_consent_makes_a_step_unusable_and_lowers_the_savings(any_db: Database) -> None:
    await _winback(any_db)
    before = await savings_report(any_db, FunnelQuery(), PRICES, "USD", rollup=False)
    rolled = await savings_report(any_db, FunnelQuery(), PRICES, "USD")  # the closed days, judged now
    async with any_db.session() as session:
        withdraw = update(Consent).where(col(Consent.customer_id) == "ann", col(Consent.channel) == "sms")
        await session.exec(withdraw.values(granted=False))
    after = await savings_report(any_db, FunnelQuery(), PRICES, "USD", rollup=False)
    assert after.total.all_usable == pytest.approx(before.total.all_usable - 0.05)
    # A rolled-up day keeps the judgement of the day it was rolled up (documented).
    assert (await savings_report(any_db, FunnelQuery(), PRICES, "USD")).total == rolled.total == before.total


async def test_a_run_of_a_journey_without_file_counts_only_its_messages(any_db: Database) -> None:
    h = History()
    r = h.run("gone", "zed")
    h.send(r, "gone", "zed", 0, "email", cost=0.001)
    await h.save(any_db)
    [run] = await run_costs(any_db, FunnelQuery(), PRICES)
    assert [(s.channel, s.sent) for s in run.steps] == [("email", True)]
    # The given definition wins over the file (and an unknown file is not an error).
    spec = load_journey("winback")
    [run] = await run_costs(any_db, FunnelQuery(), PRICES, {"gone": spec})
    assert [s.channel for s in run.steps] == ["email", "telegram", "sms"]


async def _varied(db: Database) -> None:
    """Runs of several journeys, a transactional one and one without a file, mixed consents."""
    await _winback(db)
    await add_customer(db, "dan", {"email": True, "sms": False, "telegram": True})
    h = History()
    r = h.run("order_status", "dan")
    h.send(r, "order_status", "dan", 0, "email", cost=0.001, status="failed")
    r = h.run("gone", "dan")
    h.send(r, "gone", "dan", 0, "sms", cost=0.05)
    h.send(r, "gone", "dan", 1, "email", cost=0.0, status="failed")
    r = h.run("winback", "nobody")  # a customer with no profile: nothing usable but what was sent
    h.send(r, "winback", "nobody", 0, "email", cost=0.001)
    await h.save(db)


async def test_sql_savings_equal_the_reference_per_run_judgement(any_db: Database) -> None:
    await _varied(any_db)
    for query in (FunnelQuery(), FunnelQuery(journey="winback"), FunnelQuery(since=T0 + timedelta(days=1))):
        reference = savings_from_runs([run_savings(run) for run in await run_costs(any_db, query, PRICES)], "USD")
        in_sql = await savings_report(any_db, query, PRICES, "USD")
        assert set(in_sql.groups) == set(reference.groups)
        for name, expected in [("TOTAL", reference.total), *reference.groups.items()]:
            got = in_sql.total if name == "TOTAL" else in_sql.groups[name]
            assert got.runs == expected.runs, name
            for field in ("actual", "all_usable", "dearest_usable", "saved_vs_all", "saved_vs_dearest"):
                assert getattr(got, field) == pytest.approx(getattr(expected, field), abs=1e-9), (name, field)


async def _winback_and_a_late_campaign(db: Database) -> tuple[History, list[FunnelQuery]]:
    """The win-back, and more runs on later days in another campaign, so days split between
    rollup and log: the late campaign's history, and the queries that cut across them."""
    await _winback(db)
    h = History()
    for i, who in enumerate(("ann", "bob", "cid")):
        r = h.run("winback", who, campaign="late", at=T0 + timedelta(days=3 + i, hours=6))
        h.send(r, "winback", who, 0, "email", cost=0.001, at=T0 + timedelta(days=3 + i, hours=6))
    await h.save(db)
    return h, [
        FunnelQuery(),
        FunnelQuery(campaign="late"),
        FunnelQuery(journey="winback", since=T0 + timedelta(hours=3), until=T0 + timedelta(days=4, hours=12)),
    ]


async def test_the_savings_rollup_gives_the_figures_of_the_log(any_db: Database) -> None:
    _, queries = await _winback_and_a_late_campaign(any_db)
    for now in (T0 + timedelta(days=39), T0 + timedelta(days=90)):  # days 0-3 rolled up, then every day
        for query in queries:
            rolled = await savings_report(any_db, query, PRICES, "USD", now=now)
            assert rolled == await savings_report(any_db, query, PRICES, "USD", rollup=False), query
    assert (await savings_report(any_db, FunnelQuery(campaign="late"), PRICES, "USD")).total.runs == 3


async def test_the_recent_savings_rows_give_the_figures_of_the_log_as_of_their_refresh(any_db: Database) -> None:
    h, queries = await _winback_and_a_late_campaign(any_db)
    now = T0 + timedelta(days=20)  # nothing closed: every run is in the recent rows
    assert await refresh_recent_savings(any_db, PRICES, now=now)
    for query in queries:
        rolled = await savings_report(any_db, query, PRICES, "USD", now=now)
        assert rolled == await savings_report(any_db, query, PRICES, "USD", rollup=False), query
    # A run started after the refresh is judged from the log at once; an sms sent since to a
    # run from before it waits for the next refresh (the rows are as of theirs).
    late = History()
    r = late.run("winback", "bob", campaign="late", at=now + timedelta(minutes=5))
    late.send(r, "winback", "bob", 0, "email", cost=0.001, at=now + timedelta(minutes=5))
    first = h.runs[0]
    late.send((first["workflow_id"], first["run_id"]), "winback", "ann", 2, "sms", cost=0.05,
              at=now + timedelta(minutes=6))  # fmt: skip
    await late.save(any_db)
    as_of = await savings_report(any_db, FunnelQuery(campaign="late"), PRICES, "USD", now=now)
    live = await savings_report(any_db, FunnelQuery(campaign="late"), PRICES, "USD", rollup=False)
    assert as_of.total.runs == live.total.runs == 4
    assert as_of.total.actual == pytest.approx(live.total.actual - 0.05)
    assert await refresh_recent_savings(any_db, PRICES, now=now + timedelta(minutes=10))
    for query in queries:
        rolled = await savings_report(any_db, query, PRICES, "USD", now=now)
        assert rolled == await savings_report(any_db, query, PRICES, "USD", rollup=False), query
