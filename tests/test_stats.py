"""Experiment statistics: equal to statsmodels and textbook values, and honest in simulation.

The simulations draw from seeded numpy Generators, so they are deterministic; their bands
are still derived from the binomial distribution of the simulated rate, so a real defect
(a wrong side, a wrong alpha, a missing correction) fails them rather than a lucky seed.
"""

from __future__ import annotations

import gc
import json
import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import integrate, optimize
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from analytics.stats import (
    ExperimentStats,
    VariantCounts,
    analyze_experiment,
    bayes_compare,
    chi_square_independence,
    conversion_rate_interval,
    holm_adjust,
    plan_experiment,
    relative_lift_interval,
    sample_ratio_check,
    two_proportion_ztest,
)

SIMULATIONS = 1000
# Monte Carlo draws for the simulations, where only the frequentist part is under test.
FAST_DRAWS = 1000


def binomial_band(rate: float, trials: int, level: float = 0.999) -> tuple[float, float]:
    """The central ``level`` range of an observed rate over ``trials`` runs with true ``rate``."""
    tail = (1.0 - level) / 2.0
    return sps.binom.ppf(tail, trials, rate) / trials, sps.binom.ppf(1.0 - tail, trials, rate) / trials


@pytest.fixture
def frozen_heap():
    """statsmodels' Holm runs a full gc.collect() per call; freezing the long-lived heap
    keeps 1,000 simulated reports fast without changing any result."""
    gc.freeze()
    yield
    gc.unfreeze()


def counts(*arms: tuple[str, int, int]) -> list[VariantCounts]:
    return [VariantCounts(name=name, recipients=n, conversions=c) for name, n, c in arms]


# --- equal to statsmodels / scipy on fixed data ----------------------------------------------

FIXED = counts(("control", 4210, 168), ("A", 4180, 207), ("B", 4250, 171), ("C", 4195, 221))


def test_report_equals_statsmodels_on_fixed_data():
    report = analyze_experiment(FIXED, alpha=0.05)
    by_name = {v.name: v for v in report.variants}
    ctrl = by_name["control"]
    assert ctrl.is_control
    assert ctrl.versus_control is None

    raw_p = []
    for arm in FIXED:
        line = by_name[arm.name]
        low, high = proportion_confint(arm.conversions, arm.recipients, alpha=0.05, method="wilson")
        assert line.conversion_rate == pytest.approx(arm.conversions / arm.recipients, rel=1e-12)
        assert line.conversion_rate_interval is not None
        assert line.conversion_rate_interval.low == pytest.approx(low, rel=1e-12)
        assert line.conversion_rate_interval.high == pytest.approx(high, rel=1e-12)
        if arm.name == "control":
            continue
        cmp = line.versus_control
        assert cmp is not None
        z, p = proportions_ztest([arm.conversions, 168], [arm.recipients, 4210])
        assert cmp.z_statistic == pytest.approx(z, rel=1e-12)
        assert cmp.p_value == pytest.approx(p, rel=1e-12)
        raw_p.append(cmp.p_value)
        r_low, r_high = confint_proportions_2indep(
            arm.conversions, arm.recipients, 168, 4210, method="score", compare="ratio", correction=False
        )
        assert cmp.relative_lift_interval is not None
        assert cmp.relative_lift_interval.low == pytest.approx(r_low - 1, rel=1e-9)
        assert cmp.relative_lift_interval.high == pytest.approx(r_high - 1, rel=1e-9)
        assert cmp.lift_interval_method == "score"
        assert cmp.relative_lift == pytest.approx((arm.conversions / arm.recipients) / (168 / 4210) - 1)

    reject, corrected, _, _ = multipletests(raw_p, alpha=0.05, method="holm")
    others = [by_name[n].versus_control for n in ("A", "B", "C")]
    assert [c.p_value_holm for c in others if c] == pytest.approx(list(corrected), rel=1e-12)
    assert [c.significant for c in others if c] == list(reject)
    # The data were chosen so Holm matters: A's raw p is below 0.05, its adjusted one is not.
    assert by_name["C"].versus_control and by_name["C"].versus_control.significant
    a = by_name["A"].versus_control
    assert a is not None
    assert a.p_value < 0.05 < a.p_value_holm
    assert not a.significant

    table = np.array([[v.conversions for v in FIXED], [v.recipients - v.conversions for v in FIXED]])
    chi = sps.chi2_contingency(table, correction=False)
    assert report.chi_square is not None
    assert report.chi_square.statistic == pytest.approx(chi.statistic, rel=1e-12)
    assert report.chi_square.p_value == pytest.approx(chi.pvalue, rel=1e-12)
    assert report.chi_square.dof == 3


def test_textbook_two_proportion_example():
    # Control 120 of 1000 (12 %), variant 150 of 1000 (15 %), worked by hand:
    #   pooled p = 270 / 2000 = 0.135
    #   SE = sqrt(0.135 * 0.865 * (1/1000 + 1/1000)) = 0.0152823
    #   z = 0.03 / 0.0152823 = 1.96305, two-sided p = 2 * (1 - Phi(1.96305)) = 0.04964
    #   Wilson 95 % for 120/1000 (z = 1.959964):
    #     centre = (0.12 + z^2/2000) / (1 + z^2/1000) = 0.121454
    #     half   = z * sqrt(0.12 * 0.88 / 1000 + z^2 / 4e6) / (1 + z^2/1000) = 0.020155
    #     -> [0.10130, 0.14161]
    z, p = two_proportion_ztest(150, 1000, 120, 1000)
    assert z == pytest.approx(1.96305, abs=5e-5)
    assert p == pytest.approx(0.04964, abs=5e-5)
    interval = conversion_rate_interval(120, 1000)
    assert interval.low == pytest.approx(0.10130, abs=5e-5)
    assert interval.high == pytest.approx(0.14161, abs=5e-5)
    # With two arms the chi-square test is the squared z-test.
    chi = chi_square_independence([150, 120], [1000, 1000])
    assert chi.statistic == pytest.approx(z**2, rel=1e-9)
    assert chi.p_value == pytest.approx(p, rel=1e-9)
    # The score interval of the lift inverts the same test: p just below 0.05, so the
    # interval just excludes 0.
    lift, method = relative_lift_interval(150, 1000, 120, 1000)
    assert method == "score"
    assert lift is not None and lift.low is not None
    assert 0.0 < lift.low < 0.001


def test_textbook_holm_example():
    # Holm by hand for p = (0.01, 0.04, 0.03) at alpha 0.05: sorted 0.01*3 = 0.03,
    # 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06 -> adjusted (0.03, 0.06, 0.06); only the first rejected.
    adjusted, rejected = holm_adjust([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])
    assert rejected == [True, False, False]
    assert holm_adjust([0.03]) == ([0.03], [True])
    assert holm_adjust([]) == ([], [])


# --- Bayesian part: Monte Carlo against numerical integration --------------------------------


def _exact_bayes(cv: int, nv: int, cc: int, nc: int) -> tuple[float, float, float, float]:
    """P(V > C), E[max(C - V, 0)] and the 95 % interval of V/C - 1 by numerical integration."""
    post_v, post_c = sps.beta(1 + cv, 1 + nv - cv), sps.beta(1 + cc, 1 + nc - cc)
    lo = min(post_v.ppf(1e-10), post_c.ppf(1e-10))
    hi = max(post_v.isf(1e-10), post_c.isf(1e-10))
    beats = integrate.quad(lambda x: post_v.pdf(x) * post_c.cdf(x), lo, hi, limit=200)[0]
    # E[(C - v)+] = E[C] * P(Beta(a_c + 1, b_c) > v) - v * P(C > v)
    shifted = sps.beta(2 + cc, 1 + nc - cc)
    loss = integrate.quad(
        lambda v: post_v.pdf(v) * (post_c.mean() * shifted.sf(v) - v * post_c.sf(v)), lo, hi, limit=200
    )[0]

    def ratio_cdf(r: float) -> float:
        return float(integrate.quad(lambda c: post_c.pdf(c) * post_v.cdf(r * c), lo, hi, limit=200)[0])

    q_low = optimize.brentq(lambda r: ratio_cdf(r) - 0.025, 0.2, 5.0) - 1
    q_high = optimize.brentq(lambda r: ratio_cdf(r) - 0.975, 0.2, 5.0) - 1
    return beats, loss, q_low, q_high


@pytest.mark.parametrize(("cv", "nv", "cc", "nc"), [(150, 1000, 120, 1000), (48, 2400, 52, 2500)])
def test_bayes_matches_numerical_integration(cv, nv, cc, nc):
    beats, loss, q_low, q_high = _exact_bayes(cv, nv, cc, nc)
    for seed in (1, 2, 3):
        mc = bayes_compare(cv, nv, cc, nc, rng=np.random.default_rng(seed))
        assert mc.probability_to_beat_control == pytest.approx(beats, abs=0.005)
        assert mc.expected_loss == pytest.approx(loss, rel=0.03, abs=2e-5)
        ci = mc.relative_lift_credible_interval
        assert ci.low == pytest.approx(q_low, abs=0.005)
        assert ci.high == pytest.approx(q_high, abs=0.005)


def test_report_is_reproducible_and_stable_across_seeds():
    first = analyze_experiment(FIXED, seed=7)
    assert analyze_experiment(FIXED, seed=7) == first
    other = analyze_experiment(FIXED, seed=8)
    assert other != first
    for a, b in zip(first.variants[1:], other.variants[1:], strict=True):
        assert a.versus_control and b.versus_control
        assert a.versus_control.probability_to_beat_control is not None
        assert b.versus_control.probability_to_beat_control is not None
        assert abs(a.versus_control.probability_to_beat_control - b.versus_control.probability_to_beat_control) < 0.005


# --- JSON and edge cases ----------------------------------------------------------------------


def _strict_json(text: str) -> object:
    def reject(token: str) -> object:
        raise AssertionError(f"non-JSON number {token} in report")

    return json.loads(text, parse_constant=reject)


@pytest.mark.parametrize(
    "arms",
    [
        FIXED,
        counts(("control", 500, 0), ("A", 500, 0)),
        counts(("control", 50, 50), ("A", 60, 60)),
        counts(("control", 1000, 0), ("A", 1000, 7)),
        counts(("control", 1000, 9), ("A", 0, 0), ("B", 1000, 12)),
        counts(("control", 0, 0), ("A", 1000, 12), ("B", 1000, 9)),
    ],
)
def test_reports_serialize_to_plain_json_and_back(arms):
    report = analyze_experiment(arms, planned_split={a.name: 1.0 for a in arms}, bayes_draws=FAST_DRAWS)
    text = report.model_dump_json()
    _strict_json(text)
    assert ExperimentStats.model_validate_json(text) == report


def test_edge_cases_say_undefined_instead_of_inventing_numbers():
    nobody = analyze_experiment(counts(("control", 500, 0), ("A", 500, 0)), bayes_draws=FAST_DRAWS)
    cmp = nobody.variants[1].versus_control
    assert cmp is not None
    assert (cmp.z_statistic, cmp.p_value, cmp.significant) == (0.0, 1.0, False)
    assert cmp.relative_lift is None
    assert cmp.relative_lift_interval is None

    from_zero = analyze_experiment(counts(("control", 1000, 0), ("A", 1000, 7)), bayes_draws=FAST_DRAWS)
    cmp = from_zero.variants[1].versus_control
    assert cmp is not None and cmp.relative_lift_interval is not None
    assert cmp.relative_lift is None
    assert cmp.relative_lift_interval.high is None  # unbounded: anything over nothing
    assert cmp.relative_lift_interval.low is not None and cmp.relative_lift_interval.low > 0

    everybody = analyze_experiment(counts(("control", 50, 50), ("A", 60, 60)), bayes_draws=FAST_DRAWS)
    cmp = everybody.variants[1].versus_control
    assert cmp is not None and cmp.relative_lift == 0.0
    assert (cmp.relative_lift_interval, cmp.lift_interval_method) == (None, None)

    empty_arm = analyze_experiment(counts(("control", 1000, 9), ("A", 0, 0), ("B", 1000, 12)), bayes_draws=FAST_DRAWS)
    a = empty_arm.variants[1]
    assert a.conversion_rate is None
    assert a.conversion_rate_interval is None
    assert a.versus_control is None
    assert empty_arm.chi_square is None  # only two arms have recipients


def test_lift_interval_falls_back_where_the_score_inversion_breaks():
    # statsmodels' score interval for 990/1000 vs 1000/1000 comes out as a sliver around
    # -0.5 %, not containing the observed -1 %; the log-adjusted interval is used instead.
    lift, method = relative_lift_interval(990, 1000, 1000, 1000)
    assert method == "log-adjusted"
    assert lift is not None and lift.low is not None and lift.high is not None
    assert lift.low < -0.01 < lift.high < 0
    # One arm with no conversions is still the score interval, and agrees with the z-test.
    lift, method = relative_lift_interval(5, 1000, 0, 1000)
    assert method == "score"
    assert lift is not None and lift.low is not None and lift.low > 0 and lift.high is None
    assert two_proportion_ztest(5, 1000, 0, 1000)[1] < 0.05


def test_revenue_and_cost_per_arm():
    report = analyze_experiment(
        [
            VariantCounts(name="control", recipients=1000, conversions=40, revenue=2000.0, cost=0.0),
            VariantCounts(name="A", recipients=1000, conversions=50, revenue=2600.0, cost=25.0),
        ],
        bayes_draws=FAST_DRAWS,
    )
    a = report.variants[1]
    assert a.revenue_per_recipient == pytest.approx(2.6)
    assert a.cost_per_conversion == pytest.approx(0.5)
    assert report.variants[0].cost_per_conversion == 0.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VariantCounts(name="A", recipients=10, conversions=11), "exceed recipients"),
        (lambda: VariantCounts(name="A", recipients=-1, conversions=0), "greater than or equal to 0"),
        (lambda: VariantCounts(name="A", recipients=1, conversions=0, revenue=math.nan), "finite"),
        (lambda: VariantCounts(name="", recipients=1, conversions=0), "at least 1 character"),
    ],
)
def test_bad_counts_are_rejected(build, message):
    with pytest.raises(ValidationError, match=message):
        build()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": counts(("A", 10, 1), ("B", 10, 1))}, "control arm 'control' is not among"),
        ({"variants": counts(("control", 10, 1), ("control", 10, 1))}, "unique"),
        ({"variants": counts(("control", 10, 1))}, "at least one variant"),
        ({"variants": FIXED, "alpha": 1.5}, "alpha"),
        ({"variants": FIXED, "bayes_draws": 10}, "bayes_draws"),
        ({"variants": FIXED, "planned_split": {"control": 1.0, "A": 1.0}}, "do not match planned arms"),
    ],
)
def test_bad_report_requests_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        analyze_experiment(**kwargs)


# --- A/A: the false-positive rate is the promised alpha --------------------------------------


def test_aa_false_positive_rate_is_alpha():
    rng = np.random.default_rng(20260101)
    n, rate = 2000, 0.10
    conv = rng.binomial(n, rate, size=(SIMULATIONS, 2))
    positives = covered = 0
    for i, (c_ctrl, c_var) in enumerate(conv):
        report = analyze_experiment(
            counts(("control", n, int(c_ctrl)), ("B", n, int(c_var))), bayes_draws=FAST_DRAWS, seed=i
        )
        cmp = report.variants[1].versus_control
        assert cmp is not None and cmp.relative_lift_interval is not None
        positives += cmp.significant
        # The lift interval and the test agree: the interval excludes 0 exactly when p < alpha.
        lift = cmp.relative_lift_interval
        assert ((lift.low is not None and lift.low > 0) or (lift.high is not None and lift.high < 0)) == cmp.significant
        ci = report.variants[0].conversion_rate_interval
        assert ci is not None and ci.low is not None and ci.high is not None
        covered += ci.low <= rate <= ci.high
    fpr = positives / SIMULATIONS
    print(f"A/A false-positive rate at alpha 0.05 over {SIMULATIONS} experiments: {fpr:.3f}")
    low, high = binomial_band(0.05, SIMULATIONS)
    assert low <= fpr <= high
    coverage = covered / SIMULATIONS
    print(f"Wilson 95 % interval coverage: {coverage:.3f}")
    low, high = binomial_band(0.95, SIMULATIONS)
    assert low <= coverage <= high


# --- power: a real lift is found about as often as the planner promised ----------------------


def test_planned_sample_size_detects_a_real_lift_with_the_planned_power():
    plan = plan_experiment(0.10, 0.20, alpha=0.05, power=0.8)
    rng = np.random.default_rng(20260102)
    c_ctrl = rng.binomial(plan.control_size, plan.baseline_rate, size=SIMULATIONS)
    c_var = rng.binomial(plan.variant_size, plan.target_rate, size=SIMULATIONS)
    detected = 0
    for i in range(SIMULATIONS):
        report = analyze_experiment(
            counts(("control", plan.control_size, int(c_ctrl[i])), ("B", plan.variant_size, int(c_var[i]))),
            bayes_draws=FAST_DRAWS,
            seed=i,
        )
        cmp = report.variants[1].versus_control
        assert cmp is not None
        detected += cmp.significant and cmp.difference > 0
    power = detected / SIMULATIONS
    # The planner works on Cohen's h (arcsine scale), the report tests with the pooled z-test;
    # statsmodels' own power of that z-test at the planned sizes tells how far apart the two
    # approximations are. The band: binomial noise of 1,000 runs (99.9 %) plus that gap.
    z_power = power_proportions_2indep(
        plan.absolute_effect, plan.baseline_rate, plan.variant_size, ratio=plan.control_size / plan.variant_size
    ).power
    gap = abs(z_power - plan.power)
    low, high = binomial_band(plan.power, SIMULATIONS)
    print(
        f"power: planned {plan.power:.2f} at {plan.control_size} per arm, "
        f"z-test power {z_power:.3f}, observed {power:.3f}"
    )
    assert gap < 0.02
    assert low - gap <= power <= high + gap


def test_holdout_plan_with_two_variants_keeps_its_power_after_holm(frozen_heap):
    # The building blocks the report uses for its decision (its ``significant`` flag is Holm's
    # rejection of these p-values, checked on fixed data above), to keep 1,000 runs fast.
    plan = plan_experiment(0.10, 0.20, variants=2, control_share=0.1)
    rng = np.random.default_rng(20260103)
    c_ctrl = rng.binomial(plan.control_size, plan.baseline_rate, size=SIMULATIONS)
    c_var = rng.binomial(plan.variant_size, plan.target_rate, size=(SIMULATIONS, 2))
    detected = np.zeros(2)
    for i in range(SIMULATIONS):
        p_values, differences = [], []
        for j in range(2):
            p_values.append(
                two_proportion_ztest(int(c_var[i, j]), plan.variant_size, int(c_ctrl[i]), plan.control_size)[1]
            )
            differences.append(c_var[i, j] / plan.variant_size - c_ctrl[i] / plan.control_size)
        _, rejected = holm_adjust(p_values)
        detected += np.array(rejected) & (np.array(differences) > 0)
    power = detected / SIMULATIONS
    print(f"holdout plan {plan.control_size}/{plan.variant_size}/{plan.variant_size}: power per variant {power}")
    # Planned at alpha / 2 (Holm's strictest step), so each variant is found at least as often
    # as promised, up to binomial noise; Holm's later steps may only add power.
    low, _ = binomial_band(plan.power, SIMULATIONS)
    assert (power >= low).all()


# --- Holm controls the family-wise error -----------------------------------------------------


def test_holm_controls_family_wise_error_in_aaaa(frozen_heap):
    # Decision path of the report (z-tests against control, Holm, chi-square), without the
    # per-arm intervals and posteriors, to keep 1,000 four-arm runs fast.
    rng = np.random.default_rng(20260104)
    n, rate = 2000, 0.10
    conv = rng.binomial(n, rate, size=(SIMULATIONS, 4))
    any_holm = any_raw = omnibus = 0
    for i in range(SIMULATIONS):
        p_values = [two_proportion_ztest(int(conv[i, j]), n, int(conv[i, 0]), n)[1] for j in (1, 2, 3)]
        _, rejected = holm_adjust(p_values)
        any_holm += any(rejected)
        any_raw += any(p < 0.05 for p in p_values)
        omnibus += chi_square_independence(conv[i].tolist(), [n] * 4).p_value < 0.05
    fwer, raw, chi_rate = any_holm / SIMULATIONS, any_raw / SIMULATIONS, omnibus / SIMULATIONS
    print(f"A/A/A/A: family-wise error with Holm {fwer:.3f}, without {raw:.3f}, chi-square {chi_rate:.3f}")
    _, high = binomial_band(0.05, SIMULATIONS)
    assert fwer <= high
    # Without correction three comparisons against one control make a false winner about
    # 12 % likely; 0.08 is far below that rate's 99.9 % band, so Holm is what keeps it at 5 %.
    assert raw >= 0.08
    low, high = binomial_band(0.05, SIMULATIONS)
    assert low <= chi_rate <= high


# --- sample-ratio mismatch --------------------------------------------------------------------


def test_srm_textbook_example():
    # 5100 vs 4900 planned 50/50: chi2 = 2 * 100^2 / 5000 = 4.0, p = P(chi2_1 > 4) = 0.0455.
    check = sample_ratio_check({"A": 5100, "B": 4900}, {"A": 0.5, "B": 0.5})
    assert check.statistic == pytest.approx(4.0)
    assert check.p_value == pytest.approx(0.0455, abs=5e-5)
    assert check.dof == 1
    assert not check.mismatch
    assert sample_ratio_check({"A": 5100, "B": 4900}, {"A": 1, "B": 1}, threshold=0.05).mismatch


@pytest.mark.parametrize(
    ("observed", "planned"),
    [
        ({"A": 5100, "B": 4900}, {"A": 1.0, "B": 1.0}),
        ({"control": 1005, "A": 4499, "B": 4496}, {"control": 0.1, "A": 0.45, "B": 0.45}),
        ({"control": 10_000, "A": 45_000, "B": 43_650}, {"control": 0.1, "A": 0.45, "B": 0.45}),
        ({"A": 120, "B": 260, "C": 95, "D": 525}, {"A": 1.0, "B": 2.0, "C": 1.0, "D": 5.0}),
    ],
)
def test_srm_equals_scipy_chisquare(observed, planned):
    check = sample_ratio_check(observed, planned)
    total = sum(observed.values())
    shares = np.array(list(planned.values())) / sum(planned.values())
    ref = sps.chisquare(list(observed.values()), shares * total)
    assert check.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert check.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert check.dof == len(observed) - 1


def test_srm_fires_on_a_skewed_split_and_not_on_a_fair_one():
    planned = {"control": 0.1, "A": 0.45, "B": 0.45}
    # 3 % of B's customers lost (a broken tracking pixel, a redirect that drops them).
    skewed = sample_ratio_check({"control": 10_000, "A": 45_000, "B": 43_650}, planned)
    assert skewed.mismatch
    assert "do not trust" in skewed.message
    fair = sample_ratio_check({"control": 10_000, "A": 45_000, "B": 45_000}, planned)
    assert not fair.mismatch
    assert fair.p_value == pytest.approx(1.0)
    report = analyze_experiment(
        counts(("control", 10_000, 400), ("A", 45_000, 2000), ("B", 43_650, 1900)),
        planned_split=planned,
        bayes_draws=FAST_DRAWS,
    )
    assert report.sample_ratio is not None and report.sample_ratio.mismatch


def test_srm_false_alarm_rate_on_fair_splits_is_the_threshold():
    planned = np.array([0.1, 0.45, 0.45])
    rng = np.random.default_rng(20260105)
    runs = 10_000
    draws = rng.multinomial(10_000, planned, size=runs)
    p_values = np.empty(runs)
    alarms = 0
    for i, (c, a, b) in enumerate(draws):
        check = sample_ratio_check(
            {"control": int(c), "A": int(a), "B": int(b)},
            dict(zip(("control", "A", "B"), planned.tolist(), strict=True)),
        )
        p_values[i] = check.p_value
        alarms += check.mismatch
    print(
        f"SRM false alarms on {runs} fair splits: {alarms / runs:.4f} at 0.001, {np.mean(p_values < 0.05):.4f} at 0.05"
    )
    low, high = binomial_band(0.001, runs)
    assert low <= alarms / runs <= high
    low, high = binomial_band(0.05, runs)
    assert low <= np.mean(p_values < 0.05) <= high


def test_srm_waits_for_enough_recipients():
    check = sample_ratio_check({"control": 0, "A": 9, "B": 2}, {"control": 0.1, "A": 0.45, "B": 0.45})
    assert not check.mismatch
    assert "too few" in check.message


@pytest.mark.parametrize(
    ("observed", "planned", "message"),
    [
        ({"A": 10}, {"A": 1.0}, "at least two arms"),
        ({"A": 10, "B": 10}, {"A": 1.0, "C": 1.0}, "do not match"),
        ({"A": 10, "B": 10}, {"A": 1.0, "B": 0.0}, "positive number"),
        ({"A": -1, "B": 10}, {"A": 1.0, "B": 1.0}, ">= 0"),
    ],
)
def test_srm_bad_input(observed, planned, message):
    with pytest.raises(ValueError, match=message):
        sample_ratio_check(observed, planned)


# --- planner ----------------------------------------------------------------------------------


def test_planner_textbook_example():
    # 4 % baseline, +10 % relative (4.4 %), alpha 0.05 two-sided, power 0.8, 50/50:
    #   h = 2 asin(sqrt(0.044)) - 2 asin(sqrt(0.04)) = 0.0199468
    #   n per arm = 2 * ((z_0.975 + z_0.8) / h)^2 = 2 * (2.801585 / 0.0199468)^2 = 39,454.2 -> 39,455
    plan = plan_experiment(0.04, 0.10, daily_traffic=5000)
    h = 2 * math.asin(math.sqrt(0.044)) - 2 * math.asin(math.sqrt(0.04))
    by_hand = 2 * ((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / h) ** 2
    assert plan.effect_size == pytest.approx(h, rel=1e-9)
    assert plan.control_size == plan.variant_size == math.ceil(by_hand) == 39_455
    assert plan.total_size == 78_910
    assert plan.days == 16  # 78,910 / 5,000 per day = 15.8
    assert plan.target_rate == pytest.approx(0.044)


def test_planner_with_holdout_and_several_variants():
    plan = plan_experiment(0.04, 0.10, variants=2, control_share=0.1, daily_traffic=5000)
    assert plan.alpha_per_comparison == pytest.approx(0.025)
    assert plan.variant_share == pytest.approx(0.45)
    assert plan.variant_size / plan.control_size == pytest.approx(4.5, rel=1e-4)
    # Every arm gets its size from the planned split of the total.
    assert plan.total_size * plan.control_share >= plan.control_size - 1e-6
    assert plan.total_size * plan.variant_share >= plan.variant_size - 1e-6
    achieved = NormalIndPower().power(
        proportion_effectsize(0.044, 0.04), plan.control_size, 0.025, ratio=plan.variant_size / plan.control_size
    )
    assert 0.8 <= achieved < 0.8001
    assert plan.days == math.ceil(plan.total_size / 5000)
    # A small hold-out is expensive: it needs far more customers than an even split.
    assert plan.total_size > 2 * plan_experiment(0.04, 0.10, variants=2).total_size


def test_planner_for_a_drop_and_without_traffic():
    drop = plan_experiment(0.04, -0.10)
    assert drop.target_rate == pytest.approx(0.036)
    assert drop.days is None
    assert drop.control_size > 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0.0, 0.1), {}, "baseline_rate"),
        ((1.2, 0.1), {}, "baseline_rate"),
        ((0.04, 0.0), {}, "non-zero"),
        ((0.6, 1.0), {}, "outside"),
        ((0.04, 0.1), {"power": 1.0}, "power"),
        ((0.04, 0.1), {"variants": 0}, "variants"),
        ((0.04, 0.1), {"control_share": 0.0}, "control_share"),
        ((0.04, 0.1), {"daily_traffic": 0}, "daily_traffic"),
    ],
)
def test_planner_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_experiment(*args, **kwargs)
