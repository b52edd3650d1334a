"""Bandit mode: Thompson sampling shifts traffic to the better arm, never below the floor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from analytics.assignment import stable_seed
from analytics.experiment_bandit import choose_arm, thompson_allocation
from analytics.stats import VariantCounts


def arms(*spec: tuple[str, int, int]) -> list[VariantCounts]:
    return [VariantCounts(name=name, recipients=n, conversions=c) for name, n, c in spec]


def test_no_results_means_equal_traffic():
    allocation = thompson_allocation(arms(("A", 0, 0), ("B", 0, 0), ("C", 0, 0)), seed=1)
    assert allocation.weights == pytest.approx({"A": 1 / 3, "B": 1 / 3, "C": 1 / 3})
    assert allocation.leader is None
    assert "no results yet" in allocation.reason


def test_allocation_is_deterministic_given_the_seed():
    data = arms(("A", 1200, 50), ("B", 1180, 61), ("C", 1210, 55))
    first = thompson_allocation(data, seed=stable_seed("exp-1", "bandit", "4"))
    again = thompson_allocation(data, seed=stable_seed("exp-1", "bandit", "4"))
    assert first == again
    other = thompson_allocation(data, seed=stable_seed("exp-1", "bandit", "5"))
    assert other != first
    # 20,000 draws: another seed moves each weight by Monte Carlo noise only.
    for name in first.weights:
        assert abs(first.weights[name] - other.weights[name]) < 0.02
    assert first.leader == "B"
    assert "'B' is best with probability" in first.reason


def test_weights_are_floor_plus_probability_of_being_best():
    allocation = thompson_allocation(arms(("A", 5000, 200), ("B", 5000, 300), ("C", 5000, 210)), seed=3, floor=0.1)
    assert sum(allocation.weights.values()) == pytest.approx(1.0)
    assert sum(allocation.probability_best.values()) == pytest.approx(1.0)
    for name, weight in allocation.weights.items():
        assert weight == pytest.approx(0.1 + 0.7 * allocation.probability_best[name])
    # B is overwhelmingly best; the others keep exactly their floor.
    assert allocation.weights["B"] == pytest.approx(0.8, abs=1e-3)
    assert allocation.weights["A"] >= 0.1
    assert allocation.weights["C"] >= 0.1


def test_thompson_sampling_moves_traffic_to_the_better_arm_and_never_below_the_floor():
    true_rates = {"A": 0.05, "B": 0.05, "C": 0.08}
    names = list(true_rates)
    floor = 0.05
    rng = np.random.default_rng(20260106)
    recipients = dict.fromkeys(names, 0)
    conversions = dict.fromkeys(names, 0)
    history = []
    for round_no in range(20):
        allocation = thompson_allocation(
            arms(*[(n, recipients[n], conversions[n]) for n in names]),
            seed=stable_seed("exp-bandit-sim", str(round_no)),
            floor=floor,
        )
        history.append(allocation.weights)
        assert sum(allocation.weights.values()) == pytest.approx(1.0)
        assert min(allocation.weights.values()) >= floor - 1e-12
        # 1,000 customers enter this round, split by the current weights.
        split = rng.multinomial(1000, [allocation.weights[n] for n in names])
        for name, entered in zip(names, split, strict=True):
            recipients[name] += int(entered)
            conversions[name] += int(rng.binomial(entered, true_rates[name]))
    print("bandit weights of C by round:", [round(w["C"], 3) for w in history])
    assert history[0]["C"] == pytest.approx(1 / 3)
    assert history[-1]["C"] > 0.8
    assert recipients["C"] > recipients["A"] + recipients["B"]
    # The weaker arms kept their floor to the end, so the comparison still has data on them.
    assert min(history[-1]["A"], history[-1]["B"]) >= floor - 1e-12
    assert min(recipients["A"], recipients["B"]) >= 0.05 * 20 * 1000 * 0.5


def test_equal_arms_keep_sharing_traffic():
    allocation = thompson_allocation(arms(("A", 20_000, 1000), ("B", 20_000, 1000)), seed=9)
    assert allocation.weights["A"] == pytest.approx(0.5, abs=0.03)


def test_single_draws_follow_the_allocation():
    data = arms(("A", 400, 20), ("B", 400, 28), ("C", 400, 22))
    allocation = thompson_allocation(data, seed=11, floor=0.1, draws=200_000)
    rng = np.random.default_rng(12)
    picks = [choose_arm(data, rng, floor=0.1) for _ in range(20_000)]
    observed = np.array([picks.count(n) for n in ("A", "B", "C")], dtype=float)
    expected = np.array([allocation.weights[n] for n in ("A", "B", "C")]) * len(picks)
    assert sps.chisquare(observed, expected).pvalue > 0.001
    # Same Generator state, same choices: replaying a recorded seed replays the decision.
    replay = np.random.default_rng(12)
    assert [choose_arm(data, replay, floor=0.1) for _ in range(200)] == picks[:200]


def test_single_draws_respect_the_floor():
    data = arms(("A", 10_000, 100), ("B", 10_000, 900))
    rng = np.random.default_rng(13)
    picks = [choose_arm(data, rng, floor=0.05) for _ in range(20_000)]
    share_a = picks.count("A") / len(picks)
    # B is certainly best, so A gets exactly its floor: half of the 10 % uniform picks.
    low, high = sps.binom.ppf([0.0005, 0.9995], len(picks), 0.05) / len(picks)
    assert low <= share_a <= high


@pytest.mark.parametrize(
    ("spec", "floor", "message"),
    [
        ((("A", 10, 1),), 0.05, "at least two arms"),
        ((("A", 10, 1), ("A", 10, 2)), 0.05, "unique"),
        ((("A", 10, 1), ("B", 10, 2), ("C", 10, 2)), 0.4, "floor"),
        ((("A", 10, 1), ("B", 10, 2)), -0.1, "floor"),
    ],
)
def test_bad_bandit_input(spec, floor, message):
    with pytest.raises(ValueError, match=message):
        thompson_allocation(arms(*spec), seed=1, floor=floor)
    with pytest.raises(ValueError, match=message):
        choose_arm(arms(*spec), np.random.default_rng(1), floor=floor)
