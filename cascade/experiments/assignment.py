"""Record each customer's arm: fixed-split by hash, or the bandit's decision from results so far."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from analytics.assignment import assign_bandit_arm, assign_variant, stable_seed
from analytics.experiment_bandit import thompson_allocation
from analytics.stats import VariantCounts
from cascade.experiments.queries import arm_conversions, fetch
from cascade.infra.db import Database, insert_ignoring_conflicts
from models.experiments import AssignVariantInput, AssignVariantResult
from models.journey import CONTROL_ARM
from models.tables import ExperimentAssignment, ExperimentDefinition, utcnow

_A = ExperimentAssignment.__table__  # type: ignore[attr-defined]


async def record_definition(db: Database, input: AssignVariantInput) -> None:
    """Store the experiment's planned split once; the first entrant's journey version wins."""
    exp = input.experiment
    async with db.session() as session:
        await session.exec(
            insert_ignoring_conflicts(db, ExperimentDefinition)
            .values(
                name=exp.name,
                journey=input.journey,
                journey_version=input.journey_version,
                mode=exp.mode,
                control_share=exp.control,
                planned_split=exp.planned_split(),
                convert_on=input.convert_on,
                window_seconds=exp.window.total_seconds(),
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
        )


async def existing_arm(db: Database, experiment: str, customer_id: str) -> tuple[str, dict[str, float] | None] | None:
    """The arm recorded for this customer, if any (with the bandit split it was chosen under)."""
    rows = await fetch(
        db,
        select(_A.c.variant, _A.c.allocation).where(_A.c.experiment == experiment, _A.c.customer_id == customer_id),
    )
    row = rows[0] if rows else None
    return (row.variant, row.allocation) if row is not None else None


async def bandit_counts(
    db: Database, experiment: str, variants: list[str], convert_on: list[str], window: timedelta
) -> list[VariantCounts]:
    """Customers and conversions per bandit arm so far (the control group is not part of it)."""
    arms = await arm_conversions(db, experiment, convert_on, window)
    return [
        VariantCounts(name=v, recipients=arms.get(v, (0, 0))[0], conversions=arms.get(v, (0, 0))[1]) for v in variants
    ]


async def assign(db: Database, input: AssignVariantInput, now: datetime | None = None) -> AssignVariantResult:
    """The customer's arm: the recorded one if any, else decided now and recorded.

    A fixed split hashes the experiment name and the customer id (analytics.assignment);
    a bandit asks Thompson sampling over the arms' results so far, seeded by the same ids,
    so a retried activity makes the same decision. The control share is applied first in
    both modes: the hold-out stays the same customers however the bandit moves traffic.
    """
    exp = input.experiment
    await record_definition(db, input)
    if (found := await existing_arm(db, exp.name, input.customer_id)) is not None:
        return AssignVariantResult(variant=found[0], new=False, allocation=found[1])
    allocation: dict[str, float] | None = None
    if exp.mode == "bandit":
        control = assign_variant(exp.name, input.customer_id, {"rest": 1.0}, exp.control)
        if control == CONTROL_ARM:
            variant = CONTROL_ARM
        else:
            counts = await bandit_counts(db, exp.name, list(exp.weights), input.convert_on, exp.window)
            decision = thompson_allocation(
                counts, seed=stable_seed(exp.name, "bandit", input.customer_id), floor=exp.floor
            )
            allocation = decision.weights
            variant = assign_bandit_arm(exp.name, input.customer_id, allocation, exp.control)
    else:
        variant = assign_variant(exp.name, input.customer_id, exp.weights, exp.control)
    async with db.session() as session:
        await session.exec(
            insert_ignoring_conflicts(db, ExperimentAssignment)
            .values(
                experiment=exp.name,
                customer_id=input.customer_id,
                variant=variant,
                journey=input.journey,
                workflow_id=input.workflow_id,
                run_id=input.run_id,
                assigned_at=now or utcnow(),
                allocation=allocation,
            )
            .on_conflict_do_nothing()
        )
    # Two entries racing (a retry beside a re-entry): the row that got in is the arm.
    recorded = await existing_arm(db, exp.name, input.customer_id)
    assert recorded is not None
    return AssignVariantResult(variant=recorded[0], new=recorded[0] == variant, allocation=recorded[1])
