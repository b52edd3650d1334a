"""A workflow that reports whether its code runs inside Temporal's sandbox (its own module:
the sandbox imports a workflow's module afresh, which wants one free of side effects)."""

from __future__ import annotations

from temporalio import workflow


@workflow.defn
class WhereItRuns:
    """Reports whether its code runs inside the sandbox."""

    @workflow.run
    async def run(self) -> bool:
        """True inside the sandbox."""
        return workflow.unsafe.in_sandbox()
