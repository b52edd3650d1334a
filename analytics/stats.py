"""Statistics of an experiment: results, sample-ratio check and sample-size planner.

Pure functions over counts; no I/O and no knowledge of journeys. Every distribution comes
from scipy or statsmodels. The report models are pydantic and serialize to plain JSON
(no NaN or infinity: an undefined number is ``null``).

Vocabulary used in the docstrings:

* *recipients*: customers assigned to an arm (the control group included, although it is
  sent nothing); *conversions*: those of them who converted within the window.
* *control*: the arm every variant is compared with; usually the hold-out that gets
  nothing, otherwise the current version.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# scipy and statsmodels are imported by the functions that use them: the worker imports
# this module for VariantCounts (experiment arms), and every worker process would
# otherwise hold them (about 30 MiB and a second of start-up) for the reports alone.

DEFAULT_ALPHA = 0.05
# Industry convention (Kohavi et al.): an SRM alarm must be rare on healthy experiments
# because it tells the reader to distrust every other number in the report.
DEFAULT_SRM_THRESHOLD = 0.001
# 200,000 posterior draws: the Monte Carlo standard error of a probability is at most
# 0.5 / sqrt(200,000) ~= 0.0011, so results are stable to 0.005 between seeds.
DEFAULT_BAYES_DRAWS = 200_000
DEFAULT_SEED = 0
# Below this expected count per arm the chi-square approximation is not trusted.
_MIN_EXPECTED = 5.0


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Interval(_Model):
    """A two-sided interval; ``None`` on a side means unbounded on that side."""

    low: float | None
    high: float | None


class VariantCounts(_Model):
    """Input: what happened in one arm of the experiment."""

    name: str = Field(min_length=1)
    recipients: int = Field(ge=0)
    conversions: int = Field(ge=0)
    revenue: float | None = None
    cost: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _conversions_within_recipients(self) -> Self:
        if self.conversions > self.recipients:
            raise ValueError(
                f"variant {self.name!r}: conversions ({self.conversions}) exceed recipients ({self.recipients})"
            )
        for label, value in (("revenue", self.revenue), ("cost", self.cost)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"variant {self.name!r}: {label} must be a finite number, got {value!r}")
        return self


class ChiSquareTest(_Model):
    """A chi-square test: statistic, degrees of freedom and p-value."""

    statistic: float
    dof: int
    p_value: float


class BayesComparison(_Model):
    """Posterior comparison of one variant with control (uniform Beta(1, 1) priors)."""

    probability_to_beat_control: float
    expected_loss: float
    relative_lift_credible_interval: Interval


class ControlComparison(_Model):
    """One variant against control, frequentist and Bayesian."""

    difference: float = Field(description="variant rate minus control rate, in rate units (0.01 = 1 point)")
    relative_lift: float | None = Field(description="variant rate / control rate - 1; null when control rate is 0")
    relative_lift_interval: Interval | None
    lift_interval_method: str | None
    z_statistic: float
    p_value: float
    p_value_holm: float
    significant: bool
    probability_to_beat_control: float | None
    expected_loss: float | None
    relative_lift_credible_interval: Interval | None


class VariantStats(_Model):
    """Report line for one arm."""

    name: str
    is_control: bool
    recipients: int
    conversions: int
    conversion_rate: float | None
    conversion_rate_interval: Interval | None
    revenue: float | None
    cost: float | None
    revenue_per_recipient: float | None
    cost_per_conversion: float | None
    versus_control: ControlComparison | None


class SampleRatioCheck(_Model):
    """Observed versus planned split of recipients over the arms."""

    observed: dict[str, int]
    expected: dict[str, float]
    statistic: float
    dof: int
    p_value: float
    threshold: float
    mismatch: bool
    message: str


class ExperimentStats(_Model):
    """The full statistical report of one experiment."""

    control: str
    alpha: float
    confidence: float
    variants: list[VariantStats]
    chi_square: ChiSquareTest | None
    sample_ratio: SampleRatioCheck | None
    multiple_comparison_correction: str
    bayes_draws: int
    seed: int


class ExperimentPlan(_Model):
    """Sample size and duration needed to detect a given effect."""

    baseline_rate: float
    target_rate: float
    minimum_detectable_effect: float = Field(description="relative change of the rate, 0.1 = +10 %")
    absolute_effect: float
    effect_size: float = Field(description="Cohen's h of baseline vs target")
    alpha: float
    alpha_per_comparison: float
    power: float
    variants: int
    control_share: float
    variant_share: float
    control_size: int
    variant_size: int
    total_size: int
    daily_traffic: float | None
    days: int | None


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


# --- single-arm and pairwise statistics --------------------------------------------------


def conversion_rate_interval(conversions: int, recipients: int, alpha: float = DEFAULT_ALPHA) -> Interval:
    """Range the arm's true conversion rate lies in with confidence 1 - alpha.

    For a marketer: "between 3.6 % and 4.4 % of customers convert with this version".
    Method: Wilson score interval (statsmodels ``proportion_confint(method="wilson")``),
    which stays inside [0, 1] and keeps its coverage at small counts and rates near 0.
    """
    _check_alpha(alpha)
    if recipients <= 0:
        raise ValueError("a conversion-rate interval needs at least one recipient")
    if not 0 <= conversions <= recipients:
        raise ValueError(f"conversions must be in [0, {recipients}], got {conversions}")
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(conversions, recipients, alpha=alpha, method="wilson")
    return Interval(low=float(low), high=float(high))


def two_proportion_ztest(
    variant_conversions: int, variant_recipients: int, control_conversions: int, control_recipients: int
) -> tuple[float, float]:
    """``(z, p)`` for "the variant's rate differs from control's"; z > 0 when the variant is higher.

    For a marketer: the p-value is how often a difference at least this large would show up
    by chance if the variant truly made no difference.
    Method: two-sided pooled two-proportion z-test (statsmodels ``proportions_ztest``).
    When nobody or everybody converted in both arms there is no variation at all; the test
    is then undefined and we report z = 0, p = 1, the limit Fisher's exact test also gives.
    """
    if variant_recipients <= 0 or control_recipients <= 0:
        raise ValueError("a z-test needs at least one recipient in each arm")
    pooled = variant_conversions + control_conversions
    if pooled == 0 or pooled == variant_recipients + control_recipients:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportions_ztest

    z, p = proportions_ztest(
        np.array([variant_conversions, control_conversions]),
        np.array([variant_recipients, control_recipients]),
        alternative="two-sided",
    )
    return float(z), float(p)


def _ratio_interval(method: str, cv: int, nv: int, cc: int, nc: int, alpha: float) -> tuple[float, float] | None:
    """statsmodels' risk-ratio interval, or None where it is complex, NaN or degenerate."""
    try:
        with warnings.catch_warnings():
            # Divisions by zero at the boundaries are expected; the result is checked below.
            warnings.simplefilter("ignore", RuntimeWarning)
            from statsmodels.stats.proportion import confint_proportions_2indep

            low, high = confint_proportions_2indep(
                cv, nv, cc, nc, method=method, compare="ratio", alpha=alpha, correction=False
            )
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return None
    if np.iscomplexobj(low) or np.iscomplexobj(high):
        return None
    low_f, high_f = float(low), float(high)
    if math.isnan(low_f) or math.isnan(high_f) or not 0.0 <= low_f < high_f:
        return None
    return low_f, high_f


def relative_lift_interval(
    variant_conversions: int,
    variant_recipients: int,
    control_conversions: int,
    control_recipients: int,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[Interval | None, str | None]:
    """Range the relative lift (variant rate / control rate - 1) lies in with confidence 1 - alpha.

    For a marketer: "the new subject line raises conversion by between +2 % and +18 %".
    Method: score (Koopman) interval for the risk ratio from statsmodels
    ``confint_proportions_2indep(compare="ratio", method="score")``, minus 1. It inverts the
    same pooled score statistic as the z-test, so the interval excludes 0 exactly when the
    unadjusted p-value is below alpha. statsmodels' score inversion misbehaves when every
    recipient of an arm converted (complex, degenerate or off-centre results), so there, or
    whenever its result fails a sanity check (real, low < high, containing the observed
    ratio), the log-adjusted (Katz, +0.5) interval is used instead; the method used is
    returned with the interval. ``None`` when neither gives a proper interval (e.g. nobody
    converted, or everybody did, in both arms). An upper end of ``None`` is unbounded
    (the control converted nobody).
    """
    _check_alpha(alpha)
    cv, nv, cc, nc = variant_conversions, variant_recipients, control_conversions, control_recipients
    if nv <= 0 or nc <= 0:
        raise ValueError("a lift interval needs at least one recipient in each arm")
    if cv == 0 and cc == 0:
        return None, None
    found: tuple[float, float] | None = None
    method: str | None = None
    if cv < nv and cc < nc:
        found = _ratio_interval("score", cv, nv, cc, nc, alpha)
        ratio = (cv / nv) / (cc / nc) if cc > 0 else math.inf
        if found is not None and found[0] <= ratio <= found[1]:
            method = "score"
        else:
            found = None
    if found is None:
        found = _ratio_interval("log-adjusted", cv, nv, cc, nc, alpha)
        method = "log-adjusted" if found is not None else None
    if found is None:
        return None, None
    low, high = found
    return Interval(low=low - 1.0, high=(high - 1.0) if math.isfinite(high) else None), method


def bayes_compare(
    variant_conversions: int,
    variant_recipients: int,
    control_conversions: int,
    control_recipients: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    draws: int = DEFAULT_BAYES_DRAWS,
    rng: np.random.Generator,
    control_draws: np.ndarray[Any, np.dtype[np.float64]] | None = None,
) -> BayesComparison:
    """Bayesian comparison of a variant with control.

    For a marketer: *probability to beat control* is how likely the variant's true rate is
    higher; *expected loss* is the conversion rate (in rate units) you should expect to
    give up if you roll out the variant and it is in fact worse; the credible interval is
    where the relative lift lies with probability 1 - alpha.
    Method: Beta(1 + conversions, 1 + non-conversions) posteriors (uniform prior), compared
    by Monte Carlo with ``draws`` samples from ``rng`` (``Generator.beta``). Pass
    ``control_draws`` to reuse the control's samples across variants.
    """
    _check_alpha(alpha)
    if draws < 1000:
        raise ValueError(f"draws must be at least 1000, got {draws}")
    if control_draws is None:
        control_draws = rng.beta(1 + control_conversions, 1 + control_recipients - control_conversions, size=draws)
    variant_draws = rng.beta(1 + variant_conversions, 1 + variant_recipients - variant_conversions, size=draws)
    lift = variant_draws / control_draws - 1.0
    low, high = np.quantile(lift, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BayesComparison(
        probability_to_beat_control=float(np.mean(variant_draws > control_draws)),
        expected_loss=float(np.mean(np.maximum(control_draws - variant_draws, 0.0))),
        relative_lift_credible_interval=Interval(low=float(low), high=float(high)),
    )


def chi_square_independence(conversions: Sequence[int], recipients: Sequence[int]) -> ChiSquareTest:
    """Test of "all arms convert at the same rate" over any number of arms.

    For a marketer: a small p-value says at least one version converts differently, not
    which one (the per-variant tests say that).
    Method: Pearson chi-square test of independence on the arms x (converted, not converted)
    table, without continuity correction (scipy ``chi2_contingency``). With two arms it
    equals the squared z-test. Arms without recipients are left out; with no variation at
    all (nobody or everybody converted) the statistic is 0 and p = 1.
    """
    if len(conversions) != len(recipients):
        raise ValueError("conversions and recipients must have the same length")
    pairs = [(c, n) for c, n in zip(conversions, recipients, strict=True) if n > 0]
    if len(pairs) < 2:
        raise ValueError("a chi-square test needs at least two arms with recipients")
    for c, n in pairs:
        if not 0 <= c <= n:
            raise ValueError(f"conversions must be in [0, recipients], got {c} of {n}")
    dof = len(pairs) - 1
    converted = sum(c for c, _ in pairs)
    if converted == 0 or converted == sum(n for _, n in pairs):
        return ChiSquareTest(statistic=0.0, dof=dof, p_value=1.0)
    table = np.array([[c for c, _ in pairs], [n - c for c, n in pairs]])
    from scipy import stats as sps

    result = sps.chi2_contingency(table, correction=False)
    return ChiSquareTest(statistic=float(result.statistic), dof=int(result.dof), p_value=float(result.pvalue))


def holm_adjust(p_values: Sequence[float], alpha: float = DEFAULT_ALPHA) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and which hypotheses are rejected at family-wise level alpha.

    For a marketer: with several variants, some would look like winners by luck alone; the
    adjusted p-values keep the chance of declaring *any* false winner below alpha.
    Method: Holm's step-down procedure (statsmodels ``multipletests(method="holm")``).
    """
    _check_alpha(alpha)
    if not p_values:
        return [], []
    if len(p_values) == 1:
        # Holm over one hypothesis is the identity; skipping statsmodels here also skips the
        # full garbage collection its Holm branch runs on every call (tens of ms in a big heap).
        p = float(p_values[0])
        return [p], [p <= alpha]
    from statsmodels.stats.multitest import multipletests

    reject, corrected, _, _ = multipletests(np.asarray(p_values, dtype=float), alpha=alpha, method="holm")
    return [float(p) for p in corrected], [bool(r) for r in reject]


# --- sample-ratio mismatch -----------------------------------------------------------------


def sample_ratio_check(
    observed: Mapping[str, int],
    planned: Mapping[str, float],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SampleRatioCheck:
    """Does the observed split of recipients match the planned split?

    For a marketer: a mismatch means customers were not assigned as planned (lost events, a
    bug, bots), so the experiment's other numbers cannot be trusted until it is explained.
    Method: Pearson chi-square goodness-of-fit of the observed counts against the planned
    shares, p-value from scipy's chi-square distribution (equal to scipy ``chisquare``),
    flagged when p < ``threshold`` (default 0.001, the industry convention, so a healthy
    experiment raises a false alarm once in a thousand). Not flagged while any arm expects
    fewer than 5 recipients, where the test is unreliable.
    ``planned`` holds relative weights per arm (normalized here).
    """
    _check_alpha(threshold, "threshold")
    if set(observed) != set(planned):
        raise ValueError(f"observed arms {sorted(observed)} do not match planned arms {sorted(planned)}")
    if len(observed) < 2:
        raise ValueError("a sample-ratio check needs at least two arms")
    for name, share in planned.items():
        if not (math.isfinite(share) and share > 0.0):
            raise ValueError(f"planned share of {name!r} must be a positive number, got {share!r}")
    for name, count in observed.items():
        if count < 0:
            raise ValueError(f"observed count of {name!r} must be >= 0, got {count}")
    names = list(planned)
    total_share = math.fsum(planned.values())
    total = sum(observed[name] for name in names)
    expected = {name: total * planned[name] / total_share for name in names}
    dof = len(names) - 1
    observed_out = {name: int(observed[name]) for name in names}
    if min(expected.values()) < _MIN_EXPECTED:
        return SampleRatioCheck(
            observed=observed_out,
            expected=expected,
            statistic=0.0,
            dof=dof,
            p_value=1.0,
            threshold=threshold,
            mismatch=False,
            message=f"too few recipients to judge the split (an arm expects fewer than {_MIN_EXPECTED:g})",
        )
    obs = np.array([observed[name] for name in names], dtype=float)
    exp = np.array([expected[name] for name in names], dtype=float)
    # Pearson's statistic, the one scipy's ``chisquare`` computes (the tests check they are
    # equal); its p-value from scipy's chi-square distribution. Calling ``chisquare`` itself
    # costs ~1 ms of argument handling per check, which adds up over many experiments.
    statistic = float(np.sum((obs - exp) ** 2 / exp))
    from scipy import stats as sps

    p_value = float(sps.chi2.sf(statistic, dof))
    mismatch = p_value < threshold
    if mismatch:
        message = (
            f"sample ratio mismatch: p = {p_value:.2g} < {threshold:g}; assignment or counting is broken, "
            "do not trust this experiment's results until the cause is found"
        )
    else:
        message = f"split matches the plan (p = {p_value:.3g} >= {threshold:g})"
    return SampleRatioCheck(
        observed=observed_out,
        expected=expected,
        statistic=statistic,
        dof=dof,
        p_value=p_value,
        threshold=threshold,
        mismatch=mismatch,
        message=message,
    )


# --- the report ---------------------------------------------------------------------------


def analyze_experiment(
    variants: Sequence[VariantCounts],
    *,
    control: str = "control",
    planned_split: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    bayes_draws: int = DEFAULT_BAYES_DRAWS,
    seed: int = DEFAULT_SEED,
) -> ExperimentStats:
    """The statistical report of an experiment from per-arm counts.

    Per arm: conversion rate with its Wilson interval, revenue per recipient and cost per
    conversion. Per variant against ``control``: difference, relative lift with its score
    interval, two-sided pooled z-test, Holm-adjusted p-value over all variants (the
    ``significant`` flag is Holm's decision at ``alpha``), probability to beat control,
    expected loss and a credible interval of the lift. Over all arms when there are more
    than two: chi-square test of independence. With ``planned_split``: the sample-ratio
    check. Intervals have confidence 1 - alpha. The Bayesian part is Monte Carlo with a
    ``numpy`` Generator seeded by ``seed``: the same counts and seed give the same report.
    Arms without recipients appear with empty statistics and are left out of the tests.
    """
    _check_alpha(alpha)
    if bayes_draws < 1000:
        raise ValueError(f"bayes_draws must be at least 1000, got {bayes_draws}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if control not in names:
        raise ValueError(f"control arm {control!r} is not among the variants {names}")
    if len(variants) < 2:
        raise ValueError("an experiment needs a control and at least one variant")

    ctrl = next(v for v in variants if v.name == control)
    others = [v for v in variants if v.name != control]
    rng = np.random.default_rng(seed)
    control_draws = (
        rng.beta(1 + ctrl.conversions, 1 + ctrl.recipients - ctrl.conversions, size=bayes_draws)
        if ctrl.recipients > 0
        else None
    )

    tests: dict[str, tuple[float, float]] = {}
    for v in others:
        if v.recipients > 0 and ctrl.recipients > 0:
            tests[v.name] = two_proportion_ztest(v.conversions, v.recipients, ctrl.conversions, ctrl.recipients)
    adjusted, rejected = holm_adjust([p for _, p in tests.values()], alpha)
    holm = {name: (adj, rej) for name, adj, rej in zip(tests, adjusted, rejected, strict=True)}

    lines: list[VariantStats] = []
    for v in variants:
        comparison: ControlComparison | None = None
        if v.name in tests and control_draws is not None:
            z, p = tests[v.name]
            control_rate = ctrl.conversions / ctrl.recipients
            rate = v.conversions / v.recipients
            lift_interval, lift_method = relative_lift_interval(
                v.conversions, v.recipients, ctrl.conversions, ctrl.recipients, alpha
            )
            bayes = bayes_compare(
                v.conversions,
                v.recipients,
                ctrl.conversions,
                ctrl.recipients,
                alpha=alpha,
                draws=bayes_draws,
                rng=rng,
                control_draws=control_draws,
            )
            comparison = ControlComparison(
                difference=rate - control_rate,
                relative_lift=(rate / control_rate - 1.0) if control_rate > 0 else None,
                relative_lift_interval=lift_interval,
                lift_interval_method=lift_method,
                z_statistic=z,
                p_value=p,
                p_value_holm=holm[v.name][0],
                significant=holm[v.name][1],
                probability_to_beat_control=bayes.probability_to_beat_control,
                expected_loss=bayes.expected_loss,
                relative_lift_credible_interval=bayes.relative_lift_credible_interval,
            )
        has_recipients = v.recipients > 0
        lines.append(
            VariantStats(
                name=v.name,
                is_control=v.name == control,
                recipients=v.recipients,
                conversions=v.conversions,
                conversion_rate=v.conversions / v.recipients if has_recipients else None,
                conversion_rate_interval=(
                    conversion_rate_interval(v.conversions, v.recipients, alpha) if has_recipients else None
                ),
                revenue=v.revenue,
                cost=v.cost,
                revenue_per_recipient=(v.revenue / v.recipients if v.revenue is not None and has_recipients else None),
                cost_per_conversion=(v.cost / v.conversions if v.cost is not None and v.conversions > 0 else None),
                versus_control=comparison,
            )
        )

    with_recipients = [v for v in variants if v.recipients > 0]
    chi_square = (
        chi_square_independence([v.conversions for v in with_recipients], [v.recipients for v in with_recipients])
        if len(with_recipients) > 2
        else None
    )
    srm = (
        sample_ratio_check({v.name: v.recipients for v in variants}, planned_split, srm_threshold)
        if planned_split is not None
        else None
    )
    return ExperimentStats(
        control=control,
        alpha=alpha,
        confidence=1.0 - alpha,
        variants=lines,
        chi_square=chi_square,
        sample_ratio=srm,
        multiple_comparison_correction="holm",
        bayes_draws=bayes_draws,
        seed=seed,
    )


# --- planner --------------------------------------------------------------------------------


def plan_experiment(
    baseline_rate: float,
    minimum_detectable_effect: float,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    variants: int = 1,
    control_share: float | None = None,
    daily_traffic: float | None = None,
    correct_for_multiple: bool = True,
) -> ExperimentPlan:
    """How many customers an experiment needs, and how many days at the given traffic.

    For a marketer: "to see a 10 % lift on a 4 % conversion rate you need N customers per
    version, which is D days of your traffic".
    ``minimum_detectable_effect`` is relative (0.1 = the rate rises from 4 % to 4.4 %;
    negative values plan for a drop). ``control_share`` is the control's share of traffic
    (the hold-out, or the current version in a plain A/B test); the remaining traffic is
    split equally over ``variants`` variants; by default all arms get equal shares.
    ``daily_traffic`` is customers entering the experiment per day, all arms together.
    Method: power of the two-sided two-sample z-test on Cohen's h (statsmodels
    ``proportion_effectsize`` and ``NormalIndPower.solve_power`` with the arms' size
    ratio). With several variants each comparison is planned at alpha / variants, the first
    and strictest step of the Holm correction the report applies, so the promised power
    holds for every variant even after correction (``correct_for_multiple=False`` plans at
    alpha per comparison).
    """
    _check_alpha(alpha)
    _check_alpha(power, "power")
    if not (math.isfinite(baseline_rate) and 0.0 < baseline_rate < 1.0):
        raise ValueError(f"baseline_rate must be in (0, 1), got {baseline_rate!r}")
    if not math.isfinite(minimum_detectable_effect) or minimum_detectable_effect == 0.0:
        raise ValueError(f"minimum_detectable_effect must be a non-zero number, got {minimum_detectable_effect!r}")
    target = baseline_rate * (1.0 + minimum_detectable_effect)
    if not 0.0 < target < 1.0:
        raise ValueError(
            f"a {minimum_detectable_effect:+.0%} change of a {baseline_rate:.2%} rate gives {target!r}, outside (0, 1)"
        )
    if variants < 1:
        raise ValueError(f"variants must be at least 1, got {variants}")
    if control_share is None:
        control_share = 1.0 / (variants + 1)
    if not (math.isfinite(control_share) and 0.0 < control_share < 1.0):
        raise ValueError(f"control_share must be in (0, 1), got {control_share!r}")
    if daily_traffic is not None and not (math.isfinite(daily_traffic) and daily_traffic > 0.0):
        raise ValueError(f"daily_traffic must be a positive number, got {daily_traffic!r}")

    variant_share = (1.0 - control_share) / variants
    comparison_alpha = alpha / variants if correct_for_multiple else alpha
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    effect = abs(float(proportion_effectsize(target, baseline_rate)))
    ratio = variant_share / control_share
    control_n = float(
        NormalIndPower().solve_power(
            effect_size=effect, nobs1=None, alpha=comparison_alpha, power=power, ratio=ratio, alternative="two-sided"
        )
    )
    control_size = math.ceil(control_n)
    variant_size = math.ceil(control_n * ratio)
    # The smallest audience whose planned split gives every arm at least its size; the
    # tolerance keeps a float like 1000.0000000001 from costing a whole extra customer.
    total_size = math.ceil(max(control_size / control_share, variant_size / variant_share) - 1e-9)
    days = math.ceil(total_size / daily_traffic - 1e-9) if daily_traffic is not None else None
    return ExperimentPlan(
        baseline_rate=baseline_rate,
        target_rate=target,
        minimum_detectable_effect=minimum_detectable_effect,
        absolute_effect=target - baseline_rate,
        effect_size=effect,
        alpha=alpha,
        alpha_per_comparison=comparison_alpha,
        power=power,
        variants=variants,
        control_share=control_share,
        variant_share=variant_share,
        control_size=control_size,
        variant_size=variant_size,
        total_size=total_size,
        daily_traffic=daily_traffic,
        days=days,
    )
