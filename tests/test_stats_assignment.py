"""Experiment assignment: uniform, stable across processes, minimal movement on weight changes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from analytics.assignment import (
    arm_for_point,
    assign_bandit_arm,
    assign_variant,
    bucket_edges,
    stable_seed,
    unit_point,
)

N_IDS = 100_000
REPO = Path(__file__).resolve().parent.parent
ID_KINDS = ("email", "sequential", "uuid")


@cache
def customer_ids(kind: str) -> list[str]:
    """Three id shapes shops use: sequential numbers, UUIDs and e-mail-like strings.

    Deterministic, so the goodness-of-fit tests below cannot flake.
    """
    if kind == "sequential":
        return [str(i) for i in range(N_IDS)]
    if kind == "uuid":
        return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"customer/{i}")) for i in range(N_IDS)]
    return [f"user{i}@shop{i % 97}.example" for i in range(N_IDS)]


@pytest.fixture(scope="module")
def points() -> dict[str, np.ndarray]:
    return {kind: np.array([unit_point("exp-subject-line", c) for c in customer_ids(kind)]) for kind in ID_KINDS}


@pytest.mark.parametrize("kind", ID_KINDS)
def test_points_are_uniform_on_the_unit_interval(points, kind):
    u = points[kind]
    assert u.min() >= 0.0
    assert u.max() < 1.0
    counts, _ = np.histogram(u, bins=100, range=(0.0, 1.0))
    assert sps.chisquare(counts).pvalue > 0.001
    assert sps.kstest(u, "uniform").pvalue > 0.001


SPLITS = [
    ({"A": 1.0, "B": 1.0}, 0.0),
    ({"A": 1.0, "B": 1.0}, 0.1),
    ({"A": 1.0, "B": 1.0, "C": 1.0, "D": 1.0}, 0.0),
    ({"A": 7.0, "B": 2.0, "C": 1.0}, 0.0),
    ({"A": 1.0, "B": 3.0}, 0.2),
    ({"A": 0.49, "B": 0.49, "C": 0.02}, 0.05),
]


def _arms(u: np.ndarray, edges: list[tuple[str, float, float]]) -> np.ndarray:
    """Vectorized ``arm_for_point`` (searchsorted "right" is bisect_right) for 100,000 points."""
    names = np.array([name for name, _, _ in edges])
    return names[np.searchsorted([high for _, _, high in edges], u, side="right")]


@pytest.mark.parametrize(("variants", "control_share"), SPLITS)
def test_assign_variant_is_the_point_located_in_the_edges(points, variants, control_share):
    edges = bucket_edges(variants, control_share)
    ids = customer_ids("uuid")[:10_000]
    direct = [assign_variant("exp-subject-line", c, variants, control_share) for c in ids]
    assert direct == [arm_for_point(unit_point("exp-subject-line", c), edges) for c in ids]
    assert direct == list(_arms(points["uuid"][:10_000], edges))


@pytest.mark.parametrize(("variants", "control_share"), SPLITS)
@pytest.mark.parametrize("kind", ID_KINDS)
def test_split_matches_weights(points, variants, control_share, kind):
    edges = bucket_edges(variants, control_share)
    counts = Counter(_arms(points[kind], edges).tolist())
    names = [name for name, _, _ in edges]
    assert set(counts) == set(names)
    observed = np.array([counts[name] for name in names], dtype=float)
    expected = np.array([(high - low) * N_IDS for _, low, high in edges])
    assert sps.chisquare(observed, expected).pvalue > 0.001
    # The chi-square test above has power: the same counts fail against a 1-point shift.
    shifted = expected.copy()
    shifted[0] += 0.01 * N_IDS
    shifted[-1] -= 0.01 * N_IDS
    assert sps.chisquare(observed, shifted).pvalue < 0.001


def test_experiments_are_independent(points):
    split = bucket_edges({"A": 1.0, "B": 1.0, "C": 1.0})
    first = _arms(points["uuid"], split)
    second = _arms(np.array([unit_point("exp-other", c) for c in customer_ids("uuid")]), split)
    table = np.array([[np.sum((first == a) & (second == b)) for b in "ABC"] for a in "ABC"])
    assert sps.chi2_contingency(table).pvalue > 0.001
    # Not the same assignment renamed: about a third agree, as independence predicts.
    assert abs(np.mean(first == second) - 1 / 3) < 0.01


_CHILD = """
import json, sys
from analytics.assignment import assign_variant, stable_seed, unit_point
ids = json.loads(sys.stdin.read())
print(json.dumps({
    "points": [unit_point("exp-subject-line", c) for c in ids],
    "arms": [assign_variant("exp-subject-line", c, {"A": 2.0, "B": 1.0}, 0.1) for c in ids],
    "seed": stable_seed("exp-subject-line", "bandit", "7"),
}))
"""


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_identical_in_a_fresh_process(hash_seed):
    ids = [*customer_ids("email")[:2000], "ünïcode-客户", "", "a:b", "a\x00b"]
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
        timeout=60,
    )
    child = json.loads(out.stdout)
    assert child["points"] == [unit_point("exp-subject-line", c) for c in ids]
    assert child["arms"] == [assign_variant("exp-subject-line", c, {"A": 2.0, "B": 1.0}, 0.1) for c in ids]
    assert child["seed"] == stable_seed("exp-subject-line", "bandit", "7")


def test_points_are_pinned():
    # A change of the hashing scheme would silently reassign every running experiment's
    # customers; these values were computed once from scheme v1 and must never change.
    assert unit_point("exp-1", "cust-1") == 0.9474563369074015
    assert unit_point("subject-line-2026", "42") == 0.7464522049109859
    assert unit_point("ünï", "c:ö") == 0.605439433764021
    assert stable_seed("exp-1", "bandit", "3") == 6062916875264148922


def test_key_parts_cannot_run_together():
    assert unit_point("a:b", "c") != unit_point("a", "b:c")
    assert unit_point("ab", "c") != unit_point("a", "bc")


def _moved_share(points, old: dict[str, float], old_control: float, new: dict[str, float], new_control: float):
    u = points["sequential"]
    before = _arms(u, bucket_edges(old, old_control))
    after = _arms(u, bucket_edges(new, new_control))
    return u, before, after, before != after


def test_changed_weight_moves_only_the_ids_between_old_and_new_edge(points):
    u, before, after, moved = _moved_share(points, {"A": 0.5, "B": 0.5}, 0.0, {"A": 0.6, "B": 0.4}, 0.0)
    # Exactly the ids whose point lies between the old edge 0.5 and the new edge 0.6 move,
    # all of them from B to A: the minimum a 10-point weight change can move.
    band = (u >= 0.5) & (u < 0.6)
    assert np.array_equal(moved, band)
    assert {(before[i], after[i]) for i in np.flatnonzero(moved)} == {("B", "A")}
    assert abs(moved.mean() - 0.1) < 0.005


def test_changing_variant_weights_never_touches_the_control_group(points):
    _, before, after, moved = _moved_share(points, {"A": 1.0, "B": 1.0}, 0.1, {"A": 2.0, "B": 1.0}, 0.1)
    assert np.array_equal(before == "control", after == "control")
    # The A/B edge moved from 0.55 to 0.70: 15 % of customers move, all from B to A.
    assert abs(moved.mean() - 0.15) < 0.005
    assert {(before[i], after[i]) for i in np.flatnonzero(moved)} == {("B", "A")}


def test_moved_share_is_bounded_by_edge_movement(points):
    old, new = {"A": 1.0, "B": 1.0, "C": 1.0}, {"A": 1.0, "B": 2.0, "C": 1.0}
    _, _, _, moved = _moved_share(points, old, 0.1, new, 0.2)
    old_edges = [high for _, _, high in bucket_edges(old, 0.1)]
    new_edges = [high for _, _, high in bucket_edges(new, 0.2)]
    bound = sum(abs(a - b) for a, b in zip(old_edges, new_edges, strict=True))
    assert moved.mean() <= bound + 0.005
    assert moved.mean() > 0.0


def test_zero_weight_arm_gets_nobody():
    arms = Counter(
        assign_variant("exp-z", c, {"A": 1.0, "paused": 0.0, "B": 1.0}) for c in customer_ids("uuid")[:20_000]
    )
    assert "paused" not in arms
    assert set(arms) == {"A", "B"}


def test_edges_cover_the_unit_interval_in_order():
    edges = bucket_edges({"A": 0.3, "B": 0.3, "C": 0.4}, 0.1)
    assert [name for name, _, _ in edges] == ["control", "A", "B", "C"]
    assert edges[0][1] == 0.0
    assert edges[-1][2] == 1.0
    for (_, _, high), (_, low, _) in itertools.pairwise(edges):
        assert high == low
    assert arm_for_point(0.0, edges) == "control"
    assert arm_for_point(0.1, edges) == "A"
    assert arm_for_point(0.999999, edges) == "C"


def test_bandit_assignment_uses_the_current_weights():
    ids = customer_ids("uuid")[:20_000]
    weights = {"A": 0.1, "B": 0.8, "C": 0.1}
    arms = Counter(assign_bandit_arm("exp-bandit", c, weights, control_share=0.1) for c in ids)
    observed = np.array([arms["control"], arms["A"], arms["B"], arms["C"]], dtype=float)
    expected = np.array([0.1, 0.09, 0.72, 0.09]) * len(ids)
    assert sps.chisquare(observed, expected).pvalue > 0.001
    # The hold-out is the same customers whatever the bandit does with the rest.
    other = [assign_bandit_arm("exp-bandit", c, {"A": 0.6, "B": 0.2, "C": 0.2}, 0.1) for c in ids]
    first = [assign_bandit_arm("exp-bandit", c, weights, 0.1) for c in ids]
    assert [a == "control" for a in first] == [b == "control" for b in other]


@pytest.mark.parametrize(
    ("variants", "control_share", "message"),
    [
        ({}, 0.0, "at least one variant"),
        ({"A": -1.0, "B": 1.0}, 0.0, "weight of variant 'A'"),
        ({"A": float("nan")}, 0.0, "weight of variant 'A'"),
        ({"A": 0.0, "B": 0.0}, 0.0, "positive weight"),
        ({"A": 1.0}, 1.0, "control_share"),
        ({"A": 1.0}, -0.1, "control_share"),
        ({"control": 1.0, "B": 1.0}, 0.1, "reserved for the control group"),
        ({"": 1.0}, 0.0, "non-empty"),
    ],
)
def test_bad_splits_are_rejected_with_a_reason(variants, control_share, message):
    with pytest.raises(ValueError, match=message):
        assign_variant("exp", "c", variants, control_share)


def test_bandit_weights_must_be_an_allocation():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_bandit_arm("exp", "c", {"A": 120.0, "B": 80.0})
