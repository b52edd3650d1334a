"""The reaction simulator: seedable, rates as configured, a cascade stops at the first reaction;
and the demo's pieces built on it (sample data that resets, a report that cuts on words)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from sqlmodel import select

from cascade.demo.report import REASON_WIDTH, step_cell
from cascade.demo.sample_data import CUSTOMERS
from cascade.infra.settings import PROJECT_ROOT
from cascade.profiles.service import mark_contact_point, upsert_customer
from cascade.simulator import ChannelPropensity, Population
from models.journey import StepStatus
from models.tables import ContactPoint, ContactStatus

CHANNELS = ["email", "telegram", "sms"]
BASE = {
    "email": ChannelPropensity(0.2, "opened", median_seconds=60),
    "telegram": ChannelPropensity(0.4, "clicked", median_seconds=30),
    "sms": ChannelPropensity(0.1, "converted", median_seconds=300, spread=1.0),
}


def _history(seed: int, n: int = 2000):
    population = Population(BASE, seed=seed)
    return population.reactions(population.customers([f"c-{i}" for i in range(n)]), CHANNELS)


def test_the_same_seed_gives_the_same_history_and_another_seed_another():
    assert _history(7) == _history(7)
    assert _history(7) != _history(8)


def test_reaction_shares_follow_the_cascade_of_propensities():
    n = 4000
    reactions = _history(1, n)
    by_step = [sum(r.step == s for r in reactions) / n for s in range(3)]
    # Expected: 0.2; then 0.8 * 0.4 = 0.32; then 0.8 * 0.6 * 0.1 = 0.048 (binomial, +-4 sd).
    for share, expected in zip(by_step, [0.2, 0.32, 0.048], strict=True):
        assert abs(share - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, by_step
    assert {r.event for r in reactions if r.step == 2} == {"converted"}
    assert all(r.by_workflow_id == (r.event == "converted") for r in reactions)
    email_delays = sorted(r.after_seconds for r in reactions if r.step == 0)
    assert 40 < email_delays[len(email_delays) // 2] < 90  # log-normal around the 60 s median


def test_customers_differ_around_the_base_rate():
    rates = [c.propensities["telegram"].rate for c in Population(BASE, seed=3).customers([str(i) for i in range(500)])]
    assert len(set(rates)) == 500 and 0.35 < sum(rates) / 500 < 0.45


def test_bad_propensities_are_refused():
    with pytest.raises(ValueError, match="rate"):
        ChannelPropensity(1.5)
    with pytest.raises(ValueError, match="concentration"):
        Population(BASE, concentration=0)


def test_the_report_shortens_provider_texts_on_a_word_boundary():
    reason = "the provider refused the message because the recipient blocked the bot in 2021"
    cell = step_cell(StepStatus.FAILED, reason, None)
    shown = cell.split(": ", 1)[1]
    assert shown.endswith(" ...") and len(shown) <= REASON_WIDTH
    assert reason.startswith(shown.removesuffix(" ...")) and reason[len(shown) - 4] == " "


async def test_loading_the_sample_customers_again_resets_what_a_run_learnt(db):
    for profile in CUSTOMERS:
        await upsert_customer(db, profile)
    async with db.session() as session:
        emil = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == "c-1005"))).all()
        for cp in emil:
            await mark_contact_point(session, cp.id, ContactStatus.BOUNCED, "hard bounce")
    for profile in CUSTOMERS:
        await upsert_customer(db, profile)
    async with db.session() as session:
        rows = (await session.exec(select(ContactPoint))).all()
    statuses = {(r.customer_id, r.channel): r.status for r in rows}
    assert statuses[("c-1005", "email")] == ContactStatus.VALID
    assert statuses[("c-1004", "email")] == ContactStatus.UNSUBSCRIBED


def test_json_logs_do_not_start_with_alembic_info_lines(tmp_path):
    code = (
        "import asyncio\n"
        "from cascade.infra.logging import configure_logging\n"
        "from cascade.infra.db import Database, migrate\n"
        "configure_logging('INFO', 'json')\n"
        f"asyncio.run(migrate(Database.from_url('sqlite:///{tmp_path / 'x.db'}').engine))\n"
        "import logging; logging.getLogger('cascade.test').info('ready')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr and '"ready"' in done.stderr, done.stderr
    assert logging.getLogger("alembic").level in (logging.NOTSET, logging.WARNING)
