"""Savings of the cascade: what a journey run cost against sending on every channel at once.

For a marketer: *"The cascade stopped as soon as the customer reacted, so the dear channels
only got the remainder. Had we sent the message on every channel the customer could be
reached on, it would have cost X; had we sent it only on the dearest of those channels, Y."*

Method, per journey run (a reviewer can redo it by hand):

* The run's steps are the steps of its cascade, each with its channel, the price of one
  message on that channel (`cost`), whether the customer was **usable** there (a valid,
  consented contact point, judged for every step, also the ones the run never reached) and
  whether a message was **sent** (billed).
* ``actual`` = the sum of ``cost`` over the steps that were sent.
* ``all_usable`` ("every usable channel at once") = the sum, over the *distinct* channels
  of the run's steps that were usable, of one message's cost on that channel. A channel
  that appears in two steps (a reminder) counts once, at the highest cost given for it:
  sending everything at once means one message per channel.
* ``dearest_usable`` ("the dearest usable channel only") = the highest cost among the usable
  steps; 0 when none was usable.
* ``saved_vs_all = all_usable - actual``; ``saved_vs_dearest = dearest_usable - actual``.
  The second can be negative: a customer who ignored the cheap channels and was reached by
  the dearest one cost that plus the cheap messages before it -- the price of the cheaper
  reach on everyone else.
* A step whose usability is unknown (``usable=None``, e.g. not recorded for a step the run
  never reached) counts as not usable, which lowers both counterfactuals, so the savings
  shown are a lower bound; the number of such steps is reported. A sent step counts as
  usable whatever was recorded (a step marked sent *and* unusable is refused as bad data).

Aggregated over runs: money is the sum of each figure over the runs, and the percentage is
the ratio of the sums, ``100 * sum(saved) / sum(counterfactual)`` (not the mean of per-run
percentages, so a run that cost nothing does not weigh as much as one that cost a lot);
None when the counterfactual is 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field


class RunStep(BaseModel):
    """One step of a journey run: its channel, the price of one message, usable, sent."""

    model_config = ConfigDict(frozen=True)

    channel: str = Field(min_length=1)
    cost: float = Field(ge=0, description="price of one message on this channel, in the shop's currency")
    usable: bool | None = Field(description="customer reachable and consented here; None = not known")
    sent: bool = False


class JourneyRunCosts(BaseModel):
    """The steps of one journey run, in cascade order."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    journey: str | None = None
    steps: Sequence[RunStep]


class RunSavings(BaseModel):
    """Actual cost and the two counterfactuals for one run."""

    run_id: str
    journey: str | None
    actual: float
    all_usable: float
    dearest_usable: float
    saved_vs_all: float
    saved_vs_dearest: float
    unknown_usability_steps: int


class SavingsSummary(BaseModel):
    """Savings over many runs, as money and percent."""

    runs: int
    actual: float
    all_usable: float
    dearest_usable: float
    saved_vs_all: float
    saved_vs_all_pct: float | None
    saved_vs_dearest: float
    saved_vs_dearest_pct: float | None
    unknown_usability_steps: int


def run_savings(run: JourneyRunCosts) -> RunSavings:
    """Actual cost of one run against "every usable channel" and "dearest usable channel only"."""
    sent_steps = [s for s in run.steps if s.sent]
    for step in sent_steps:
        if step.usable is False:
            raise ValueError(
                f"run {run.run_id}: step on {step.channel} is marked sent but not usable; "
                "a sent message means the contact point was usable"
            )
    actual = math.fsum(s.cost for s in sent_steps)
    usable_cost: dict[str, float] = {}
    for step in run.steps:
        # A sent step was usable by definition, even where usability was not recorded.
        if step.usable or step.sent:
            usable_cost[step.channel] = max(step.cost, usable_cost.get(step.channel, 0.0))
    all_usable = math.fsum(usable_cost.values())
    dearest = max(usable_cost.values(), default=0.0)
    return RunSavings(
        run_id=run.run_id,
        journey=run.journey,
        actual=actual,
        all_usable=all_usable,
        dearest_usable=dearest,
        saved_vs_all=all_usable - actual,
        saved_vs_dearest=dearest - actual,
        unknown_usability_steps=sum(1 for s in run.steps if s.usable is None and not s.sent),
    )


def _pct(saved: float, base: float) -> float | None:
    return 100.0 * saved / base if base > 0 else None


def summarise_savings(runs: Iterable[JourneyRunCosts | RunSavings]) -> SavingsSummary:
    """Sum the runs' costs and counterfactuals; percentages are ratios of the sums."""
    per_run = [r if isinstance(r, RunSavings) else run_savings(r) for r in runs]
    actual = math.fsum(r.actual for r in per_run)
    all_usable = math.fsum(r.all_usable for r in per_run)
    dearest = math.fsum(r.dearest_usable for r in per_run)
    return SavingsSummary(
        runs=len(per_run),
        actual=actual,
        all_usable=all_usable,
        dearest_usable=dearest,
        saved_vs_all=all_usable - actual,
        saved_vs_all_pct=_pct(all_usable - actual, all_usable),
        saved_vs_dearest=dearest - actual,
        saved_vs_dearest_pct=_pct(dearest - actual, dearest),
        unknown_usability_steps=sum(r.unknown_usability_steps for r in per_run),
    )


def savings_by(
    runs: Iterable[JourneyRunCosts], key: Callable[[JourneyRunCosts], str | None] = lambda r: r.journey
) -> dict[str | None, SavingsSummary]:
    """One summary per group (by journey unless `key` says otherwise)."""
    groups: dict[str | None, list[JourneyRunCosts]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    return {name: summarise_savings(items) for name, items in groups.items()}
