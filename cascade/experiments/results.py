"""The experiment report: funnel per arm from the database, statistics from analytics.stats.

Python API::

    report = await experiment_report(db, "welcome-subject")
    report.model_dump_json()          # what `cascade experiments show NAME --json` prints
"""

from __future__ import annotations

from analytics.stats import ExperimentPlan, VariantCounts, analyze_experiment, plan_experiment
from cascade.experiments.queries import definition, funnel
from cascade.experiments.report import ExperimentReport
from cascade.infra.db import Database
from models.journey import CONTROL_ARM


class UnknownExperimentError(LookupError):
    """No customer has entered an experiment of that name (or it does not exist)."""


async def experiment_report(db: Database, name: str, *, seed: int = 0) -> ExperimentReport:
    """Per arm: recipients, sent, delivered, opened, clicked, converted, revenue, cost; and the
    statistics against control (z-test, Holm, chi-square for more arms, Bayes, SRM).

    The control arm is the hold-out when the experiment has one, else its first variant.
    A bandit's split moves on purpose, so its sample-ratio check is left out.
    """
    stored = await definition(db, name)
    if stored is None:
        raise UnknownExperimentError(f"experiment {name!r}: no customer has entered it (or no such experiment)")
    planned: dict[str, float] = stored["planned_split"]
    lines = await funnel(db, name, list(planned))
    control = CONTROL_ARM if CONTROL_ARM in planned else next(iter(planned))
    populated = [line for line in lines if line.recipients > 0]
    note = None
    stats = None
    if len(populated) >= 2 and any(line.variant == control for line in populated):
        counts = [
            VariantCounts(
                name=line.variant,
                recipients=line.recipients,
                conversions=line.converted,
                revenue=line.revenue,
                cost=line.cost,
            )
            for line in lines
        ]
        stats = analyze_experiment(
            counts,
            control=control,
            planned_split=planned if stored["mode"] != "bandit" else None,
            seed=seed,
        )
    else:
        note = f"statistics need customers in {control!r} and in at least one other arm"
    return ExperimentReport(
        experiment=name,
        journey=stored["journey"],
        mode=stored["mode"],
        created_at=stored["created_at"],
        planned_split=planned,
        window_days=stored["window_seconds"] / 86400,
        funnel=lines,
        stats=stats,
        note=note,
    )


def experiment_plan(
    baseline: float,
    mde: float,
    *,
    variants: int = 1,
    control_share: float | None = None,
    daily_traffic: float | None = None,
    power: float = 0.8,
    alpha: float = 0.05,
) -> ExperimentPlan:
    """Sample size and days needed (analytics.stats.plan_experiment, planned for the report's Holm correction)."""
    return plan_experiment(
        baseline,
        mde,
        variants=variants,
        control_share=control_share,
        daily_traffic=daily_traffic,
        power=power,
        alpha=alpha,
    )
