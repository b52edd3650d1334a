"""Results from SQL over assignments, deliveries and events, on SQLite and PostgreSQL; the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analytics.stats import VariantCounts, analyze_experiment
from cascade.cli.experiments import app
from cascade.experiments.assignment import assign
from cascade.experiments.report import ExperimentReport
from cascade.experiments.results import UnknownExperimentError, experiment_report
from cascade.infra.db import Database, migrate
from cascade.infra.settings import get_settings
from cascade.journeys.files import load_journey
from models.experiments import AssignVariantInput
from models.journey import CONTROL_ARM, Experiment
from models.tables import Delivery, EngagementEvent, ExperimentAssignment, JourneyRun, utcnow

JOURNEY = load_journey("sale_subject_test")
assert JOURNEY.experiment is not None
EXPERIMENT: Experiment = JOURNEY.experiment


def entry(customer_id: str, experiment: Experiment = EXPERIMENT) -> AssignVariantInput:
    return AssignVariantInput(
        experiment=experiment,
        journey=JOURNEY.name,
        journey_version=JOURNEY.version,
        convert_on=["purchase"],
        customer_id=customer_id,
        workflow_id=f"journey/{JOURNEY.name}/{customer_id}",
        run_id="r1",
    )


async def populate(db: Database, n: int = 150) -> dict[str, list[str]]:
    """`n` customers assigned; every mailed one sent, a share opened, clicked and bought.

    Who converts is fixed by the customer number, so the expected counts are known.
    """
    arms: dict[str, list[str]] = {}
    now = utcnow()
    async with db.session() as session:
        for i in range(n):
            cid = f"c{i:04d}"
            arm = (await assign(db, entry(cid))).variant
            arms.setdefault(arm, []).append(cid)
            if arm != CONTROL_ARM:
                session.add(
                    Delivery(
                        idempotency_key=f"k{i}",
                        workflow_id=f"journey/{JOURNEY.name}/{cid}",
                        run_id="r1",
                        journey=JOURNEY.name,
                        step=0,
                        customer_id=cid,
                        channel="email",
                        status="opened",
                        cost=0.01,
                        variant=arm,
                        sent_at=now,
                        delivered_at=now if i % 2 == 0 else None,
                        opened_at=now if i % 3 == 0 else None,
                        clicked_at=now if i % 6 == 0 else None,
                    )
                )
            converts = i % (5 if arm == "personal" else 10) == 0
            if converts:
                session.add(
                    EngagementEvent(
                        customer_id=cid,
                        type="purchase",
                        properties={"amount": 20.0},
                        occurred_at=now + timedelta(hours=1),
                    )
                )
            if i % 7 == 0:
                # Outside the 7-day window, and a non-conversion event: neither counts.
                session.add(EngagementEvent(customer_id=cid, type="purchase", occurred_at=now + timedelta(days=8)))
                session.add(EngagementEvent(customer_id=cid, type="page_viewed", occurred_at=now))
    return arms


def expected_converted(arm: str, customers: list[str]) -> int:
    every = 5 if arm == "personal" else 10
    return sum(int(c[1:]) % every == 0 for c in customers)


async def test_report_counts_each_stage_per_arm_and_matches_the_statistics(any_db: Database):
    arms = await populate(any_db)
    report = await experiment_report(any_db, EXPERIMENT.name)

    assert [line.variant for line in report.funnel] == [CONTROL_ARM, "plain", "personal"]
    assert report.planned_split == pytest.approx(EXPERIMENT.planned_split())
    for line in report.funnel:
        ids = [int(c[1:]) for c in arms[line.variant]]
        mailed = line.variant != CONTROL_ARM
        assert line.recipients == len(ids)
        assert line.sent == (len(ids) if mailed else 0)
        assert line.delivered == (sum(i % 2 == 0 or i % 3 == 0 for i in ids) if mailed else 0)
        assert line.opened == (sum(i % 3 == 0 for i in ids) if mailed else 0)
        assert line.clicked == (sum(i % 6 == 0 for i in ids) if mailed else 0)
        assert line.converted == expected_converted(line.variant, arms[line.variant])
        assert line.revenue == pytest.approx(20.0 * line.converted)
        assert line.cost == pytest.approx(0.01 * line.sent)

    # The statistics are exactly analytics.stats over these counts, control = the hold-out.
    counts = [
        VariantCounts(name=x.variant, recipients=x.recipients, conversions=x.converted, revenue=x.revenue, cost=x.cost)
        for x in report.funnel
    ]
    expected = analyze_experiment(counts, control=CONTROL_ARM, planned_split=EXPERIMENT.planned_split())
    assert report.stats == expected
    assert report.stats is not None and report.stats.sample_ratio is not None
    assert not report.stats.sample_ratio.mismatch and report.stats.chi_square is not None


async def test_assignment_is_recorded_once_and_stable(any_db: Database):
    first = await assign(any_db, entry("c1"))
    # A changed split later (an edited file) does not move a customer already assigned.
    edited = EXPERIMENT.model_copy(update={"control": 0.5})
    again = await assign(any_db, entry("c1", edited))
    assert first.new and not again.new and again.variant == first.variant


async def test_a_skewed_split_raises_the_sample_ratio_alarm(any_db: Database):
    await assign(any_db, entry("first"))
    # A broken assignment (every later entrant in `plain`) against the planned 10/45/45.
    async with any_db.session() as session:
        for i in range(300):
            session.add(
                ExperimentAssignment(
                    experiment=EXPERIMENT.name,
                    customer_id=f"c{i}",
                    variant="plain" if i % 10 else CONTROL_ARM,
                    journey=JOURNEY.name,
                    workflow_id=f"w{i}",
                    run_id="r",
                    assigned_at=utcnow(),
                )
            )
    report = await experiment_report(any_db, EXPERIMENT.name)
    assert report.stats is not None and report.stats.sample_ratio is not None
    assert report.stats.sample_ratio.mismatch


async def test_bandit_moves_traffic_to_the_converting_variant_and_keeps_the_floor(any_db: Database):
    bandit = EXPERIMENT.model_copy(update={"mode": "bandit", "control": 0.0, "floor": 0.05})
    now = utcnow()
    # History: 100 customers each; `personal` converts 30 %, `plain` 2 %.
    async with any_db.session() as session:
        for arm, rate in (("plain", 0.02), ("personal", 0.30)):
            for i in range(100):
                cid = f"{arm}-{i}"
                session.add(
                    ExperimentAssignment(
                        experiment=bandit.name,
                        customer_id=cid,
                        variant=arm,
                        journey=JOURNEY.name,
                        workflow_id=cid,
                        run_id="r",
                        assigned_at=now - timedelta(days=1),
                    )
                )
                if i < rate * 100:
                    session.add(EngagementEvent(customer_id=cid, type="purchase", occurred_at=now - timedelta(hours=1)))
    decisions = [await assign(any_db, entry(f"new-{i}", bandit)) for i in range(120)]
    chosen = [d.variant for d in decisions]
    assert chosen.count("personal") > 0.8 * len(chosen)
    for d in decisions:
        assert d.allocation is not None and min(d.allocation.values()) >= 0.05 - 1e-9
        assert d.allocation["personal"] > 0.9
    # Asked again (a retried activity, a re-entry), each gets its recorded decision.
    again = [await assign(any_db, entry(f"new-{i}", bandit)) for i in range(10)]
    assert [a.variant for a in again] == chosen[:10] and not any(a.new for a in again)


async def test_unknown_experiment_is_a_clear_error(any_db: Database):
    with pytest.raises(UnknownExperimentError, match="'nope'"):
        await experiment_report(any_db, "nope")


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CASCADE_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


async def _populated(url: str) -> ExperimentReport:
    db = Database.from_url(url)
    await migrate(db.engine)
    await populate(db, 60)
    report = await experiment_report(db, EXPERIMENT.name)
    await db.dispose()
    return report


def test_cli_show_prints_the_report_as_a_table_and_as_json(cli_db: str):
    # Synchronous, as a shell runs it: the command starts its own event loop.
    expected = asyncio.run(_populated(cli_db))
    runner = CliRunner()

    as_json = runner.invoke(app, ["show", EXPERIMENT.name, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["funnel"] == [line.model_dump() for line in expected.funnel]
    assert data["stats"]["sample_ratio"]["mismatch"] is False

    table = runner.invoke(app, ["show", EXPERIMENT.name])
    assert table.exit_code == 0, table.output
    assert "personal" in table.output and "P(beat)" in table.output and "sample ratio" in table.output

    listed = runner.invoke(app, ["list"])
    assert listed.output.split() == [EXPERIMENT.name]

    missing = runner.invoke(app, ["show", "nope"])
    assert missing.exit_code == 1 and "no customer has entered it" in missing.output


def test_cli_plan_gives_sample_size_and_days(cli_db: str):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--baseline", "0.04", "--mde", "10%", "--daily-traffic", "2000", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    # statsmodels' power solution for 4 % -> 4.4 % at alpha 0.05, power 0.8, equal arms.
    assert plan["control_size"] == plan["variant_size"] == 39455
    assert plan["days"] == 40
    text = runner.invoke(app, ["plan", "--baseline", "4%", "--mde", "10%", "--daily-traffic", "2000"])
    assert "39,455" in text.output and "40 days" in text.output
    bad = runner.invoke(app, ["plan", "--baseline", "0.04", "--mde", "-200%"])
    assert bad.exit_code == 2 and "outside (0, 1)" in bad.output


async def _runs(url: str, n: int) -> None:
    db = Database.from_url(url)
    await migrate(db.engine)
    async with db.session() as session:
        for i in range(n):
            session.add(
                JourneyRun(
                    workflow_id=f"w{i}", run_id="r", journey=JOURNEY.name, customer_id=f"c{i}", started_at=utcnow()
                )
            )
    await db.dispose()


def test_cli_plan_measures_traffic_from_the_journey(cli_db: str):
    asyncio.run(_runs(cli_db, 70))
    result = CliRunner().invoke(
        app, ["plan", "--baseline", "0.04", "--mde", "0.1", "--journey", JOURNEY.name, "--days", "7", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["daily_traffic"] == pytest.approx(10.0)
