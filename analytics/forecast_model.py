"""Forecast of a planned cascade in three scenarios, and its backtest against a past campaign.

For a marketer: *"If we send this cascade to these N customers, how many will we reach, how
many will open, click and buy, what will it cost and earn -- on a bad day, a normal day and a
good day?"* The answer comes from the shop's own past rates per channel; where a channel has
little history, from published industry rates, and the forecast says so.

Method (a reviewer can redo it):

1. **Rates per channel** form a chain, each conditional on the one before, so a forecast can
   never show more clicks than opens:

   ======================  ====================================  ===========================
   rate                    successes / trials in the history     meaning
   ======================  ====================================  ===========================
   ``usable``              ``sent / eligible``                   the step found a usable,
                                                                 consented contact point
   ``delivered``           ``delivered / sent``                  the provider delivered it
   ``opened``              ``opened / delivered``                read / opened
   ``clicked``             ``clicked / opened``                  clicked a link
   ``converted``           ``converted / clicked``               bought (or the goal event)
   ======================  ====================================  ===========================

   The counts follow Cascade's rule that each reaction implies the ones before it (a click
   counts as an open, a conversion as a click), so every rate is a share of the one above.

2. **Posterior per rate**: ``Beta(s*m + successes, s*(1-m) + trials - successes)`` with prior
   mean ``m`` from :data:`DEFAULT_PRIORS` and prior strength ``s`` pseudo-trials
   (:attr:`ForecastSettings.prior_strength`, 20 by default): 20 messages of the shop's own
   history weigh as much as the benchmark, 2,000 make it a 1 % nudge. A rate with fewer than
   :attr:`ForecastSettings.thin_below` trials is flagged *thin* in the assumptions.

3. **Monte Carlo** (``draws`` runs, seeded): each run draws every rate from its posterior
   (parameter uncertainty), then plays the cascade with binomial counts (the luck of a single
   campaign). Step k is sent to the customers who have not yet given their step's awaited
   reaction: ``eligible_1 = audience``, ``eligible_{k+1} = eligible_k - reacted_k``;
   ``sent ~ Bin(eligible, usable)``, ``delivered ~ Bin(sent, delivered)``,
   ``opened ~ Bin(delivered, opened)``, ``clicked ~ Bin(opened, clicked)``,
   ``converted ~ Bin(clicked, converted)``; ``reacted`` is the count at the awaited level;
   ``cost = sent * cost_per_message``; ``revenue = converted * revenue_per_conversion``.
   Revenue per conversion is the channel's past mean (``revenue / converted``) when it has at
   least ``min_conversions_for_revenue`` conversions, else the setting's default; it is taken
   as known, not drawn.

4. **Bands**: for every total (sent, delivered, opened, clicked, converted, reacted, cost,
   revenue) the low / middle / high quantiles (10 / 50 / 90 % by default) of its simulated
   distribution. An 80 % band should hold the real outcome about 8 times in 10.

5. **Scenarios** (pessimistic / neutral / optimistic): the runs are ordered by the
   campaign's aim, the number of customers who gave the awaited reaction (ties by revenue);
   each scenario is the average of the runs within ``scenario_window`` (2 %) of the runs
   around the low / middle / high quantile. A scenario is therefore one coherent campaign:
   its steps add up to its total, and the pessimistic one shows the higher cost that fewer
   early reactions bring (more customers go on to the dearer channels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import pairwise
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

Awaited = Literal["delivered", "opened", "clicked", "converted"]
Stage = Literal["usable", "delivered", "opened", "clicked", "converted"]
STAGES: tuple[Stage, ...] = ("usable", "delivered", "opened", "clicked", "converted")
METRICS: tuple[str, ...] = ("sent", "delivered", "opened", "clicked", "converted", "reacted", "cost", "revenue")


class ChannelPrior(BaseModel):
    """Prior means of the rate chain for one channel (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    usable: float = Field(gt=0, lt=1)
    delivered: float = Field(gt=0, lt=1)
    opened: float = Field(gt=0, lt=1)
    clicked: float = Field(gt=0, lt=1)
    converted: float = Field(gt=0, lt=1)
    source: str = ""


# Weak priors, centred on rough public benchmarks; with 20 pseudo-trials they only matter
# until the shop has a few hundred messages of its own on a channel.
# - email: Mailchimp's all-industry benchmark (last updated Oct 2019): unique open rate
#   ~21 %, click rate ~2.6 % of delivered (so ~12 % of openers click), hard + soft bounces
#   ~1 % (delivered 0.98 leaves room for invalid addresses).
# - conversion per click 3 %: the usual e-commerce site conversion rate of 2-3 % per visit.
# - sms: providers report delivery above 95 % (Infobip's "good" line); no read receipt
#   exists, the often quoted "90 %+ read" is a marketing claim, and the 6-19 % click-through
#   of delivered reported by SMS vendors gives ~10 % of readers clicking. In Cascade's own
#   history an SMS "open" is only what a click implies, so history quickly replaces 0.90.
# - messengers (telegram, vk, viber, whatsapp): vendor-reported read rates of 60-80 %;
#   few customers have linked the bot / opted in, hence usable 0.3.
# - push (webpush, fcm): reported push open (tap) rates of 2-8 %; opt-in is the exception.
# - voice: about 40 % of automated calls are answered; few listeners act on a link.
# "usable" for email / sms reflects that most customers leave an address or number.
DEFAULT_PRIORS: dict[str, ChannelPrior] = {
    "email": ChannelPrior(
        usable=0.90, delivered=0.98, opened=0.21, clicked=0.12, converted=0.03, source="Mailchimp benchmark 2019"
    ),
    "sms": ChannelPrior(
        usable=0.70, delivered=0.95, opened=0.90, clicked=0.10, converted=0.03, source="SMS vendor benchmarks"
    ),
    "telegram": ChannelPrior(
        usable=0.30, delivered=0.95, opened=0.60, clicked=0.10, converted=0.03, source="messenger vendor claims"
    ),
    "vk": ChannelPrior(
        usable=0.30, delivered=0.95, opened=0.60, clicked=0.10, converted=0.03, source="messenger vendor claims"
    ),
    "viber": ChannelPrior(
        usable=0.30, delivered=0.95, opened=0.60, clicked=0.10, converted=0.03, source="messenger vendor claims"
    ),
    "whatsapp": ChannelPrior(
        usable=0.30, delivered=0.95, opened=0.60, clicked=0.10, converted=0.03, source="messenger vendor claims"
    ),
    "webpush": ChannelPrior(
        usable=0.20, delivered=0.90, opened=0.05, clicked=0.50, converted=0.03, source="push benchmarks"
    ),
    "fcm": ChannelPrior(
        usable=0.20, delivered=0.90, opened=0.05, clicked=0.50, converted=0.03, source="push benchmarks"
    ),
    "voice": ChannelPrior(
        usable=0.70, delivered=0.40, opened=0.80, clicked=0.05, converted=0.03, source="call answer rates"
    ),
}
# Any channel not listed above (a new adapter): middling rates, flagged as generic.
GENERIC_PRIOR = ChannelPrior(
    usable=0.50, delivered=0.90, opened=0.20, clicked=0.10, converted=0.03, source="generic (no benchmark)"
)


class PlannedStep(BaseModel):
    """One step of the planned cascade, in order."""

    model_config = ConfigDict(frozen=True)

    channel: str = Field(min_length=1)
    cost_per_message: float = Field(ge=0)
    await_reaction: Awaited = "opened"


class ChannelHistory(BaseModel):
    """Past counts for one channel, each a count of messages that reached at least that level.

    `eligible` is how many times a step on this channel came to a customer who had not
    reacted yet (usable or not); None when that is not known, and the usable share then
    comes from the prior alone. `revenue` is the total of the conversions' revenue.
    """

    model_config = ConfigDict(frozen=True)

    channel: str = Field(min_length=1)
    eligible: int | None = Field(default=None, ge=0)
    sent: int = Field(default=0, ge=0)
    delivered: int = Field(default=0, ge=0)
    opened: int = Field(default=0, ge=0)
    clicked: int = Field(default=0, ge=0)
    converted: int = Field(default=0, ge=0)
    revenue: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _nested(self) -> ChannelHistory:
        chain = [("eligible", self.eligible), ("sent", self.sent), ("delivered", self.delivered)]
        chain += [("opened", self.opened), ("clicked", self.clicked), ("converted", self.converted)]
        for (upper_name, upper), (name, value) in pairwise(chain):
            if upper is not None and value is not None and value > upper:
                raise ValueError(
                    f"{self.channel}: {name}={value} exceeds {upper_name}={upper} "
                    "(each count must include the reactions after it, e.g. a click counts as an open)"
                )
        return self

    def counts(self, stage: Stage) -> tuple[int, int] | None:
        """(successes, trials) behind one rate, or None where the trials are unknown."""
        if stage == "usable":
            return None if self.eligible is None else (self.sent, self.eligible)
        pairs: dict[str, tuple[int, int]] = {
            "delivered": (self.delivered, self.sent),
            "opened": (self.opened, self.delivered),
            "clicked": (self.clicked, self.opened),
            "converted": (self.converted, self.clicked),
        }
        return pairs[stage]


class ForecastSettings(BaseModel):
    """Knobs of the forecast; the defaults are what the module docstring describes."""

    model_config = ConfigDict(frozen=True)

    draws: int = Field(default=4000, ge=100, le=1_000_000)
    seed: int = 0
    quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9)
    prior_strength: float = Field(default=20.0, gt=0)
    thin_below: int = Field(default=100, ge=1)
    priors: dict[str, ChannelPrior] = Field(default_factory=lambda: dict(DEFAULT_PRIORS))
    default_revenue_per_conversion: float = Field(default=0.0, ge=0)
    min_conversions_for_revenue: int = Field(default=5, ge=1)
    scenario_window: float = Field(default=0.02, gt=0, le=0.5)

    @model_validator(mode="after")
    def _ordered_quantiles(self) -> ForecastSettings:
        low, mid, high = self.quantiles
        if not 0 < low < mid < high < 1:
            raise ValueError(f"quantiles must satisfy 0 < low < middle < high < 1, got {self.quantiles}")
        return self


class RateAssumption(BaseModel):
    """One rate's prior, the history behind it and the resulting posterior mean."""

    stage: Stage
    prior_mean: float
    prior_strength: float
    successes: int
    trials: int
    posterior_mean: float
    thin: bool


class ChannelAssumption(BaseModel):
    """What the forecast assumed for one channel."""

    channel: str
    prior_source: str
    rates: list[RateAssumption]
    revenue_per_conversion: float
    revenue_source: Literal["history", "default"]
    thin: bool = Field(description="fewer than thin_below messages sent on this channel")


class Assumptions(BaseModel):
    """Everything needed to read (or redo) the forecast."""

    channels: list[ChannelAssumption]
    thin_channels: list[str]
    thin_rates: list[str] = Field(description='e.g. "email.converted (12 trials)"')
    draws: int
    seed: int
    quantiles: tuple[float, float, float]
    prior_strength: float
    thin_below: int
    scenario_order: str = "customers who gave the awaited reaction, then revenue"


class Figures(BaseModel):
    """Counts and money of one step or of the whole campaign (averages over runs, so floats)."""

    eligible: float = 0.0
    sent: float = 0.0
    delivered: float = 0.0
    opened: float = 0.0
    clicked: float = 0.0
    converted: float = 0.0
    reacted: float = 0.0
    cost: float = 0.0
    revenue: float = 0.0


class StepFigures(Figures):
    """One step's figures in one scenario."""

    step: int
    channel: str


class Scenario(BaseModel):
    """One coherent simulated campaign at a quantile of the runs."""

    name: Literal["pessimistic", "neutral", "optimistic"]
    quantile: float
    steps: list[StepFigures]
    total: Figures


class Band(BaseModel):
    """Low / middle / high quantiles of one total."""

    low: float
    middle: float
    high: float


class Forecast(BaseModel):
    """The forecast of a planned campaign."""

    audience: int
    plan: list[PlannedStep]
    scenarios: list[Scenario]
    bands: dict[str, Band]
    assumptions: Assumptions

    def scenario(self, name: str) -> Scenario:
        """The scenario called `name` (pessimistic, neutral or optimistic)."""
        return next(s for s in self.scenarios if s.name == name)


def _posterior(prior_mean: float, strength: float, counts: tuple[int, int] | None) -> tuple[float, float, int, int]:
    successes, trials = counts or (0, 0)
    return strength * prior_mean + successes, strength * (1 - prior_mean) + trials - successes, successes, trials


def _channel_assumption(
    channel: str, history: ChannelHistory | None, settings: ForecastSettings
) -> tuple[ChannelAssumption, dict[Stage, tuple[float, float]]]:
    prior = settings.priors.get(channel, GENERIC_PRIOR)
    rates: list[RateAssumption] = []
    params: dict[Stage, tuple[float, float]] = {}
    for stage in STAGES:
        mean = float(getattr(prior, stage))
        a, b, successes, trials = _posterior(mean, settings.prior_strength, history.counts(stage) if history else None)
        params[stage] = (a, b)
        rates.append(
            RateAssumption(
                stage=stage,
                prior_mean=mean,
                prior_strength=settings.prior_strength,
                successes=successes,
                trials=trials,
                posterior_mean=a / (a + b),
                thin=trials < settings.thin_below,
            )
        )
    if history is not None and history.converted >= settings.min_conversions_for_revenue:
        rpc, revenue_source = history.revenue / history.converted, "history"
    else:
        rpc, revenue_source = settings.default_revenue_per_conversion, "default"
    assumption = ChannelAssumption(
        channel=channel,
        prior_source=prior.source,
        rates=rates,
        revenue_per_conversion=rpc,
        revenue_source=revenue_source,
        thin=history is None or history.sent < settings.thin_below,
    )
    return assumption, params


def _as_mapping(history: Mapping[str, ChannelHistory] | Sequence[ChannelHistory]) -> dict[str, ChannelHistory]:
    if isinstance(history, Mapping):
        for key, item in history.items():
            if key != item.channel:
                raise ValueError(f"history[{key!r}] holds the counts of channel {item.channel!r}")
        return dict(history)
    result: dict[str, ChannelHistory] = {}
    for item in history:
        if item.channel in result:
            raise ValueError(f"history names channel {item.channel!r} twice")
        result[item.channel] = item
    return result


def _simulate(
    plan: Sequence[PlannedStep],
    audience: int,
    params: Mapping[str, dict[Stage, tuple[float, float]]],
    revenue: Mapping[str, float],
    settings: ForecastSettings,
) -> NDArray[np.float64]:
    """Runs x steps x figures array (figures in the order of Figures' fields)."""
    rng = np.random.default_rng(settings.seed)
    n = settings.draws
    # One draw of every rate per run, shared by all steps on that channel within the run.
    rates = {
        channel: {stage: rng.beta(a, b, size=n) for stage, (a, b) in stages.items()}
        for channel, stages in params.items()
    }
    out = np.zeros((n, len(plan), len(Figures.model_fields)), dtype=np.float64)
    remaining = np.full(n, audience, dtype=np.int64)
    for k, step in enumerate(plan):
        r = rates[step.channel]
        sent = rng.binomial(remaining, r["usable"])
        delivered = rng.binomial(sent, r["delivered"])
        opened = rng.binomial(delivered, r["opened"])
        clicked = rng.binomial(opened, r["clicked"])
        converted = rng.binomial(clicked, r["converted"])
        level = {"delivered": delivered, "opened": opened, "clicked": clicked, "converted": converted}
        reacted = level[step.await_reaction]
        out[:, k, :] = np.stack(
            [
                remaining,
                sent,
                delivered,
                opened,
                clicked,
                converted,
                reacted,
                sent * step.cost_per_message,
                converted * revenue[step.channel],
            ],
            axis=1,
        )
        remaining = remaining - reacted
    return out


def forecast(
    plan: Sequence[PlannedStep],
    audience: int,
    history: Mapping[str, ChannelHistory] | Sequence[ChannelHistory],
    settings: ForecastSettings | None = None,
) -> Forecast:
    """Forecast a planned cascade sent to `audience` customers, from per-channel history.

    Raises ValueError for an empty plan or a negative audience. See the module docstring for
    the method; the result's `assumptions` list the priors and where history was thin.
    """
    settings = settings or ForecastSettings()
    if not plan:
        raise ValueError("plan: a forecast needs at least one step")
    if audience < 0:
        raise ValueError(f"audience must be >= 0, got {audience}")
    by_channel = _as_mapping(history)
    assumptions: list[ChannelAssumption] = []
    params: dict[str, dict[Stage, tuple[float, float]]] = {}
    for step in plan:
        if step.channel not in params:
            assumption, params[step.channel] = _channel_assumption(step.channel, by_channel.get(step.channel), settings)
            assumptions.append(assumption)
    revenue = {a.channel: a.revenue_per_conversion for a in assumptions}

    runs = _simulate(plan, audience, params, revenue, settings)
    names = list(Figures.model_fields)
    totals = runs.sum(axis=1)
    totals[:, names.index("eligible")] = audience

    bands: dict[str, Band] = {}
    for metric in METRICS:
        low, mid, high = np.quantile(totals[:, names.index(metric)], settings.quantiles)
        bands[metric] = Band(low=float(low), middle=float(mid), high=float(high))

    # Order runs by the campaign's aim (reacted), ties by revenue; lexsort's last key is primary.
    order = np.lexsort((totals[:, names.index("revenue")], totals[:, names.index("reacted")]))
    half = max(1, math.ceil(settings.scenario_window * settings.draws / 2))
    scenarios: list[Scenario] = []
    scenario_names: tuple[Literal["pessimistic", "neutral", "optimistic"], ...] = (
        "pessimistic",
        "neutral",
        "optimistic",
    )
    for name, q in zip(scenario_names, settings.quantiles, strict=True):
        centre = round(q * (settings.draws - 1))
        chosen = order[max(0, centre - half) : min(settings.draws, centre + half + 1)]
        step_means = runs[chosen].mean(axis=0)
        steps = [
            StepFigures(step=k + 1, channel=step.channel, **dict(zip(names, map(float, step_means[k]), strict=True)))
            for k, step in enumerate(plan)
        ]
        total = Figures(**dict(zip(names, map(float, totals[chosen].mean(axis=0)), strict=True)))
        scenarios.append(Scenario(name=name, quantile=q, steps=steps, total=total))

    thin_rates = [f"{a.channel}.{r.stage} ({r.trials} trials)" for a in assumptions for r in a.rates if r.thin]
    return Forecast(
        audience=audience,
        plan=list(plan),
        scenarios=scenarios,
        bands=bands,
        assumptions=Assumptions(
            channels=assumptions,
            thin_channels=[a.channel for a in assumptions if a.thin],
            thin_rates=thin_rates,
            draws=settings.draws,
            seed=settings.seed,
            quantiles=settings.quantiles,
            prior_strength=settings.prior_strength,
            thin_below=settings.thin_below,
        ),
    )


class ActualOutcome(BaseModel):
    """What a past campaign really did, as totals; a metric left None is not compared."""

    sent: float | None = None
    delivered: float | None = None
    opened: float | None = None
    clicked: float | None = None
    converted: float | None = None
    reacted: float | None = None
    cost: float | None = None
    revenue: float | None = None


class MetricError(BaseModel):
    """Forecast (middle of the band) against the actual figure for one metric."""

    metric: str
    predicted: float
    low: float
    high: float
    actual: float
    error: float = Field(description="predicted - actual")
    abs_error: float
    rel_error: float | None = Field(description="abs_error / actual; None when actual is 0")
    inside_band: bool = Field(description="low <= actual <= high")


class Backtest(BaseModel):
    """A past campaign forecast from the data before it, and how far off it was."""

    cutoff: datetime | None
    forecast: Forecast
    errors: list[MetricError]
    inside_band_share: float
    mean_rel_error: float | None = Field(description="mean of the defined relative errors")


def backtest(
    plan: Sequence[PlannedStep],
    audience: int,
    history_before: Mapping[str, ChannelHistory] | Sequence[ChannelHistory],
    actual: ActualOutcome,
    settings: ForecastSettings | None = None,
    cutoff: datetime | None = None,
) -> Backtest:
    """Forecast a past campaign from `history_before` (the counts before `cutoff`) and score it.

    For each metric the actual gives: predicted = the band's middle quantile,
    error = predicted - actual, abs_error = |error|, rel_error = abs_error / actual
    (None when actual is 0), inside_band = low <= actual <= high.
    """
    result = forecast(plan, audience, history_before, settings)
    errors: list[MetricError] = []
    for metric in METRICS:
        value = getattr(actual, metric)
        if value is None:
            continue
        band = result.bands[metric]
        err = band.middle - value
        errors.append(
            MetricError(
                metric=metric,
                predicted=band.middle,
                low=band.low,
                high=band.high,
                actual=value,
                error=err,
                abs_error=abs(err),
                rel_error=abs(err) / value if value else None,
                inside_band=band.low <= value <= band.high,
            )
        )
    if not errors:
        raise ValueError("actual: give at least one metric to compare")
    rel = [e.rel_error for e in errors if e.rel_error is not None]
    return Backtest(
        cutoff=cutoff,
        forecast=result,
        errors=errors,
        inside_band_share=sum(e.inside_band for e in errors) / len(errors),
        mean_rel_error=float(np.mean(rel)) if rel else None,
    )
