"""Optichannel models: channel scoring, send-time optimisation and adaptive waiting."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from cascade.routing.scoring import (
    MODEL_VERSION,
    ChannelOption,
    ReactionCounts,
    RoutingInput,
    RoutingParams,
    decision_seed,
    fit_prior_strength,
    prior_mean,
    rank_channels,
    record_outcome,
)
from cascade.routing.sendtime import (
    HOURS_PER_WEEK,
    QuietPeriod,
    hour_histogram,
    hour_of_week,
    hour_profile,
    label,
    next_send_time,
    preview,
)
from cascade.routing.waiting import WaitDecision, adaptive_wait

NOW = datetime(2025, 3, 12, 9, 30, tzinfo=UTC)  # a Wednesday
OPTIONS = [
    ChannelOption(channel="email", cost=0.001),
    ChannelOption(channel="viber", cost=0.02),
    ChannelOption(channel="sms", cost=0.05),
]
# Population: email 2 %, viber 50 %, sms 60 % reaction rates.
POPULATION = {
    "email": ReactionCounts(reactions=20, messages=1000),
    "viber": ReactionCounts(reactions=500, messages=1000),
    "sms": ReactionCounts(reactions=600, messages=1000),
}


def routing(**overrides) -> RoutingInput:
    values = {"options": OPTIONS, "population": POPULATION, "now": NOW, "seed": 1} | overrides
    return RoutingInput(**values)


GREEDY = RoutingParams(exploration=0.0)


def order(decision) -> list[str]:
    return [s.channel for s in decision.ranked]


# --- Channel scoring ---------------------------------------------------------------------


def test_cold_start_ranks_by_the_population_rates():
    decision = rank_channels(routing(), GREEDY)
    # Expected cost per reaction from the population alone: viber 0.02/0.5 = 0.04,
    # email 0.001/0.02 = 0.05, sms 0.05/0.6 = 0.083.
    assert order(decision) == ["viber", "email", "sms"]
    assert decision.chosen == "viber" and not decision.explored and decision.greedy_choice == "viber"
    by = {s.channel: s for s in decision.ranked}
    for channel, counts in POPULATION.items():
        m_pop = (counts.reactions + 2 * 0.1) / (counts.messages + 2)
        assert by[channel].p_reaction == pytest.approx(m_pop)
        assert by[channel].expected_cost_per_reaction == pytest.approx(by[channel].cost / m_pop)
    # A cold customer of a segment that matches the population ranks the same way.
    same = rank_channels(routing(segment=POPULATION), GREEDY)
    assert order(same) == order(decision)
    assert decision.model_version == MODEL_VERSION == "beta-binomial-v3"


def test_the_segment_moves_a_cold_customer_and_is_itself_shrunk_toward_the_population():
    segment = {"email": ReactionCounts(reactions=90, messages=100)}  # this segment reads email
    decision = rank_channels(routing(segment=segment), GREEDY)
    assert order(decision)[0] == "email"
    params = RoutingParams()
    m_pop = (20 + 0.2) / 1002
    assert prior_mean(segment["email"], POPULATION["email"], params) == pytest.approx((90 + 50 * m_pop) / 150)


def test_a_strong_own_history_overrides_the_prior_and_a_thin_one_does_not():
    strong = {"email": ReactionCounts(reactions=40, messages=50)}
    decision = rank_channels(routing(own=strong), GREEDY)
    email = decision.ranked[0]
    assert email.channel == "email"
    m = (20 + 0.2) / 1002
    s = 10.0  # default prior strength
    assert (email.alpha, email.beta) == pytest.approx((s * m + 40, s * (1 - m) + 10))
    assert email.p_reaction == pytest.approx((s * m + 40) / (s + 50))
    assert email.p_reaction > 0.6

    # One miss on viber barely moves it (p 0.50 -> 0.45, still the cheapest per reaction);
    # twenty misses take it below email.
    m_viber = (500 + 0.2) / 1002
    one_miss = rank_channels(routing(own={"viber": ReactionCounts(reactions=0, messages=1)}), GREEDY)
    assert order(one_miss) == ["viber", "email", "sms"]
    assert one_miss.ranked[0].p_reaction == pytest.approx(s * m_viber / (s + 1))
    many = rank_channels(routing(own={"viber": ReactionCounts(reactions=0, messages=20)}), GREEDY)
    assert order(many) == ["email", "sms", "viber"]

    thin = {"email": ReactionCounts(reactions=1, messages=1)}

    # A fitted, bounded prior strength per channel is honoured (and clipped to the bounds).
    fitted = rank_channels(routing(own=thin, prior_strength={"email": 1000.0}), GREEDY)
    email_fitted = next(x for x in fitted.ranked if x.channel == "email")
    assert email_fitted.prior_strength == 50.0


def test_switching_a_miss_lowers_the_channel_for_the_next_step():
    own = {"viber": ReactionCounts(reactions=1, messages=2)}
    before = rank_channels(routing(own=own), GREEDY)
    assert before.chosen == "viber"
    p_before = before.ranked[0].p_reaction
    for _ in range(3):
        own = record_outcome(own, "viber", reacted=False)
    assert own["viber"] == ReactionCounts(reactions=1, messages=5)
    after = rank_channels(routing(own=own), GREEDY)
    viber = next(s for s in after.ranked if s.channel == "viber")
    assert viber.p_reaction < p_before
    assert after.chosen == "email"


def test_preference_multiplies_p_by_the_boost():
    plain = rank_channels(routing(), GREEDY)
    preferred = rank_channels(routing(preferred_channel="email"), GREEDY)
    email_plain = next(s for s in plain.ranked if s.channel == "email")
    email_pref = next(s for s in preferred.ranked if s.channel == "email")
    assert email_pref.preferred and email_pref.p_reaction == pytest.approx(email_plain.p_reaction)
    assert email_pref.p_adjusted == pytest.approx(1.5 * email_plain.p_reaction)
    # 0.001 / (1.5 x 0.02) = 0.033 now beats viber's 0.04.
    assert order(preferred) == ["email", "viber", "sms"]
    # The boost is a nudge, not an order: a preferred SMS (0.05 / 0.9 = 0.056) stays behind viber.
    assert order(rank_channels(routing(preferred_channel="sms"), GREEDY))[0] == "viber"
    # p is capped at 1.
    capped = rank_channels(routing(own={"sms": ReactionCounts(reactions=500, messages=500)}, preferred_channel="sms"))
    assert next(s for s in capped.ranked if s.channel == "sms").p_adjusted == 1.0


def test_stay_where_active_raises_p_but_does_not_override_the_price():
    recent = {"sms": NOW - timedelta(days=3)}
    plain = {s.channel: s for s in rank_channels(routing(), GREEDY).ranked}
    decision = rank_channels(routing(last_reaction_at=recent), GREEDY)
    sms = next(s for s in decision.ranked if s.channel == "sms")
    assert sms.active and sms.p_adjusted == pytest.approx(1.5 * plain["sms"].p_reaction)
    assert "reacted 3 d ago x1.5" in sms.reason
    # 0.05 / 0.9 = 0.056 still behind viber's 0.02 / 0.5: a recent SMS reaction does not buy
    # an SMS every time (model v1 pinned it first, paying 25x an email for the same reader).
    assert order(decision) == ["viber", "email", "sms"]
    # At one price, recent activity decides: SMS (0.06 / 0.6) before viber (0.06 / 0.5) until
    # the customer reacted on viber yesterday (0.06 / 0.75).
    tied = [ChannelOption(channel="viber", cost=0.06), ChannelOption(channel="sms", cost=0.06)]
    assert order(rank_channels(routing(options=tied), GREEDY))[0] == "sms"
    viber_active = rank_channels(routing(options=tied, last_reaction_at={"viber": NOW - timedelta(days=1)}), GREEDY)
    assert order(viber_active)[0] == "viber"
    # Older than stay_active_days (30), or switched off: no boost.
    old = rank_channels(routing(last_reaction_at={"sms": NOW - timedelta(days=40)}), GREEDY)
    assert not any(s.active for s in old.ranked)
    off = rank_channels(routing(last_reaction_at=recent), RoutingParams(exploration=0, stay_active_days=None))
    assert next(s for s in off.ranked if s.channel == "sms").p_adjusted == pytest.approx(plain["sms"].p_reaction)
    # An active channel the customer cannot be reached on now is not chosen.
    options = [o if o.channel != "sms" else ChannelOption(channel="sms", cost=0.05, usable=False) for o in OPTIONS]
    unreachable = rank_channels(routing(options=options, last_reaction_at=recent), GREEDY)
    assert unreachable.chosen == "viber" and unreachable.unusable == ["sms"]


def test_exploration_is_bounded_by_the_setting_and_deterministic_per_seed():
    # Email and viber close: exploration has something to change.
    own = {"email": ReactionCounts(reactions=1, messages=30), "viber": ReactionCounts(reactions=2, messages=4)}
    params = RoutingParams(exploration=0.1)
    n = 3000
    decisions = [rank_channels(routing(own=own, seed=decision_seed("wf", i)), params) for i in range(n)]
    explored = sum(d.explored for d in decisions) / n
    changed = sum(d.chosen != d.greedy_choice for d in decisions) / n
    # 0.1 +- 4 binomial sd (0.0055 each).
    assert 0.078 <= explored <= 0.122
    assert 0 < changed <= explored
    assert all(d.chosen == d.greedy_choice for d in decisions if not d.explored)
    assert all(d.ranked[0].sampled_p is not None for d in decisions if d.explored)
    # No exploration: never; full exploration: always, and it tries more than one channel.
    assert not any(rank_channels(routing(own=own, seed=i), GREEDY).explored for i in range(300))
    always = [rank_channels(routing(own=own, seed=i), RoutingParams(exploration=1.0)) for i in range(300)]
    assert all(d.explored for d in always) and len({d.chosen for d in always}) >= 2
    # The same input and seed give the same decision, so a workflow can record it.
    seed = decision_seed("journey-42", 3)
    one = rank_channels(routing(own=own, seed=seed), RoutingParams(exploration=1.0))
    assert one == rank_channels(routing(own=own, seed=seed), RoutingParams(exploration=1.0))
    assert one.seed == seed


def test_the_ceiling_skips_a_dear_channel_the_customer_has_not_answered():
    # This customer never answered 6 SMS: p = (10 x 0.599 + 0) / 16 = 0.374 -> 0.134 per reaction.
    # Email answered 0 of 20: p = (10 x 0.02) / 30 = 0.007 -> 0.15 per reaction.
    own = {"sms": ReactionCounts(reactions=0, messages=6), "email": ReactionCounts(reactions=0, messages=20)}
    free = rank_channels(routing(own=own), GREEDY)
    capped = rank_channels(routing(own=own, max_cost_per_reaction=0.1), GREEDY)
    # Without a ceiling the ranking is v2's: viber (0.040), sms (0.134), email (0.149).
    assert order(free) == ["viber", "sms", "email"] and free.over_ceiling == []
    # The ceiling does not reorder: it only takes the channels above it out of the choice.
    assert order(capped) == order(free) and capped.chosen == "viber"
    assert capped.over_ceiling == ["sms", "email"]
    sms = capped.ranked[1]
    assert sms.over_ceiling and sms.reason.endswith("0.134 per reaction; above the ceiling 0.100: not sent)")
    # When viber is used up (the step's pool), nothing is left under the ceiling: stop.
    rest = routing(own=own, options=[OPTIONS[0], OPTIONS[2]], max_cost_per_reaction=0.1)
    stop = rank_channels(rest, GREEDY)
    assert stop.chosen is None and [s.channel for s in stop.ranked] == ["sms", "email"]
    assert stop.summary.startswith("every channel above max_cost_per_reaction 0.100: sms: 0.37 past reaction rate")
    # A higher ceiling lets the SMS through.
    assert (
        rank_channels(routing(own=own, options=[OPTIONS[0], OPTIONS[2]], max_cost_per_reaction=0.14), GREEDY).chosen
        == "sms"
    )


def test_the_ceiling_needs_evidence_so_a_cold_channel_is_still_tried():
    # No own history at all: sms costs 0.05 / 0.6 = 0.083 per reaction by the prior, above a
    # 0.05 ceiling, but nothing says this customer would not answer: it is sent.
    cold = rank_channels(routing(options=[OPTIONS[2]], max_cost_per_reaction=0.05), GREEDY)
    assert cold.chosen == "sms" and cold.over_ceiling == []
    # One unanswered SMS is evidence enough by default; a stricter setting waits for more.
    once = {"sms": ReactionCounts(reactions=0, messages=1)}
    assert rank_channels(routing(options=[OPTIONS[2]], own=once, max_cost_per_reaction=0.05), GREEDY).chosen is None
    patient = RoutingParams(exploration=0.0, ceiling_evidence=3)
    assert rank_channels(routing(options=[OPTIONS[2]], own=once, max_cost_per_reaction=0.05), patient).chosen == "sms"
    with pytest.raises(ValidationError):
        routing(max_cost_per_reaction=0)


def test_exploration_past_the_ceiling_is_bounded():
    # sms after 10 unanswered: p = 6 / 20 = 0.30 -> 0.167 per reaction, above a 0.12 ceiling.
    own = {"sms": ReactionCounts(reactions=0, messages=10)}
    options = [OPTIONS[2]]
    greedy = [rank_channels(routing(options=options, own=own, seed=i, max_cost_per_reaction=0.12)) for i in range(2000)]
    # Only a decision that explores can send it (its draw, Beta(6, 14), above 0.05 / 0.12 = 0.42):
    # at most the exploration share, and not never, so the model can learn it was wrong.
    sent = [d for d in greedy if d.chosen == "sms"]
    assert all(d.explored for d in sent)
    share = len(sent) / len(greedy)
    assert 0 < share <= 0.1
    # Without exploration it never goes out; the same seed decides the same.
    assert all(
        rank_channels(routing(options=options, own=own, seed=i, max_cost_per_reaction=0.12), GREEDY).chosen is None
        for i in range(200)
    )
    assert greedy[5] == rank_channels(routing(options=options, own=own, seed=5, max_cost_per_reaction=0.12))


def test_decision_seed_is_stable_and_distinct():
    assert decision_seed("wf-1", 2) == decision_seed("wf-1", 2)
    assert decision_seed("wf-1", 2) != decision_seed("wf-1", 3) != decision_seed("wf-2", 2)
    assert 0 <= decision_seed("x") < 2**63
    # sha256 of "wf-1\x1f2", first 8 bytes, shifted right by one: the same in every process.
    digest = hashlib.sha256(b"wf-1\x1f2").digest()
    assert decision_seed("wf-1", 2) == int.from_bytes(digest[:8], "big") >> 1


def test_reasons_are_formatted_for_people():
    decision = rank_channels(routing(own={"email": ReactionCounts(reactions=1, messages=3)}), GREEDY)
    # One reaction in three emails: p = (10 x 0.020 + 1) / 13 = 0.09, 0.001 / 0.09 = 0.011 per reaction.
    assert decision.summary == "email: 0.09 past reaction rate, cost 0.001; viber: 0.50, 0.020; sms: 0.60, 0.050"
    email, viber, _ = decision.ranked
    assert viber.reason == (
        "viber: 0.50 past reaction rate, cost 0.020 (no own history, prior 0.50; 0.040 per reaction)"
    )
    assert re.fullmatch(r"email: 0\.09 past reaction rate, cost 0\.001 \(own 1/3; 0\.011 per reaction\)", email.reason)
    explored = rank_channels(routing(seed=3), RoutingParams(exploration=1.0))
    assert all(re.search(r"explored draw \d\.\d\d", s.reason) for s in explored.ranked)
    none = rank_channels(routing(options=[ChannelOption(channel="sms", cost=0.05, usable=False)]))
    assert none.chosen is None and none.ranked == [] and none.summary == "no usable channel"


def test_fit_prior_strength_by_method_of_moments():
    rng = np.random.default_rng(8)
    p = rng.beta(2, 8, size=4000)  # true strength alpha + beta = 10
    n = rng.integers(5, 40, size=4000)
    r = rng.binomial(n, p)
    customers = [ReactionCounts(reactions=int(a), messages=int(b)) for a, b in zip(r, n, strict=True)]
    assert 8.0 <= fit_prior_strength(customers) <= 12.5
    # Everybody alike (pure binomial noise around one rate): the upper bound.
    alike = [ReactionCounts(reactions=int(x), messages=20) for x in rng.binomial(20, 0.3, size=2000)]
    assert fit_prior_strength(alike) == 50.0
    # Everyone different (rates 0 or 1): the lower bound.
    split = [ReactionCounts(reactions=10 * (i % 2), messages=10) for i in range(100)]
    assert fit_prior_strength(split) == 2.0
    # Too few customers, or nothing to tell them apart: the default.
    assert fit_prior_strength(customers[:5], default=7.0) == 7.0
    assert fit_prior_strength([ReactionCounts(reactions=0, messages=3)] * 50) == 10.0
    assert fit_prior_strength([ReactionCounts(reactions=i % 2, messages=1) for i in range(50)]) == 10.0


def test_bad_routing_input_is_refused():
    with pytest.raises(ValidationError, match="reactions \\(5\\) exceed messages \\(2\\)"):
        ReactionCounts(reactions=5, messages=2)
    with pytest.raises(ValidationError):
        routing(now=datetime(2025, 1, 1))  # naive
    with pytest.raises(ValueError, match="listed twice"):
        rank_channels(routing(options=[OPTIONS[0], OPTIONS[0]]))
    with pytest.raises(ValidationError, match="prior_strength_bounds"):
        RoutingParams(prior_strength_bounds=(5, 1))
    with pytest.raises(ValidationError):
        RoutingParams(exploration=1.5)


# --- Send-time optimisation ----------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def local(day: int, hour: int, minute: int = 0, zone: ZoneInfo = BERLIN, weeks_back: int = 0) -> datetime:
    """A time in `zone` on weekday `day` (0 = Monday) of the week of 2025-03-10, `weeks_back` earlier."""
    base = datetime(2025, 3, 10, tzinfo=zone) - timedelta(weeks=weeks_back)
    return (base + timedelta(days=day)).replace(hour=hour, minute=minute)


def test_hour_of_week_is_local():
    assert hour_of_week(local(1, 19, 45), BERLIN) == 43
    assert label(43) == "Tue 19:00"
    # 23:30 UTC on a Sunday is already Monday 00:30 in Berlin.
    assert hour_of_week(datetime(2025, 3, 9, 23, 30, tzinfo=UTC), BERLIN) == 0
    with pytest.raises(ValueError, match="naive"):
        hour_of_week(datetime(2025, 3, 9), BERLIN)


def test_best_hour_found_from_a_planted_pattern():
    rng = np.random.default_rng(4)
    planted = [local(1, 19, int(rng.integers(0, 60)), weeks_back=w) for w in range(20)]
    noise = [
        local(int(rng.integers(0, 7)), int(rng.integers(0, 24)), weeks_back=int(rng.integers(0, 20))) for _ in range(10)
    ]
    profile = hour_profile(planted + noise, BERLIN)
    assert profile.source == "customer" and profile.own_reactions == 30
    assert profile.best_hour() == 43
    assert sum(profile.probabilities) == pytest.approx(1.0)


def segment_at_19() -> np.ndarray:
    """A segment that reacts at 19:00 on every day."""
    counts = np.ones(HOURS_PER_WEEK)
    counts[np.arange(7) * 24 + 19] = 100
    return counts


def test_shrinkage_pulls_a_thin_history_toward_the_segment():
    thin = [local(2, 3, weeks_back=1), local(2, 3, weeks_back=2)]  # Wed 03:00, twice
    profile = hour_profile(thin, BERLIN, segment_at_19())
    assert profile.source == "customer"
    assert profile.best_hour() % 24 == 19
    assert profile.probabilities[2 * 24 + 3] > profile.probabilities[2 * 24 + 10]  # but it left a mark
    # The same pattern, fifty times: the customer's own hour wins.
    many = [local(2, 3, weeks_back=w % 25, minute=w) for w in range(50)]
    assert hour_profile(many, BERLIN, segment_at_19()).best_hour() == 2 * 24 + 3
    # Exact formula at the planted hour: (smoothed own + a * q) / (n + a), the smoothing a
    # Gaussian of 1 h cut at 4 h, so the hour itself keeps 1 / sum(exp(-x^2 / 2), x = -4..4),
    # of which half stays on Wednesday and half is spread over the seven days' 03:00.
    seg = segment_at_19()
    q = seg / seg.sum()
    centre = 1 / np.exp(-(np.arange(-4, 5) ** 2) / 2).sum()
    own = 2 * centre * (0.5 + 0.5 / 7)
    assert profile.probabilities[51] == pytest.approx((own + 24 * q[51]) / (2 + 24))


def test_a_habit_seen_on_one_day_is_expected_on_the_others():
    mondays = [local(0, 20, 5, weeks_back=w) for w in range(1, 3)]  # read at 20:05 on two Mondays
    profile = hour_profile(mondays, BERLIN)
    # Tuesday: 20:00 now beats 10:00 (without pooling the Tuesday hours were all alike).
    assert profile.probabilities[24 + 20] > profile.probabilities[24 + 10]
    assert hour_profile(mondays, BERLIN, day_pooling=0).probabilities[24 + 20] == pytest.approx(
        hour_profile(mondays, BERLIN, day_pooling=0).probabilities[24 + 10]
    )
    # Monday itself stays the best hour of the week.
    assert profile.best_hour() == 20
    step_on_tuesday = next_send_time(local(1, 9), profile, BERLIN, timedelta(hours=24))
    assert step_on_tuesday.send_at == local(1, 20).astimezone(UTC)
    with pytest.raises(ValueError, match="day_pooling"):
        hour_profile(mondays, BERLIN, day_pooling=1.5)


def test_send_time_picks_the_best_hour_in_the_window():
    profile = hour_profile([local(2, 19, weeks_back=w) for w in range(1, 11)], BERLIN)
    decision = next_send_time(local(2, 8, 30), profile, BERLIN, timedelta(hours=24))
    assert decision.send_at == local(2, 19).astimezone(UTC)
    assert decision.in_window and decision.source == "customer" and "Wed 19:00" in decision.reason
    # Best hour not in a short window: the best of what is in it, on the full local hour.
    short = next_send_time(local(2, 14, 10), profile, BERLIN, timedelta(hours=4, minutes=30))
    assert short.send_at == local(2, 18).astimezone(UTC)
    # The best hour just passed: 20:10 is still next to it, better than any later hour.
    assert next_send_time(local(2, 20, 10), profile, BERLIN, timedelta(hours=3)).send_at == local(2, 20, 10)
    # Now is the best hour: send now.
    at = local(2, 19, 20)
    assert next_send_time(at, profile, BERLIN, timedelta(hours=24)).send_at == at.astimezone(UTC)


def test_quiet_hours_beat_the_best_time():
    quiet = [QuietPeriod(start=time(21, 0), end=time(9, 0))]
    late = hour_profile([local(d, 23, weeks_back=w) for w in range(1, 5) for d in range(7)], BERLIN)
    assert late.best_hour() % 24 == 23
    for zone in (BERLIN, ZoneInfo("Asia/Kolkata"), ZoneInfo("America/New_York")):
        for start_hour in range(0, 168, 5):
            now = datetime(2025, 3, 3, tzinfo=UTC) + timedelta(hours=start_hour, minutes=17)
            for window in (timedelta(hours=2), timedelta(hours=8), timedelta(hours=24)):
                d = next_send_time(now, late, zone, window, quiet)
                t = d.send_at.astimezone(zone).time()
                assert not (t >= time(21) or t < time(9)), (zone, now, window, d)
                assert d.send_at >= now
                if d.in_window:
                    assert d.send_at <= now + window
    # Inside a 24 h window from the morning, the best allowed hour is 20:00 (next to 23:00 after smoothing).
    d = next_send_time(local(2, 10), late, BERLIN, timedelta(hours=24), quiet)
    assert d.send_at.astimezone(BERLIN).hour == 20
    # A window entirely inside quiet hours: the first moment quiet hours end, flagged.
    night = next_send_time(local(2, 22), late, BERLIN, timedelta(hours=4), quiet)
    assert not night.in_window and night.send_at == local(3, 9).astimezone(UTC)
    assert "quiet" in night.reason
    # Quiet hours ending at half past: that moment itself is a candidate.
    half = [QuietPeriod(start=time(0, 0), end=time(9, 30))]
    morning = hour_profile([local(d, 9, weeks_back=w) for w in range(1, 5) for d in range(7)], BERLIN)
    d = next_send_time(local(2, 6), morning, BERLIN, timedelta(hours=6), half)
    assert d.send_at == local(2, 9, 30).astimezone(UTC)
    with pytest.raises(ValueError, match="whole day"):
        next_send_time(
            local(2, 6), morning, BERLIN, timedelta(0), [QuietPeriod(time(0), time(12)), QuietPeriod(time(12), time(0))]
        )


def test_fallback_without_history():
    profile = hour_profile([], BERLIN)
    assert profile.source == "fallback" and profile.own_reactions == 0
    assert profile.best_hour() % 24 == 10
    d = next_send_time(local(2, 13), profile, BERLIN, timedelta(hours=24))
    assert d.send_at == local(3, 10).astimezone(UTC) and d.source == "fallback"
    # Short window without 10:00: the closest hour to it.
    d = next_send_time(local(2, 13), profile, BERLIN, timedelta(hours=4))
    assert d.send_at == local(2, 13).astimezone(UTC)
    # A segment but no own history: the segment's hour.
    seg = hour_profile([], BERLIN, segment_at_19())
    assert seg.source == "segment"
    assert next_send_time(local(2, 13), seg, BERLIN, timedelta(hours=24)).send_at == local(2, 19).astimezone(UTC)
    # A half-hour zone still gets full local hours.
    kolkata = ZoneInfo("Asia/Kolkata")
    d = next_send_time(datetime(2025, 3, 12, 2, 0, tzinfo=UTC), profile, kolkata, timedelta(hours=24))
    assert d.send_at.astimezone(kolkata).hour == 10 and d.send_at.astimezone(kolkata).minute == 0


def test_preview_and_histogram():
    decisions = [
        next_send_time(local(2, 8), hour_profile([], BERLIN, segment_at_19()), BERLIN, timedelta(hours=24)),
        next_send_time(local(2, 8), hour_profile([], BERLIN), BERLIN, timedelta(hours=24)),
        next_send_time(local(2, 9), hour_profile([], BERLIN), BERLIN, timedelta(hours=24)),
    ]
    assert preview(decisions) == {"Wed 10:00": 2, "Wed 19:00": 1}
    hist = hour_histogram([local(0, 0), local(0, 0, 30), local(6, 23)], BERLIN)
    assert hist[0] == 2 and hist[167] == 1 and hist.sum() == 3
    with pytest.raises(ValueError, match="168"):
        hour_profile([], BERLIN, [1.0] * 24)


# --- Adaptive waiting ------------------------------------------------------------------------

MINIMUM, MAXIMUM, DEFAULT = timedelta(minutes=15), timedelta(days=3), timedelta(days=1)


def wait(
    own: Sequence[timedelta | float], channel: Sequence[timedelta | float], percentile: float = 90.0
) -> WaitDecision:
    return adaptive_wait(own, channel, default=DEFAULT, minimum=MINIMUM, maximum=MAXIMUM, percentile=percentile)


def test_adaptive_wait_follows_the_percentile():
    own = [timedelta(minutes=m) for m in range(1, 21)]  # 1..20 minutes
    d = wait(own, [])
    assert d.source == "customer" and d.own_weight == 1.0
    assert d.wait == timedelta(minutes=float(np.percentile(range(1, 21), 90)))  # 18.1 min
    assert d.wait == timedelta(minutes=18.1)
    assert wait(own, [], percentile=50).wait == timedelta(minutes=15)  # 10.5 clamped up
    # Seconds are accepted as well.
    assert wait([m * 60.0 for m in range(1, 21)], []).wait == timedelta(minutes=18.1)


def test_a_fast_customer_is_not_made_to_wait_a_day_and_a_slow_one_not_chased_early():
    channel = [timedelta(hours=h) for h in np.linspace(1, 30, 200)]  # p90 ~ 27 h
    fast = [timedelta(minutes=8 + m % 4) for m in range(20)]
    d = wait(fast, channel)
    q_own = np.percentile([(8 + m % 4) * 60 for m in range(20)], 90)
    q_ch = np.percentile([t.total_seconds() for t in channel], 90)
    w = 20 / 25
    expected = float(np.exp(w * np.log(q_own) + (1 - w) * np.log(q_ch)))
    assert d.source == "customer+channel" and d.own_weight == pytest.approx(0.8)
    assert d.wait.total_seconds() == pytest.approx(expected, rel=1e-6)
    assert timedelta(minutes=15) <= d.wait < timedelta(hours=1)
    slow = [timedelta(hours=40 + h) for h in range(10)]
    assert wait(slow, channel).wait > timedelta(hours=30)


def test_thin_own_history_uses_the_channel_then_the_default():
    channel = [timedelta(hours=h) for h in range(1, 41)]
    d = wait([timedelta(minutes=5)] * 3, channel)
    assert d.source == "channel" and d.own_quantile is None
    assert d.wait == timedelta(hours=float(np.percentile(range(1, 41), 90)))
    assert "own history 3 < 5" in d.reason
    d = wait([], channel[:10])
    assert d.source == "default" and d.wait == timedelta(days=1)


def test_adaptive_wait_respects_the_bounds():
    quick = [timedelta(seconds=30)] * 10
    d = wait(quick, [])
    assert d.wait == timedelta(minutes=15) and d.clamped and d.unclamped == timedelta(seconds=30)
    assert "clamped to 15 min" in d.reason
    slow = [timedelta(days=6)] * 10
    d = wait(slow, [])
    assert d.wait == timedelta(days=3) and d.clamped
    inside = wait([timedelta(hours=2)] * 10, [])
    assert inside.wait == timedelta(hours=2) and not inside.clamped
    with pytest.raises(ValueError, match="bounds"):
        adaptive_wait([], [], default=timedelta(days=1), minimum=timedelta(days=2), maximum=timedelta(days=1))
    with pytest.raises(ValueError, match="not negative"):
        wait([timedelta(seconds=-1)], [])
    with pytest.raises(ValueError, match="percentile"):
        wait([], [], percentile=0)
