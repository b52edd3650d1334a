"""`cascade schedules apply|list|delete`: the Temporal Schedules of the time-based journeys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio.client import Client

from cascade.cli.common import command, console, group
from cascade.infra.settings import get_settings
from cascade.infra.temporal import connect
from cascade.journeys.schedules import apply_schedules, delete_schedules, list_schedules

app = group("Manage the Temporal Schedules of the time-based journeys (birthday, win-back): no cron outside Temporal.")


def _run(action: Callable[[Client], Awaitable[list[str]]]) -> None:
    async def go() -> list[str]:
        return await action(await connect(get_settings()))

    for line in asyncio.run(go()):
        console.print(line)


@command(app)
def apply() -> None:
    """Create or update a schedule for every time-based journey in journeys/."""
    _run(lambda client: apply_schedules(client, get_settings()))


@command(app, "list")
def list_() -> None:
    """List the journeys' schedules and their next run."""
    _run(list_schedules)


@command(app)
def delete() -> None:
    """Delete the journeys' schedules."""
    _run(delete_schedules)
