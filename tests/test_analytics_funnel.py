"""The funnel in SQL over hand-made history, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from analytics.funnel import (
    FunnelQuery,
    Snapshot,
    _funnel_build,
    daily,
    deliveries,
    entries,
    funnel,
    reaction_times,
    refresh_recent,
    refresh_rollup,
    regroup,
    rollup_state,
    runs,
    runs_daily,
)
from analytics.money import savings_daily, savings_report
from analytics.recent import ROLLUPS, data_as_of, refresh_recent_rollups
from cascade.infra.db import Database
from tests.analytics_rows import T0, History
from tests.helpers import eventually

pytestmark = pytest.mark.postgres

PRICES = {"email": 0.001, "telegram": 0.0, "sms": 0.05}


def _history() -> History:
    h = History()
    # ann: email opened and clicked, bought 2 days later (within 7 days): email converts.
    r = h.run("winback", "ann", campaign="autumn", outcome="reacted")
    ann_email = h.send(
        r,
        "winback",
        "ann",
        0,
        "email",
        cost=0.001,
        status="clicked",
        opened_after=timedelta(minutes=3),
        clicked_after=timedelta(minutes=4),
    )
    h.event("ann", "purchase", T0 + timedelta(days=2), amount=40.0)
    # bob: email ignored, sms delivered a week later; bought 1 day after the sms: sms converts.
    r = h.run("winback", "bob", campaign="autumn", outcome="reacted")
    h.send(r, "winback", "bob", 0, "email", cost=0.001)
    bob_sms = h.send(
        r,
        "winback",
        "bob",
        2,
        "sms",
        cost=0.05,
        at=T0 + timedelta(days=7),
        status="opened",
        opened_after=timedelta(hours=2),
    )
    h.event("bob", "purchase", T0 + timedelta(days=8), amount=60.0)
    # cid: email failed, sms sent; bought 30 days later: outside the window, not counted.
    r = h.run("winback", "cid", campaign="autumn", outcome="exhausted")
    h.send(r, "winback", "cid", 0, "email", cost=0.001, status="failed")
    h.send(r, "winback", "cid", 2, "sms", cost=0.05, status="sent")
    h.event("cid", "purchase", T0 + timedelta(days=30), amount=99.0)
    # dan: welcome journey, unsubscribed from the email; run still going.
    r = h.run("welcome", "dan", at=T0 + timedelta(days=1))
    dan_email = h.send(
        r,
        "welcome",
        "dan",
        0,
        "email",
        cost=0.001,
        at=T0 + timedelta(days=1),
        status="opened",
        opened_after=timedelta(days=2),
    )
    h.event("dan", "unsubscribed", T0 + timedelta(days=3), delivery_id=dan_email)
    # A page view is not a conversion.
    h.event("ann", "page_view", T0 + timedelta(days=1))
    assert ann_email and bob_sms
    return h


async def test_funnel_by_journey_and_channel_counts_each_stage(any_db: Database) -> None:
    await _history().save(any_db)
    rows = await funnel(any_db, FunnelQuery(by=["journey", "channel"]))
    by_key = {(r.key["journey"], r.key["channel"]): r for r in rows}
    assert list(by_key) == [("welcome", "email"), ("winback", "email"), ("winback", "sms")]

    email = by_key[("winback", "email")]
    assert (email.messages, email.sent, email.delivered, email.opened, email.clicked, email.failed) == (
        3,
        2,
        2,
        1,
        1,
        1,
    )
    assert (email.converted, email.revenue) == pytest.approx((1, 40.0))
    assert email.cost == pytest.approx(0.002)

    sms = by_key[("winback", "sms")]
    # cid's purchase 30 days after the sms is outside the 7-day window.
    assert (sms.sent, sms.delivered, sms.opened, sms.converted, sms.revenue) == pytest.approx((2, 1, 1, 1, 60.0))

    welcome = by_key[("welcome", "email")]
    assert (welcome.unsubscribed, welcome.converted) == (1, 0)


async def test_attribution_window_and_conversion_events_are_parameters(any_db: Database) -> None:
    await _history().save(any_db)
    wide = await funnel(any_db, FunnelQuery(journey="winback", attribution_window=timedelta(days=40)))
    # With 40 days cid's purchase counts for its sms too.
    assert (wide[0].converted, wide[0].revenue) == pytest.approx((3, 199.0))
    views = await funnel(any_db, FunnelQuery(conversion_events=["page_view"]))
    assert (views[0].converted, views[0].revenue) == (1, 0.0)


async def test_filters_campaign_date_range_and_step(any_db: Database) -> None:
    await _history().save(any_db)
    autumn = await funnel(any_db, FunnelQuery(campaign="autumn", by=["campaign", "step"]))
    assert [(r.key["campaign"], r.key["step"], r.sent) for r in autumn] == [("autumn", 0, 2), ("autumn", 2, 2)]
    first_day = await funnel(any_db, FunnelQuery(since=T0, until=T0 + timedelta(days=1), by=["day"]))
    assert [(r.key["day"], r.messages) for r in first_day] == [("2026-10-01", 4)]
    assert await funnel(any_db, FunnelQuery(since=T0 + timedelta(days=100))) == []


async def test_entries_count_runs_and_outcomes(any_db: Database) -> None:
    await _history().save(any_db)
    rows = {r.key["journey"]: r for r in await entries(any_db, FunnelQuery(by=["journey"]))}
    assert (rows["winback"].entered, rows["winback"].outcomes) == (3, {"exhausted": 1, "reacted": 2})
    assert (rows["welcome"].entered, rows["welcome"].running) == (1, 1)


async def test_time_to_react_per_channel(any_db: Database) -> None:
    await _history().save(any_db)
    times = {t.channel: t for t in await reaction_times(any_db, FunnelQuery())}
    email = times["email"]
    # ann opened after 3 minutes, dan after 2 days.
    assert email.reactions == 2
    assert email.buckets["1-10 min"] == 1 and email.buckets["1-3 days"] == 1
    assert email.mean_seconds == pytest.approx((180 + 2 * 86400) / 2, rel=1e-4)
    assert times["sms"].buckets["1-6 h"] == 1


def _history_with_arms_and_segments() -> History:
    """`_history()` and `_arms_and_segments()` as one history."""
    h = _history()
    extra = _arms_and_segments()
    h.runs += extra.runs
    h.deliveries += extra.deliveries
    h.events += extra.events
    h.skips += extra.skips
    return h


def _arms_and_segments() -> History:
    """Two arms of an experiment, two segments over time, and steps skipped for reasons."""
    h = History()
    day = timedelta(days=1)
    # ann: arm "plain", in `dormant` when the email went out (she left it after buying).
    r = h.run("winback", "ann", campaign="autumn", outcome="reacted")
    h.send(
        r, "winback", "ann", 0, "email", cost=0.001, status="clicked", clicked_after=timedelta(hours=1), variant="plain"
    )
    h.event("ann", "purchase", T0 + day, amount=40.0)
    h.member("ann", "dormant", T0 - 30 * day, exited=T0 + day)
    h.member("ann", "active", T0 + day)
    # bob: arm "personal", dormant throughout; his email step was skipped, the sms sent.
    r = h.run("winback", "bob", campaign="autumn", outcome="exhausted")
    h.skip(r, "winback", "bob", 0, "email", "no usable email contact point", campaign="autumn", variant="personal")
    h.send(r, "winback", "bob", 2, "sms", cost=0.05, variant="personal")
    h.member("bob", "dormant", T0 - 60 * day)
    # cid: arm "plain", joined `dormant` only after his message: not counted in it.
    r = h.run("winback", "cid", campaign="autumn", outcome="exhausted")
    h.send(r, "winback", "cid", 0, "email", cost=0.001, variant="plain")
    h.skip(r, "winback", "cid", 1, "telegram", "no usable telegram contact point", campaign="autumn", variant="plain")
    h.skip(r, "winback", "cid", 2, "sms", "condition not met: purchase_count lt 3", campaign="autumn", variant="plain")
    h.member("cid", "dormant", T0 + 2 * day)
    return h


async def test_funnel_by_variant_counts_each_arm(any_db: Database) -> None:
    await _arms_and_segments().save(any_db)
    rows = {r.key["variant"]: r for r in await funnel(any_db, FunnelQuery(by=["variant"]))}
    assert list(rows) == ["personal", "plain"]
    plain, personal = rows["plain"], rows["personal"]
    assert (plain.messages, plain.clicked, plain.converted, plain.revenue) == (2, 1, 1, 40.0)
    assert (personal.messages, personal.converted) == (1, 0) and personal.cost == pytest.approx(0.05)
    assert (plain.skipped, personal.skipped) == (2, 1)
    only = await funnel(any_db, FunnelQuery(variant="personal"))
    assert len(only) == 1 and (only[0].messages, only[0].skipped) == (1, 1)


async def test_funnel_by_segment_counts_members_at_the_time_of_the_message(any_db: Database) -> None:
    await _arms_and_segments().save(any_db)
    rows = {r.key["segment"]: r for r in await funnel(any_db, FunnelQuery(by=["segment"]))}
    # ann's and bob's messages went out while they were dormant; cid's before he was.
    assert list(rows) == ["dormant"]
    assert (rows["dormant"].messages, rows["dormant"].converted, rows["dormant"].skipped) == (2, 1, 1)
    dormant = await funnel(any_db, FunnelQuery(segment="dormant", by=["channel"]))
    assert {(r.key["channel"], r.messages) for r in dormant} == {("email", 1), ("sms", 1)}
    assert await funnel(any_db, FunnelQuery(segment="active")) == []


async def test_skipped_steps_are_counted_by_reason(any_db: Database) -> None:
    await _arms_and_segments().save(any_db)
    [total] = await funnel(any_db, FunnelQuery())
    assert total.skipped == 3
    assert total.skipped_by_reason == {
        "condition not met: purchase_count lt 3": 1,
        "no usable email contact point": 1,
        "no usable telegram contact point": 1,
    }
    by_step = {r.key["step"]: r for r in await funnel(any_db, FunnelQuery(by=["step"]))}
    # Step 1 sent nothing at all: a row of its own with only the skip.
    assert (by_step[1].messages, by_step[1].skipped) == (0, 1)
    assert by_step[0].skipped_by_reason == {"no usable email contact point": 1}
    # The date range applies to the skips too.
    early = await funnel(any_db, FunnelQuery(until=T0 - timedelta(days=1)))
    assert early == []


async def test_the_daily_rollup_gives_the_figures_of_the_log(any_db: Database) -> None:
    h = _history_with_arms_and_segments()
    await h.save(any_db)
    queries = [
        FunnelQuery(),
        FunnelQuery(by=["journey", "step", "channel"]),
        FunnelQuery(by=["day", "campaign"]),
        FunnelQuery(by=["variant"], journey="winback"),
        FunnelQuery(channel="sms", campaign="autumn", by=["day"]),
        # A range that starts and ends inside days: their parts come from the log.
        FunnelQuery(since=T0 + timedelta(hours=5), until=T0 + timedelta(days=7, hours=12), by=["channel"]),
        FunnelQuery(since=T0 - timedelta(days=1), by=["journey"]),
    ]
    # First the rollup holds the first four days, then (a later "now") every day.
    steps = ((T0 + timedelta(days=39), T0.date() + timedelta(days=4)), (T0 + timedelta(days=90), None))
    for now, rolled_until in steps:
        for query in queries:
            assert await funnel(any_db, query, now=now) == await funnel(any_db, query, rollup=False), query
        async with any_db.engine.connect() as conn:
            days = [row.day for row in await conn.execute(select(daily.c.day).distinct())]
            rolled = (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one()
        if rolled_until is not None:
            assert days and all(day < rolled_until for day in days)
        # Each message is in the rollup once however many times it was refreshed.
        assert rolled == sum(1 for d in h.deliveries if rolled_until is None or d["created_at"].date() < rolled_until)
    # A changed attribution is not what the rollup holds: the log answers, and differently.
    later = T0 + timedelta(days=90)
    [usual] = await funnel(any_db, FunnelQuery(), now=later)
    [wide] = await funnel(any_db, FunnelQuery(attribution_window=timedelta(days=40)), now=later)
    assert wide.converted == usual.converted + 1  # cid's purchase 30 days after his sms counts in 40 days


async def test_the_reaction_and_runs_rollups_give_the_figures_of_the_log(any_db: Database) -> None:
    h = _history()
    extra = _arms_and_segments()
    h.runs += extra.runs
    h.deliveries += extra.deliveries
    h.events += extra.events
    # A run still going and one that took 40 days: never in a closed day's runs rollup.
    h.run("welcome", "eve", at=T0 + timedelta(days=2))
    wf, run_id = h.run("winback", "fay", campaign="autumn", at=T0 + timedelta(days=3), outcome="reacted")
    h.runs[-1]["finished_at"] = T0 + timedelta(days=43)
    await h.save(any_db)
    queries = [
        FunnelQuery(),
        FunnelQuery(by=["journey"]),
        FunnelQuery(by=["day", "campaign"]),
        FunnelQuery(journey="winback", channel="email"),
        FunnelQuery(campaign="autumn", variant="plain"),
        FunnelQuery(since=T0 + timedelta(hours=5), until=T0 + timedelta(days=7, hours=12)),
    ]
    for now in (T0 + timedelta(days=39), T0 + timedelta(days=90)):
        for query in queries:
            if query.variant is None and not query.channel:
                rolled_runs = await entries(any_db, query, now=now)
                assert rolled_runs == await entries(any_db, query, rollup=False), query
            assert await reaction_times(any_db, query, now=now) == await reaction_times(any_db, query, rollup=False), (
                query
            )
    # The 40-day run and the open one are counted, each once, with the rollup built.
    rows = {
        r.key["journey"]: r for r in await entries(any_db, FunnelQuery(by=["journey"]), now=T0 + timedelta(days=90))
    }
    assert rows["welcome"].running == 2 and rows["winback"].outcomes["reacted"] == 4
    async with any_db.engine.connect() as conn:
        rolled = (await conn.execute(select(func.sum(runs_daily.c.runs)))).scalar_one()
    assert rolled == len(h.runs) - 3  # not dan's and eve's open runs nor fay's long one
    assert (wf, run_id) == (h.runs[-1]["workflow_id"], h.runs[-1]["run_id"])


async def _all_figures(db: Database, queries: list[FunnelQuery], **how: Any) -> list[Any]:
    """Every report the rollups answer, for each query: funnel, time to react, runs."""
    out: list[Any] = []
    for query in queries:
        out.append(await funnel(db, query, **how))
        out.append(await reaction_times(db, query, **how))
        if query.variant is None and query.channel is None:
            out.append(await entries(db, query, **how))
    return out


async def test_the_recent_rows_give_the_figures_of_the_log_as_of_their_refresh(any_db: Database) -> None:
    h = _history_with_arms_and_segments()
    await h.save(any_db)
    queries = [
        FunnelQuery(),
        FunnelQuery(by=["journey", "step", "channel"]),
        FunnelQuery(by=["day", "campaign"]),
        FunnelQuery(journey="winback", channel="sms", by=["day"]),
        FunnelQuery(since=T0 + timedelta(hours=5), until=T0 + timedelta(days=7, hours=12), by=["channel"]),
        FunnelQuery(since=T0 - timedelta(days=1), by=["journey"]),
    ]
    # Nothing closed yet (every day is within 35 days of "now"): the recent rows hold it all.
    now = T0 + timedelta(days=31)
    done = await refresh_recent_rollups(any_db, PRICES, now=now)
    assert done.refreshed == list(ROLLUPS) and await data_as_of(any_db) == now
    async with any_db.engine.connect() as conn:
        rolled = (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one()
    assert rolled == len(h.deliveries)
    assert await _all_figures(any_db, queries, now=now) == await _all_figures(any_db, queries, rollup=False)
    # The same time again: nothing to do, nothing counted twice.
    assert (await refresh_recent_rollups(any_db, PRICES, now=now)).refreshed == []
    async with any_db.engine.connect() as conn:
        assert (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one() == len(h.deliveries)

    # After the refresh: a message created since is read from the log at once; a late
    # click on a message from before it and a run that ended since wait for the next refresh.
    late = History()
    r = late.run("winback", "gus", campaign="autumn", at=now + timedelta(minutes=10))
    late.send(r, "winback", "gus", 0, "email", cost=0.001, at=now + timedelta(minutes=10), status="opened",
              opened_after=timedelta(minutes=5))  # fmt: skip
    await late.save(any_db)
    bob_email = next(d for d in h.deliveries if d["customer_id"] == "bob" and d["channel"] == "email")
    dan_run = next(r for r in h.runs if r["customer_id"] == "dan")
    async with any_db.engine.begin() as conn:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == bob_email["id"])
            .values(status="clicked", opened_at=now + timedelta(minutes=20), clicked_at=now + timedelta(minutes=21))
        )
        await conn.execute(
            update(runs)
            .where(runs.c.run_id == dan_run["run_id"])
            .values(outcome="reacted", finished_at=now + timedelta(minutes=30))
        )
    later = now + timedelta(hours=1)
    [live] = await funnel(any_db, FunnelQuery(), rollup=False)
    [as_of] = await funnel(any_db, FunnelQuery(), now=later)
    assert as_of.messages == live.messages == len(h.deliveries) + 1
    assert (as_of.opened, as_of.clicked) == (live.opened - 1, live.clicked - 1)
    [welcome] = await entries(any_db, FunnelQuery(journey="welcome"), now=later)
    assert (welcome.running, welcome.outcomes) == (1, {})  # dan's run, as it was at the refresh
    # The next refresh replaces the recent days' rows with the log as it is then.
    assert (await refresh_recent_rollups(any_db, PRICES, now=later)).refreshed == list(ROLLUPS)
    assert await _all_figures(any_db, queries, now=later) == await _all_figures(any_db, queries, rollup=False)
    [welcome] = await entries(any_db, FunnelQuery(journey="welcome"), now=later)
    assert (welcome.running, welcome.outcomes) == (0, {"reacted": 1})

    # Days close (a later "now"): their recent rows become final ones, the rest stay recent.
    closing = T0 + timedelta(days=39)
    assert await _all_figures(any_db, queries, now=closing) == await _all_figures(any_db, queries, rollup=False)
    async with any_db.engine.connect() as conn:
        state = (await conn.execute(select(rollup_state).where(rollup_state.c.name == "funnel_daily"))).one()
        rolled = (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one()
    assert (state.until.date(), state.recent_until.replace(tzinfo=UTC)) == ((T0 + timedelta(days=4)).date(), later)
    assert rolled == len(h.deliveries) + 1
    assert (await refresh_recent_rollups(any_db, PRICES, now=closing)).refreshed == list(ROLLUPS)
    assert await _all_figures(any_db, queries, now=closing) == await _all_figures(any_db, queries, rollup=False)
    # Everything closed: the recent rows are gone, the closed ones hold every message once.
    done_all = T0 + timedelta(days=90)
    assert await _all_figures(any_db, queries, now=done_all) == await _all_figures(any_db, queries, rollup=False)
    async with any_db.engine.connect() as conn:
        assert (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one() == len(h.deliveries) + 1
        state = (await conn.execute(select(rollup_state).where(rollup_state.c.name == "funnel_daily"))).one()
    assert state.until.replace(tzinfo=UTC) > state.recent_until.replace(tzinfo=UTC)  # read as closed days only


async def test_a_refresh_between_the_reads_of_a_report_changes_no_figure(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recent rows as of `now`; a run and its message created since are read from the log.
    h = _history_with_arms_and_segments()
    await h.save(any_db)
    now = T0 + timedelta(days=31)
    await refresh_recent_rollups(any_db, PRICES, now=now)
    late = History()
    r = late.run("winback", "gus", campaign="autumn", at=now + timedelta(minutes=10))
    late.send(r, "winback", "gus", 0, "email", cost=0.001, at=now + timedelta(minutes=10), status="opened",
              opened_after=timedelta(minutes=5))  # fmt: skip
    await late.save(any_db)
    queries = [
        FunnelQuery(),
        FunnelQuery(by=["channel"]),
        FunnelQuery(since=T0 + timedelta(hours=5), by=["day"]),
    ]
    later = now + timedelta(hours=1)
    expected = await _all_figures(any_db, queries, rollup=False)
    expected_savings = [await savings_report(any_db, q, PRICES, "USD", rollup=False) for q in queries]

    # Each report, right after it read how far a rollup reaches and before it reads the
    # rollup's rows and the log after that reach, lets a refresh commit (a later one each
    # time): the refreshed rows then hold gus's message, which the log part reads too.
    # In one snapshot the report still sees the rows its reach describes.
    reach = Snapshot.reach
    refreshes: list[datetime] = []

    async def reach_then_refresh(self: Snapshot, name: str) -> Any:
        found = await reach(self, name)
        at = later + timedelta(minutes=len(refreshes) + 1)
        assert name in (await refresh_recent_rollups(any_db, PRICES, now=at)).refreshed
        refreshes.append(at)
        return found

    monkeypatch.setattr(Snapshot, "reach", reach_then_refresh)
    assert await _all_figures(any_db, queries, now=later) == expected
    for query, savings in zip(queries, expected_savings, strict=True):
        assert await savings_report(any_db, query, PRICES, "USD", now=later) == savings, query
    monkeypatch.undo()
    assert len(refreshes) == 3 * len(queries) + len(queries)  # funnel, time to react, runs; savings
    # The refreshes did land: the rollups now hold gus's message themselves.
    async with any_db.engine.connect() as conn:
        rolled = (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one()
    assert rolled == len(h.deliveries) + 1
    assert await _all_figures(any_db, queries, now=later) == expected


def _edges_history() -> History:
    """Messages and purchases on both sides of 12:00 of two days (T0's and the next), so a
    range that starts or ends at that hour splits each day between log and rollup."""
    h = History()
    day0, day1 = T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1)
    # ann: a message at 10:00 and another at 14:00, a purchase at 15:00: last touch is the
    # later one (inside a range from 12:00), though the earlier one is her first.
    r = h.run("winback", "ann", campaign="edge", at=day0 + timedelta(hours=10), outcome="reacted")
    h.send(r, "winback", "ann", 0, "email", cost=0.001, at=day0 + timedelta(hours=10), status="opened",
           opened_after=timedelta(minutes=30))  # fmt: skip
    h.send(r, "winback", "ann", 1, "telegram", cost=0.0, at=day0 + timedelta(hours=14), status="clicked",
           opened_after=timedelta(minutes=2), clicked_after=timedelta(minutes=3))  # fmt: skip
    h.event("ann", "purchase", day0 + timedelta(hours=15), amount=25.0)
    # bob: a message at 11:00 and a purchase at 12:30, both sides of 12:00: the purchase
    # belongs to a message outside such a range.
    r = h.run("winback", "bob", campaign="edge", at=day0 + timedelta(hours=11), outcome="reacted")
    h.send(r, "winback", "bob", 0, "email", cost=0.001, at=day0 + timedelta(hours=11), status="clicked",
           opened_after=timedelta(minutes=5), clicked_after=timedelta(minutes=6))  # fmt: skip
    h.event("bob", "purchase", day0 + timedelta(hours=12, minutes=30), amount=40.0)
    # cid: runs at 13:00 on both days; the second day's sms bought from the day after.
    for day, channel, cost in ((day0, "email", 0.001), (day1, "sms", 0.05)):
        r = h.run("winback", "cid", campaign="edge", at=day + timedelta(hours=13), outcome="exhausted")
        h.send(r, "winback", "cid", 0, channel, cost=cost, at=day + timedelta(hours=13))
    h.event("cid", "purchase", day1 + timedelta(days=1), amount=60.0)
    # dan: a run at 09:00 of the second day, a purchase with no message of his in range.
    r = h.run("winback", "dan", campaign="edge", at=day1 + timedelta(hours=9), outcome="exhausted")
    h.send(r, "winback", "dan", 0, "email", cost=0.001, at=day1 + timedelta(hours=9), status="failed")
    h.event("eve", "purchase", day0 + timedelta(hours=16), amount=99.0)
    return h


async def test_ranges_that_start_or_end_inside_a_day_give_the_figures_of_the_log(any_db: Database) -> None:
    h = _edges_history()
    await h.save(any_db)
    noon0, noon1 = T0.replace(hour=12), T0.replace(hour=12) + timedelta(days=1)
    queries = [
        FunnelQuery(since=noon0, by=["channel"]),
        FunnelQuery(since=noon0, until=noon1, by=["day"]),
        FunnelQuery(since=noon0 - timedelta(days=1), until=noon1),
        FunnelQuery(since=noon0 + timedelta(hours=2), until=noon1 + timedelta(hours=1), by=["journey", "step"]),
        FunnelQuery(since=noon0, campaign="edge", by=["campaign"]),
    ]
    # Recent rows as of 12:00 of the second day (its later messages from the log), then as
    # of later (nothing closed), then closed days: each time against the log alone.
    for now, recent in ((noon1, True), (T0 + timedelta(days=20), True), (T0 + timedelta(days=60), False)):
        if recent:
            await refresh_recent_rollups(any_db, PRICES, now=now)
        assert await _all_figures(any_db, queries, now=now) == await _all_figures(any_db, queries, rollup=False)
        for query in queries:
            rolled = await savings_report(any_db, query, PRICES, "USD", now=now)
            assert rolled == await savings_report(any_db, query, PRICES, "USD", rollup=False), (now, query)
    # What the edges hold: from 12:00, ann's 14:00 message converted (last touch), bob's
    # purchase is his 11:00 message's, outside; cid's second-day sms is in range too.
    [row] = await funnel(any_db, FunnelQuery(since=noon0), now=T0 + timedelta(days=60))
    assert (row.messages, row.converted, row.revenue) == (4, 2, 85.0)
    [row] = await funnel(any_db, FunnelQuery(since=noon0, until=noon1), now=T0 + timedelta(days=60))
    assert (row.messages, row.converted, row.revenue) == (3, 1, 25.0)


# A figure of each rollup a test marks on a day's rows: a day built again loses the mark.
_MARKED = {"funnel_daily": "revenue", "runs_daily": "runs", "savings_daily": "runs"}
_MARK = 1000


async def _mark(db: Database, day: str, delta: int) -> None:
    """Add `delta` to the marked figure of every rollup's rows of `day`."""
    async with db.engine.begin() as conn:
        for table in (daily, runs_daily, savings_daily):
            column = table.c[_MARKED[table.name]]
            await conn.execute(
                update(table).where(table.c.day == date.fromisoformat(day)).values({column: column + delta})
            )


async def _marked(db: Database, day: str) -> dict[str, bool]:
    """Per rollup: whether its rows of `day` still carry the mark (were not built again)."""
    out = {}
    async with db.engine.connect() as conn:
        for table in (daily, runs_daily, savings_daily):
            values = (
                (await conn.execute(select(table.c[_MARKED[table.name]]).where(table.c.day == date.fromisoformat(day))))
                .scalars()
                .all()
            )
            assert values, (table.name, day)
            out[table.name] = all(v >= _MARK for v in values)
    return out


async def test_a_refresh_rebuilds_only_the_days_that_changed_since_the_last_one(any_db: Database) -> None:
    # Three recent days of messages; the last refresh was at `now`.
    now = T0 + timedelta(days=31)
    h = History()
    sent: dict[int, int] = {}
    for back, who in ((21, "ann"), (11, "bob"), (2, "cid")):
        at = now - timedelta(days=back)
        r = h.run("winback", who, campaign="autumn", at=at, outcome="exhausted")
        sent[back] = h.send(r, "winback", who, 0, "email", cost=0.001, at=at)
    await h.save(any_db)
    assert (await refresh_recent_rollups(any_db, PRICES, now=now)).refreshed == list(ROLLUPS)
    old_day, clicked_day = str((now - timedelta(days=21)).date()), str((now - timedelta(days=11)).date())
    for day in (old_day, clicked_day):
        await _mark(any_db, day, _MARK)

    # A click on bob's message of 11 days ago, reported by the provider 10 minutes after the
    # refresh with the time it happened (a day after the message): only the event is new.
    late = History()
    clicked_at = now - timedelta(days=10)
    late.event("bob", "clicked", clicked_at, delivery_id=sent[11], received=now + timedelta(minutes=10))
    await late.save(any_db)
    async with any_db.engine.begin() as conn:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == sent[11])
            .values(status="clicked", opened_at=clicked_at, clicked_at=clicked_at)
        )
    later = now + timedelta(hours=1)
    assert (await refresh_recent_rollups(any_db, PRICES, now=later)).refreshed == list(ROLLUPS)

    # The day of the click is built again (and every later one); the day before it is not,
    # nor, in the runs' and savings' rollups, which a click does not change, the click's day.
    assert await _marked(any_db, old_day) == {"funnel_daily": True, "runs_daily": True, "savings_daily": True}
    assert await _marked(any_db, clicked_day) == {"funnel_daily": False, "runs_daily": True, "savings_daily": True}
    await _mark(any_db, old_day, -_MARK)
    async with any_db.engine.begin() as conn:
        for table in (runs_daily, savings_daily):
            column = table.c[_MARKED[table.name]]
            on_day = table.c.day == date.fromisoformat(clicked_day)
            await conn.execute(update(table).where(on_day).values({column: column - _MARK}))
    # ... and the late click is counted: the rollups say what the log says.
    query = FunnelQuery(since=T0, by=["day"])
    rolled = await funnel(any_db, query, now=later)
    assert {str(row.key["day"]): row.clicked for row in rolled}[clicked_day] == 1
    assert await _all_figures(any_db, [query], now=later) == await _all_figures(any_db, [query], rollup=False)
    assert await savings_report(any_db, query, PRICES, "USD", now=later) == await savings_report(
        any_db, query, PRICES, "USD", rollup=False
    )


async def test_two_refreshers_at_once_build_the_recent_days_once(any_db: Database) -> None:
    if any_db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: there is no race to lose")
    h = _history()
    await h.save(any_db)
    now = T0 + timedelta(days=31)
    await refresh_rollup(any_db, now=now)  # the closed days first, so both race on the recent ones
    # The first refresher is held inside its transaction (state moved, rows not yet built)
    # until the second one is waiting on the rollup_state row.
    inside, go_on = asyncio.Event(), asyncio.Event()
    build = _funnel_build(any_db)
    holder: list[str] = []

    async def held(conn: Any, since: Any, until: Any) -> None:
        holder.append(str((await conn.execute(text("SELECT pg_current_xact_id()"))).scalar_one()))
        inside.set()
        await go_on.wait()
        await build(conn, since, until)

    first = asyncio.create_task(refresh_recent(any_db, "funnel_daily", daily, held, now=now))
    await inside.wait()
    second = asyncio.create_task(refresh_recent(any_db, "funnel_daily", daily, build, now=now + timedelta(seconds=1)))

    async def second_waits() -> bool | None:
        # Waiting for the first one's transaction: its row lock on rollup_state.
        waiting = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
            " AND transactionid::text = :xid"
        )
        async with any_db.engine.connect() as conn:
            return True if (await conn.execute(waiting, {"xid": holder[0]})).scalar_one() else None

    await eventually(second_waits, within=30)
    go_on.set()
    assert (await first, await second) == (True, False)  # the second found the row moved
    async with any_db.engine.connect() as conn:
        assert (await conn.execute(select(func.sum(daily.c.messages)))).scalar_one() == len(h.deliveries)
    assert await funnel(any_db, FunnelQuery(by=["channel"]), now=now) == await funnel(
        any_db, FunnelQuery(by=["channel"]), rollup=False
    )


async def test_regrouped_rows_equal_the_funnel_asked_by_fewer_dimensions(any_db: Database) -> None:
    h = _history_with_arms_and_segments()
    await h.save(any_db)
    rows = await funnel(any_db, FunnelQuery(by=["journey", "channel"]), rollup=False)
    for by in ([], ["journey"], ["channel"]):
        assert regroup(rows, by) == await funnel(any_db, FunnelQuery(by=by), rollup=False), by
    assert sum(row.skipped for row in regroup(rows, [])) == len(h.skips) > 0
