"""Bandit mode: Thompson sampling moves traffic towards the variant that converts best.

Each arm's conversion rate has a Beta(1 + conversions, 1 + non-conversions) posterior.
Thompson sampling sends a customer to an arm with the probability that the arm is the best
one; a floor keeps every arm alive so a variant that started unlucky can still recover
and so the final comparison keeps data on every arm.

Both functions are deterministic given their seed or Generator, so a decision made in an
activity can be recorded and replayed (derive the seed with
``analytics.assignment.stable_seed``). The control group, if any, stays outside the bandit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from analytics.stats import VariantCounts

DEFAULT_FLOOR = 0.05
# 20,000 draws: P(best) per arm has a Monte Carlo standard error of at most ~0.0035.
DEFAULT_DRAWS = 20_000


class BanditAllocation(BaseModel):
    """The new traffic split over the bandit's arms and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float]
    probability_best: dict[str, float]
    leader: str | None
    floor: float
    draws: int
    seed: int
    reason: str


def _validate(arms: Sequence[VariantCounts], floor: float) -> None:
    names = [arm.name for arm in arms]
    if len(names) < 2:
        raise ValueError("a bandit needs at least two arms")
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    if not 0.0 <= floor <= 1.0 / len(arms):
        raise ValueError(f"floor must be in [0, 1/{len(arms)}] for {len(arms)} arms, got {floor!r}")


def _posterior_samples(arms: Sequence[VariantCounts], rng: np.random.Generator, size: int) -> np.ndarray:
    a = np.array([1 + arm.conversions for arm in arms], dtype=float)
    b = np.array([1 + arm.recipients - arm.conversions for arm in arms], dtype=float)
    return rng.beta(a[:, None], b[:, None], size=(len(arms), size))


def thompson_allocation(
    arms: Sequence[VariantCounts],
    *,
    seed: int,
    floor: float = DEFAULT_FLOOR,
    draws: int = DEFAULT_DRAWS,
) -> BanditAllocation:
    """New traffic weights for the arms from their results so far.

    For a marketer: each version gets traffic in proportion to the chance that it is the
    best one, but never less than ``floor`` (5 % by default).
    Method: probability of being best estimated from ``draws`` joint samples of the Beta
    posteriors (numpy Generator seeded with ``seed``); weight = floor + (1 - arms * floor)
    * P(best), so the weights sum to 1 and each is at least ``floor``. Before any arm has a
    recipient all weights are equal.
    """
    _validate(arms, floor)
    if draws < 1000:
        raise ValueError(f"draws must be at least 1000, got {draws}")
    names = [arm.name for arm in arms]
    k = len(arms)
    recipients = sum(arm.recipients for arm in arms)
    conversions = sum(arm.conversions for arm in arms)
    if recipients == 0:
        equal = {name: 1.0 / k for name in names}
        return BanditAllocation(
            weights=equal,
            probability_best=dict(equal),
            leader=None,
            floor=floor,
            draws=draws,
            seed=seed,
            reason=f"no results yet: equal traffic to all {k} arms",
        )
    samples = _posterior_samples(arms, np.random.default_rng(seed), draws)
    best = np.bincount(np.argmax(samples, axis=0), minlength=k) / draws
    spread = 1.0 - k * floor
    weights = {name: floor + spread * float(p) for name, p in zip(names, best, strict=True)}
    leader = names[int(np.argmax(best))]
    reason = (
        f"Thompson sampling on {recipients:,} recipients and {conversions:,} conversions: "
        f"{leader!r} is best with probability {float(best.max()):.3f}; "
        f"each arm gets {floor:.0%} plus {spread:.0%} of traffic in proportion to its probability of being best"
    )
    return BanditAllocation(
        weights=weights,
        probability_best={name: float(p) for name, p in zip(names, best, strict=True)},
        leader=leader,
        floor=floor,
        draws=draws,
        seed=seed,
        reason=reason,
    )


def choose_arm(arms: Sequence[VariantCounts], rng: np.random.Generator, *, floor: float = DEFAULT_FLOOR) -> str:
    """One Thompson-sampling decision: the arm for the next customer.

    For a marketer: the same rule as ``thompson_allocation``, applied to one customer.
    Method: with probability ``arms * floor`` a uniformly random arm (this gives every arm
    its floor); otherwise one sample from each arm's Beta posterior and the arm with the
    highest sample. The chance of each arm is therefore exactly the weight
    ``thompson_allocation`` reports. Deterministic for a given Generator state.
    """
    _validate(arms, floor)
    k = len(arms)
    if rng.random() < k * floor:
        return arms[int(rng.integers(k))].name
    return arms[int(np.argmax(_posterior_samples(arms, rng, 1)[:, 0]))].name
