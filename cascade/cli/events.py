"""`cascade events send`: route a customer event as the webhooks service would."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from cascade.cli.common import command, console, fail, group, parse_pairs
from cascade.events.outbox import EngineUnavailable
from cascade.infra.db import Database
from cascade.infra.settings import get_settings
from cascade.infra.temporal import connect
from cascade.journeys.files import JourneyDefinitionError
from cascade.journeys.service import UnknownCustomerError
from cascade.journeys.triggers import route_event
from models.ids import check_customer_id

app = group("Send customer events: start matching journeys, convert or end running ones.")


@command(app)
def send(
    customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")],
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. cart_abandoned")],
    prop: Annotated[list[str] | None, typer.Option("--prop", help="Event property, name=value (repeatable)")] = None,
) -> None:
    """Route an event: start matching journeys, convert or end running ones."""
    properties = parse_pairs(prop or [], "--prop")

    async def go() -> None:
        check_customer_id(customer_id)
        settings = get_settings()
        db = Database.from_settings(settings)
        try:
            result = await route_event(
                await connect(settings), db, customer_id, event_type, properties, settings=settings
            )
        finally:
            await db.dispose()
        for wid in result.started:
            console.print(f"started {wid}")
        for wid in result.converted:
            console.print(f"converted {wid}")
        for wid in result.exited:
            console.print(f"ended {wid}")
        for name, why in result.not_entered.items():
            console.print(f"not entered {name}: {why}")
        if not (result.started or result.converted or result.exited or result.not_entered):
            console.print("no journey matches this event")

    try:
        asyncio.run(go())
    except (JourneyDefinitionError, UnknownCustomerError, ValueError, EngineUnavailable) as exc:
        fail(str(exc))
