"""The experiment activity: which arm a customer entering a journey is in (recorded)."""

from __future__ import annotations

from temporalio import activity

from cascade.experiments.assignment import assign
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from models.experiments import AssignVariantInput, AssignVariantResult


class ExperimentActivities:
    """Experiment assignment, bound to a database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn
    async def assign_variant(self, input: AssignVariantInput) -> AssignVariantResult:
        """The customer's arm: recorded on first entry, the same one on every retry and re-entry.

        The decision (a hash, or the bandit's draw over results so far) is made here, not
        in the workflow: the workflow replays the recorded result.
        """
        result = await assign(self._db, input)
        get_logger(__name__, workflow_id=input.workflow_id, customer_id=input.customer_id).info(
            "experiment.assigned", experiment=input.experiment.name, variant=result.variant, new=result.new
        )
        return result
