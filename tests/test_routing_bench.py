"""The routing proof's fast simulation (bench/routing_fast.py): the same code the README's figures come from, small."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from bench.routing_fast import CHANNELS, Person, population, read_at, run
from cascade.routing.scoring import RoutingParams


def test_the_population_differs_in_channel_and_hour():
    people = population(300, np.random.default_rng(3))
    best = {max(CHANNELS, key=lambda ch: p.p[ch]) for p in people}
    assert best == set(CHANNELS)
    assert len({p.hour for p in people}) >= 8
    assert all(0 < p.p[ch] < 1 for p in people for ch in CHANNELS)


def test_a_message_off_the_customers_hour_is_read_at_that_hour_or_not_at_all():
    evening = Person("x", {"email": 0.95, "telegram": 0.95, "sms": 0.95}, hour=20, delay_minutes=10)
    morning = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    opens = [read_at(evening, "email", morning, week, seed=1) for week in range(200)]
    read = [o for o in opens if o is not None]
    # 0.95 x 0.55 off the hour; every open after 20:00 the same day.
    assert 0.4 < len(read) / len(opens) < 0.65
    assert all(o >= morning.replace(hour=20) and o - morning <= timedelta(days=1) for o in read)
    at_hour = [read_at(evening, "email", morning.replace(hour=19), week, seed=1) for week in range(200)]
    assert sum(o is not None for o in at_hour) > len(read)
    # The same message meets the same luck whoever sends it.
    assert read_at(evening, "sms", morning, 3, seed=1) == read_at(evening, "sms", morning, 3, seed=1)


def test_strategies_meet_the_same_luck_and_the_order_alone_cannot_change_reactions():
    data = run(30, 3, 5, RoutingParams())
    totals = {name: s["total"] for name, s in data["strategies"].items()}
    # Every journey runs through the whole pool until a reaction: the same reactions whatever
    # the order (this is why channel ranking alone cannot reach the 0.7x goal).
    assert (
        totals["fixed"]["reaction_rate"] == totals["oracle"]["reaction_rate"] == totals["everything"]["reaction_rate"]
    )
    assert totals["optichannel"]["reaction_rate"] == totals["fixed"]["reaction_rate"]
    assert totals["oracle"]["cost_per_reaction"] <= totals["fixed"]["cost_per_reaction"]
    assert totals["everything"]["cost_per_reaction"] > totals["fixed"]["cost_per_reaction"]
    # Sending at the customer's hour does change them.
    assert totals["oracle+time"]["reaction_rate"] > totals["fixed"]["reaction_rate"]
    assert [w["journeys"] for w in data["strategies"]["optichannel+time+wait"]["by_week"]] == [30, 30, 30]


def test_a_ceiling_spares_sms_once_a_customer_has_left_it_unanswered():
    strategies = ("fixed", "optichannel", "optichannel+ceiling")
    data = run(30, 4, 5, RoutingParams(exploration=0.0), ceiling=0.06, strategies=strategies)
    assert list(data["strategies"]) == list(strategies) and data["ceiling"] == 0.06
    free, capped = (data["strategies"][s]["total"] for s in strategies[1:])
    # An SMS (0.05) above 0.06 per reaction needs P < 0.83: after one unanswered SMS nearly
    # every customer's is, so the capped strategy sends far fewer, and reacts less.
    assert capped["sms_per_journey"] < 0.5 * free["sms_per_journey"]
    assert capped["cost"] < free["cost"] and capped["reaction_rate"] <= free["reaction_rate"]
    # The first week nobody has an SMS history: the ceiling holds nothing back yet.
    assert data["strategies"]["optichannel+ceiling"]["by_week"][0] == data["strategies"]["optichannel"]["by_week"][0]


def _part(seed: int, names: list[str], rate: float, weeks: int = 5) -> dict[str, Any]:
    week = {
        "journeys": 10,
        "reaction_rate": rate,
        "cost": 1.0,
        "cost_per_reaction": 1.0 / (10 * rate),
        "median_hours_to_reaction": 2.0,
    }
    return {
        "customers": 10,
        "weeks": weeks,
        "seed": seed,
        "strategies": {n: {"total": week, "by_week": [week] * weeks} for n in names},
    }


def test_split_real_workflow_runs_are_pooled_against_fixed_of_the_same_seeds():
    from bench.routing import merge

    merged = merge(
        [
            _part(7, ["fixed", "optichannel"], 0.5),
            _part(7, ["optichannel+time"], 0.625),
            _part(8, ["fixed", "optichannel+time"], 0.5),
        ]
    )
    timed = merged["strategies"]["optichannel+time"]
    # Seed 7: 1.0 / 6.25 against 1.0 / 5 -> 0.8x; seed 8: 1.0x; pooled: 10 / 56.25 against 10 / 50.
    assert timed["seeds"] == [7, 8]
    assert timed["per_seed_cost_vs_fixed"] == pytest.approx({"7": 0.8, "8": 1.0})
    assert abs(timed["vs_fixed"]["cost_per_reaction"] - 50 / 56.25) < 1e-12
    # optichannel ran on seed 7 only: it is compared with seed 7's fixed run only.
    assert merged["strategies"]["optichannel"]["seeds"] == [7]
    assert merged["strategies"]["optichannel"]["vs_fixed"]["cost_per_reaction"] == 1.0
    with pytest.raises(SystemExit, match="fixed"):
        merge([_part(9, ["optichannel"], 0.5)])
