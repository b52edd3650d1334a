"""The forecast (Monte Carlo over Beta posteriors), its backtest, and the savings of the cascade."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from analytics.forecast_model import (
    DEFAULT_PRIORS,
    GENERIC_PRIOR,
    METRICS,
    STAGES,
    ActualOutcome,
    ChannelHistory,
    ForecastSettings,
    PlannedStep,
    backtest,
    forecast,
)
from analytics.savings_model import JourneyRunCosts, RunStep, run_savings, savings_by, summarise_savings

PLAN = [
    PlannedStep(channel="email", cost_per_message=0.001, await_reaction="opened"),
    PlannedStep(channel="viber", cost_per_message=0.02, await_reaction="opened"),
    PlannedStep(channel="sms", cost_per_message=0.05, await_reaction="clicked"),
]
# Hidden "true" rates of the world the history and the campaigns come from.
TRUE = {
    "email": {"usable": 0.9, "delivered": 0.97, "opened": 0.25, "clicked": 0.15, "converted": 0.08},
    "viber": {"usable": 0.4, "delivered": 0.95, "opened": 0.55, "clicked": 0.2, "converted": 0.1},
    "sms": {"usable": 0.7, "delivered": 0.96, "opened": 0.5, "clicked": 0.3, "converted": 0.1},
}
REVENUE = {"email": 40.0, "viber": 40.0, "sms": 40.0}


def history_from(rng: np.random.Generator, eligible: int) -> list[ChannelHistory]:
    """Per-channel counts drawn from the true rates, as the SQL over the delivery log would return them."""
    out = []
    for channel, r in TRUE.items():
        sent = int(rng.binomial(eligible, r["usable"]))
        delivered = int(rng.binomial(sent, r["delivered"]))
        opened = int(rng.binomial(delivered, r["opened"]))
        clicked = int(rng.binomial(opened, r["clicked"]))
        converted = int(rng.binomial(clicked, r["converted"]))
        out.append(
            ChannelHistory(
                channel=channel,
                eligible=eligible,
                sent=sent,
                delivered=delivered,
                opened=opened,
                clicked=clicked,
                converted=converted,
                revenue=converted * REVENUE[channel],
            )
        )
    return out


def real_campaign(rng: np.random.Generator, audience: int) -> dict[str, float]:
    """One campaign played customer by customer (independently of the model's binomial shortcut)."""
    waiting = np.ones(audience, dtype=bool)
    totals = dict.fromkeys(METRICS, 0.0)
    for step in PLAN:
        r = TRUE[step.channel]
        sent = waiting & (rng.random(audience) < r["usable"])
        delivered = sent & (rng.random(audience) < r["delivered"])
        opened = delivered & (rng.random(audience) < r["opened"])
        clicked = opened & (rng.random(audience) < r["clicked"])
        converted = clicked & (rng.random(audience) < r["converted"])
        levels = {"delivered": delivered, "opened": opened, "clicked": clicked, "converted": converted}
        reacted = levels[step.await_reaction]
        for name, mask in [("sent", sent), *levels.items(), ("reacted", reacted)]:
            totals[name] += float(mask.sum())
        totals["cost"] += float(sent.sum()) * step.cost_per_message
        totals["revenue"] += float(converted.sum()) * REVENUE[step.channel]
        waiting &= ~reacted
    return totals


def test_bands_and_scenarios_are_ordered_and_steps_add_up():
    history = history_from(np.random.default_rng(1), 4000)
    result = forecast(PLAN, 5000, history, ForecastSettings(seed=3))

    for metric, band in result.bands.items():
        assert band.low <= band.middle <= band.high, metric
        assert band.low < band.high, f"{metric}: a Monte Carlo band should have width"
    names = [s.name for s in result.scenarios]
    assert names == ["pessimistic", "neutral", "optimistic"]
    reacted = [s.total.reacted for s in result.scenarios]
    assert reacted[0] < reacted[1] < reacted[2]
    # The scenario ordered by reactions sits at that quantile of the reactions.
    assert abs(result.scenario("pessimistic").total.reacted - result.bands["reacted"].low) < 0.02 * reacted[1]
    for scenario in result.scenarios:
        for field in ("sent", "delivered", "opened", "clicked", "converted", "reacted", "cost", "revenue"):
            assert sum(getattr(s, field) for s in scenario.steps) == pytest.approx(getattr(scenario.total, field))
        for step in scenario.steps:
            assert step.eligible >= step.sent >= step.delivered >= step.opened >= step.clicked >= step.converted
        # Each step is sent only to the customers the steps before it did not reach.
        for before, after in zip(scenario.steps, scenario.steps[1:], strict=False):
            assert after.eligible == pytest.approx(before.eligible - before.reacted)
    neutral = result.scenario("neutral")
    # The first step's reach is about audience x usable (0.9), the neutral cost about its sends x price.
    assert neutral.steps[0].sent == pytest.approx(5000 * 0.9, rel=0.03)
    assert neutral.total.cost == pytest.approx(
        sum(s.sent * p.cost_per_message for s, p in zip(neutral.steps, PLAN, strict=True))
    )


def test_the_80_percent_band_covers_the_truth_about_8_times_in_10():
    """Data generated from known rates: the 10-90 band must hold the real outcome at ~80 %."""
    rng = np.random.default_rng(2024)
    reps = 200
    hits = dict.fromkeys(("sent", "opened", "clicked", "converted", "reacted", "cost", "revenue"), 0)
    for rep in range(reps):
        history = history_from(rng, 3000)
        truth = real_campaign(rng, 2000)
        result = forecast(PLAN, 2000, history, ForecastSettings(draws=1500, seed=rep))
        for metric in hits:
            band = result.bands[metric]
            hits[metric] += band.low <= truth[metric] <= band.high
    coverage = {m: h / reps for m, h in hits.items()}
    for share in coverage.values():
        # Binomial sd of the share at 200 runs is 0.028; 0.68-0.92 is over 4 sd wide each way.
        assert 0.68 <= share <= 0.92, coverage
    assert 0.74 <= np.mean(list(coverage.values())) <= 0.86, coverage


def test_thin_history_falls_back_to_the_priors_and_says_so():
    rich = history_from(np.random.default_rng(5), 5000)[0]  # email only
    assert rich.channel == "email" and rich.eligible is not None
    plan = [
        PlannedStep(channel="email", cost_per_message=0.001),
        PlannedStep(channel="telegram", cost_per_message=0.0),
        PlannedStep(channel="carrier-pigeon", cost_per_message=1.0),
    ]
    thin_telegram = ChannelHistory(channel="telegram", eligible=20, sent=6, delivered=6, opened=4, clicked=1)
    result = forecast(plan, 1000, [rich, thin_telegram])
    a = result.assumptions
    assert a.thin_channels == ["telegram", "carrier-pigeon"]
    by = {c.channel: c for c in a.channels}
    # No history: the posterior is the prior, and the generic prior for an unknown channel.
    for rate in by["carrier-pigeon"].rates:
        assert rate.trials == 0 and rate.thin
        assert rate.posterior_mean == pytest.approx(getattr(GENERIC_PRIOR, rate.stage))
    assert by["carrier-pigeon"].prior_source == GENERIC_PRIOR.source
    # Thin history: mostly prior (20 pseudo-trials against 6 real sends).
    usable = next(r for r in by["telegram"].rates if r.stage == "usable")
    prior = DEFAULT_PRIORS["telegram"].usable
    assert usable.posterior_mean == pytest.approx((20 * prior + 6) / (20 + 20))
    assert "telegram.usable (20 trials)" in a.thin_rates
    # Rich history: the posterior sits at the observed rate, the early funnel is not thin.
    email_open = next(r for r in by["email"].rates if r.stage == "opened")
    assert not by["email"].thin and not email_open.thin
    assert email_open.posterior_mean == pytest.approx(rich.opened / rich.delivered, abs=0.01)
    assert by["email"].revenue_source == "history" and by["email"].revenue_per_conversion == pytest.approx(40.0)
    assert by["telegram"].revenue_source == "default" and by["telegram"].revenue_per_conversion == 0.0
    # The first step's reach follows the email history, the unknown step the generic usable share.
    neutral = result.scenario("neutral")
    assert neutral.steps[0].sent == pytest.approx(1000 * rich.sent / rich.eligible, rel=0.05)
    assert neutral.steps[2].sent == pytest.approx(neutral.steps[2].eligible * GENERIC_PRIOR.usable, rel=0.15)


def test_without_eligible_counts_the_usable_share_is_the_prior():
    history = [ChannelHistory(channel="sms", sent=1000, delivered=950, opened=500, clicked=100, converted=10)]
    result = forecast([PlannedStep(channel="sms", cost_per_message=0.05)], 100, history)
    usable = next(r for r in result.assumptions.channels[0].rates if r.stage == "usable")
    assert usable.trials == 0 and usable.posterior_mean == pytest.approx(DEFAULT_PRIORS["sms"].usable)


def test_same_seed_same_forecast_other_seed_other_draws():
    history = history_from(np.random.default_rng(7), 2000)
    one = forecast(PLAN, 3000, history, ForecastSettings(seed=11))
    assert one == forecast(PLAN, 3000, history, ForecastSettings(seed=11))
    assert one.bands != forecast(PLAN, 3000, history, ForecastSettings(seed=12)).bands


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValidationError, match="clicked=5 exceeds opened=3"):
        ChannelHistory(channel="email", sent=10, delivered=10, opened=3, clicked=5)
    with pytest.raises(ValidationError, match="sent=11 exceeds eligible=10"):
        ChannelHistory(channel="email", eligible=10, sent=11)
    with pytest.raises(ValueError, match="at least one step"):
        forecast([], 10, [])
    with pytest.raises(ValueError, match="audience"):
        forecast(PLAN, -1, [])
    with pytest.raises(ValueError, match="twice"):
        forecast(PLAN, 10, [ChannelHistory(channel="sms"), ChannelHistory(channel="sms")])
    with pytest.raises(ValueError, match="holds the counts of channel 'sms'"):
        forecast(PLAN, 10, {"email": ChannelHistory(channel="sms")})
    with pytest.raises(ValidationError, match="quantiles"):
        ForecastSettings(quantiles=(0.5, 0.4, 0.9))


def test_backtest_error_on_a_hand_made_case():
    """History so large and so one-sided that the forecast is exact: every message is
    delivered and opened, nobody clicks. Sent = opened = reacted = 100, cost = 100 x 0.05."""
    big = 10**9
    history = [ChannelHistory(channel="sms", eligible=big, sent=big, delivered=big, opened=big, clicked=0)]
    plan = [PlannedStep(channel="sms", cost_per_message=0.05, await_reaction="opened")]
    actual = ActualOutcome(sent=80, opened=90, clicked=4, cost=5.0)
    result = backtest(plan, 100, history, actual, ForecastSettings(draws=500, seed=1))

    errors = {e.metric: e for e in result.errors}
    assert list(errors) == ["sent", "opened", "clicked", "cost"]  # metrics without an actual are skipped
    sent = errors["sent"]
    assert (sent.predicted, sent.low, sent.high) == (100.0, 100.0, 100.0)
    assert (sent.error, sent.abs_error, sent.rel_error, sent.inside_band) == (20.0, 20.0, 0.25, False)
    opened = errors["opened"]
    assert opened.error == 10.0 and opened.rel_error == pytest.approx(10 / 90) and not opened.inside_band
    clicked = errors["clicked"]
    assert (clicked.predicted, clicked.error, clicked.abs_error, clicked.rel_error) == (0.0, -4.0, 4.0, 1.0)
    cost = errors["cost"]
    assert cost.predicted == pytest.approx(5.0) and cost.abs_error == pytest.approx(0.0, abs=1e-12)
    assert cost.inside_band
    assert result.inside_band_share == pytest.approx(1 / 4)
    assert result.mean_rel_error == pytest.approx((0.25 + 10 / 90 + 1.0 + 0.0) / 4)

    zero = backtest(plan, 100, history, ActualOutcome(converted=0), ForecastSettings(draws=500))
    assert zero.errors[0].rel_error is None and zero.errors[0].inside_band and zero.mean_rel_error is None
    with pytest.raises(ValueError, match="at least one metric"):
        backtest(plan, 100, history, ActualOutcome())


def test_backtest_on_simulated_history_is_mostly_inside_the_band():
    rng = np.random.default_rng(99)
    history = history_from(rng, 5000)
    truth = real_campaign(rng, 4000)
    result = backtest(PLAN, 4000, history, ActualOutcome(**truth), ForecastSettings(seed=5))
    assert {e.metric for e in result.errors} == set(METRICS)
    assert result.inside_band_share >= 0.5
    assert result.mean_rel_error is not None and result.mean_rel_error < 0.25


def test_stages_are_the_documented_chain():
    assert STAGES == ("usable", "delivered", "opened", "clicked", "converted")


# --- Savings of the cascade --------------------------------------------------------------

EMAIL, TELEGRAM, VIBER, SMS = 0.001, 0.0, 0.02, 0.05


def step(channel: str, cost: float, usable: bool | None, sent: bool = False) -> RunStep:
    return RunStep(channel=channel, cost=cost, usable=usable, sent=sent)


RUNS = [
    # Reacted to the email: the telegram and SMS steps were never needed.
    JourneyRunCosts(
        run_id="a",
        journey="winback",
        steps=[step("email", EMAIL, True, True), step("telegram", TELEGRAM, True), step("sms", SMS, True)],
    ),
    # Ignored the email, no Viber, reached by SMS.
    JourneyRunCosts(
        run_id="b",
        journey="winback",
        steps=[step("email", EMAIL, True, True), step("viber", VIBER, False), step("sms", SMS, True, True)],
    ),
    # No email address; telegram's usability never recorded; SMS sent.
    JourneyRunCosts(
        run_id="c",
        journey="cart",
        steps=[step("email", EMAIL, False), step("telegram", TELEGRAM, None), step("sms", SMS, None, True)],
    ),
    # Email and a reminder email, then reacted; SMS was usable.
    JourneyRunCosts(
        run_id="d",
        journey="cart",
        steps=[step("email", EMAIL, True, True), step("email", EMAIL, True, True), step("sms", SMS, True)],
    ),
]


def test_savings_per_run_match_hand_arithmetic():
    a, b, c, d = (run_savings(r) for r in RUNS)
    assert (a.actual, a.all_usable, a.dearest_usable) == pytest.approx((0.001, 0.051, 0.05))
    assert (a.saved_vs_all, a.saved_vs_dearest) == pytest.approx((0.05, 0.049))
    assert (b.actual, b.all_usable, b.dearest_usable) == pytest.approx((0.051, 0.051, 0.05))
    assert (b.saved_vs_all, b.saved_vs_dearest) == pytest.approx((0.0, -0.001))  # the cascade's price here
    assert (c.actual, c.all_usable, c.dearest_usable, c.unknown_usability_steps) == pytest.approx((0.05, 0.05, 0.05, 1))
    # The reminder is paid twice in fact, but "everything at once" sends one email.
    assert (d.actual, d.all_usable, d.dearest_usable) == pytest.approx((0.002, 0.051, 0.05))


def test_savings_summary_is_the_ratio_of_the_sums():
    total = summarise_savings(RUNS)
    assert total.runs == 4
    assert total.actual == pytest.approx(0.104)
    assert total.all_usable == pytest.approx(0.203)
    assert total.dearest_usable == pytest.approx(0.2)
    assert total.saved_vs_all == pytest.approx(0.099)
    assert total.saved_vs_all_pct == pytest.approx(100 * 0.099 / 0.203)
    assert total.saved_vs_dearest == pytest.approx(0.096)
    assert total.saved_vs_dearest_pct == pytest.approx(48.0)
    assert total.unknown_usability_steps == 1

    groups = savings_by(RUNS)
    assert set(groups) == {"winback", "cart"}
    assert groups["winback"].actual == pytest.approx(0.052) and groups["winback"].all_usable == pytest.approx(0.102)
    assert groups["cart"].saved_vs_dearest == pytest.approx(0.1 - 0.052)

    empty = summarise_savings([])
    assert empty.runs == 0 and empty.saved_vs_all_pct is None and empty.saved_vs_dearest_pct is None


def test_a_step_sent_on_an_unusable_channel_is_refused():
    bad = JourneyRunCosts(run_id="x", steps=[step("sms", SMS, False, True)])
    with pytest.raises(ValueError, match="run x: step on sms is marked sent but not usable"):
        run_savings(bad)
    with pytest.raises(ValidationError):
        RunStep(channel="sms", cost=-1, usable=True)
