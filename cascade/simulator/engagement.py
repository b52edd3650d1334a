"""Report simulated reactions through the real engagement webhook, once the message exists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import WorkflowHandle

from cascade.infra.db import Database
from cascade.simulator.population import Reaction
from models.tables import Delivery


async def _message_id(db: Database, handle: WorkflowHandle[Any, Any], step: int, within: float) -> str | None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with db.session() as session:
            row = (
                await session.exec(
                    select(Delivery).where(
                        Delivery.workflow_id == handle.id,
                        Delivery.run_id == handle.result_run_id,
                        Delivery.step == step,
                    )
                )
            ).first()
        if row is not None and row.provider_message_id:
            return row.provider_message_id
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(0.2)


async def react(
    reaction: Reaction,
    handle: WorkflowHandle[Any, Any],
    db: Database,
    webhooks_url: str,
    http: httpx.AsyncClient,
    within: float = 120,
) -> httpx.Response | None:
    """Wait for the step's message (at most `within` seconds), then POST the reaction to
    /v1/engagement by message id (or by workflow id for a conversion). None: never sent."""
    message_id = await _message_id(db, handle, reaction.step, within)
    if message_id is None:
        return None
    await asyncio.sleep(reaction.after_seconds)
    body = (
        {"workflow_id": handle.id, "event": reaction.event}
        if reaction.by_workflow_id
        else {"message_id": message_id, "event": reaction.event}
    )
    return await http.post(f"{webhooks_url}/v1/engagement", json=body)


async def react_all(
    reactions: Sequence[Reaction],
    handles: Mapping[str, WorkflowHandle[Any, Any]],
    db: Database,
    webhooks_url: str,
    on_done: Callable[[Reaction, httpx.Response | None], None] = lambda r, reply: None,
    within: float = 120,
) -> None:
    """Play every reaction against the journeys in `handles` (by customer id), concurrently."""

    async def one(reaction: Reaction, http: httpx.AsyncClient) -> None:
        on_done(reaction, await react(reaction, handles[reaction.customer_id], db, webhooks_url, http, within))

    # The webhooks answer once the signal is in Temporal: on a loaded machine (the test suite
    # beside `make run`) one such answer took over 10 s, and the demo died of a ReadTimeout.
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(one(r, http) for r in reactions))
