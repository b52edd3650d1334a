"""A population of customers with per-channel reaction propensities and times to react."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reaction:
    """What one customer does to the message of one step of a journey, and when."""

    customer_id: str
    step: int
    event: str
    # Seconds between the message and the reaction (a human takes a moment).
    after_seconds: float = 2.0
    # Conversions reported by the shop name the journey's workflow, not a message id.
    by_workflow_id: bool = False


@dataclass(frozen=True)
class ChannelPropensity:
    """How a group of customers reacts on one channel.

    `rate`: the chance a message on this channel gets a reaction; `event`: the reaction
    (opened, clicked, converted); `median_seconds`/`spread`: a log-normal time to react,
    so most react soon and a few much later.
    """

    rate: float
    event: str = "clicked"
    median_seconds: float = 2.0
    spread: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate {self.rate}: a probability between 0 and 1")
        if self.median_seconds <= 0 or self.spread < 0:
            raise ValueError("median_seconds must be > 0 and spread >= 0")


@dataclass(frozen=True)
class SimulatedCustomer:
    """One customer's own propensity per channel (drawn around the population's)."""

    customer_id: str
    propensities: Mapping[str, ChannelPropensity] = field(default_factory=dict)


class Population:
    """Customers who differ: each one's rate on a channel is drawn from a Beta distribution
    around the channel's base rate (`concentration` says how alike they are), and every
    decision comes from one seeded random generator, so the same seed gives the same history.
    """

    def __init__(self, base: Mapping[str, ChannelPropensity], seed: int = 0, concentration: float = 20.0) -> None:
        if concentration <= 0:
            raise ValueError("concentration must be > 0")
        self.base = dict(base)
        self.concentration = concentration
        self.rng = random.Random(seed)

    def customer(self, customer_id: str) -> SimulatedCustomer:
        """A customer with propensities of their own around the base rates."""
        own = {}
        for channel, p in self.base.items():
            if p.rate in (0.0, 1.0):
                rate = p.rate
            else:
                rate = self.rng.betavariate(p.rate * self.concentration, (1 - p.rate) * self.concentration)
            own[channel] = ChannelPropensity(rate, p.event, p.median_seconds, p.spread)
        return SimulatedCustomer(customer_id, own)

    def customers(self, ids: Sequence[str]) -> list[SimulatedCustomer]:
        """One simulated customer per id, in order."""
        return [self.customer(cid) for cid in ids]

    def reaction(self, customer: SimulatedCustomer, channels: Sequence[str]) -> Reaction | None:
        """The first step (of a cascade on `channels`) this customer reacts to, or None.

        A cascade stops at the first reaction, so later steps are never decided.
        """
        for step, channel in enumerate(channels):
            p = customer.propensities.get(channel)
            if p is None or self.rng.random() >= p.rate:
                continue
            delay = p.median_seconds * self.rng.lognormvariate(0.0, p.spread)
            return Reaction(customer.customer_id, step, p.event, delay, by_workflow_id=p.event == "converted")
        return None

    def reactions(self, customers: Sequence[SimulatedCustomer], channels: Sequence[str]) -> list[Reaction]:
        """Every customer's reaction to a cascade on `channels` (those who never react left out)."""
        return [r for c in customers if (r := self.reaction(c, channels)) is not None]
