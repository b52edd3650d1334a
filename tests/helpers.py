"""Helpers for workflow tests: run a worker, wait for a journey to reach a state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

import uvicorn
from sqlmodel import col, select
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database
from models.events import AppEvent
from models.journey import JourneySpec, JourneyState
from models.tables import ContactPoint, Delivery, SandboxMessage, TrackedMessage
from workflows.cascade import CascadeJourney

T = TypeVar("T")


def spec(*channels: str, wait: str = "1d", await_: str = "opened", **extra: Any) -> JourneySpec:
    """A journey over `channels`, each step waiting `wait` for `await_`."""
    return JourneySpec.model_validate(
        {
            "name": extra.pop("name", "test"),
            "steps": [
                {
                    "channel": ch,
                    "wait": wait,
                    "await": await_,
                    "content": {"subject": "Hi {{ name }}", "body": f"{ch}: hello, {{{{ name }}}}!"},
                }
                for ch in channels
            ],
            **extra,
        }
    )


async def wait_for_state(
    handle: WorkflowHandle[Any, Any],
    predicate: Callable[[JourneyState], bool],
    within: float = 15.0,
) -> JourneyState:
    """Poll the `state` query until `predicate` holds (real seconds, not workflow time).

    A workflow not started yet (a loop's round a moment before its parent starts it)
    is waited for like any other state.
    """
    deadline = asyncio.get_running_loop().time() + within
    state = None
    while True:
        try:
            state = await handle.query(CascadeJourney.state)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
        if state is not None and predicate(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"journey never reached the expected state; last: {state}")
        await asyncio.sleep(0.05)


async def outbox(db: Database, address_contains: str = "") -> list[SandboxMessage]:
    """Messages the sandbox provider accepted, oldest first."""
    async with db.session() as session:
        rows = (await session.exec(select(SandboxMessage).order_by(col(SandboxMessage.id)))).all()
    return [r for r in rows if address_contains in r.to_address]


async def deliveries(db: Database, workflow_id: str) -> list[Delivery]:
    """The delivery log rows of one journey, by step."""
    async with db.session() as session:
        rows = (
            await session.exec(select(Delivery).where(Delivery.workflow_id == workflow_id).order_by(col(Delivery.step)))
        ).all()
    return list(rows)


async def contact(db: Database, customer_id: str, channel: str) -> ContactPoint:
    """The (single) contact point of a customer on a channel."""
    async with db.session() as session:
        return (
            await session.exec(
                select(ContactPoint).where(ContactPoint.customer_id == customer_id, ContactPoint.channel == channel)
            )
        ).one()


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 15.0) -> T:
    """Call `check` until it returns something other than None (real seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while (value := await check()) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
    return value


async def original_links(db: Database, idempotency_key: str) -> list[str]:
    """The links a sent message carried before tracking rewrote them (UTM-tagged)."""
    async with db.session() as session:
        tracked = (
            await session.exec(select(TrackedMessage).where(TrackedMessage.idempotency_key == idempotency_key))
        ).one()
    return list(tracked.links)


_TRANSIENT_RPC = ("Timeout", "h2 protocol error")


async def skip_time(env: WorkflowEnvironment, seconds: float, within: float = 300.0) -> None:
    """Move the time-skipping server's clock on by at least `seconds`.

    One long `env.sleep` is one RPC: on a loaded machine, while the worker is slow to finish
    the activities that hold the clock, it can end in "Timeout expired" with the time only
    partly skipped (or in "h2 protocol error"). Short sleeps, each retried, until the server's own clock says so.
    """
    target = await env.get_current_time() + timedelta(seconds=seconds)
    deadline = asyncio.get_running_loop().time() + within
    while (now := await env.get_current_time()) < target:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the test server's clock stayed at {now}, short of {target}")
        try:
            await env.sleep(min(600.0, (target - now).total_seconds()))
        except RPCError as err:
            # Both are the transport giving up on one long-held call, not the server refusing
            # it: "Timeout expired" is the client's own deadline, "h2 protocol error" a
            # connection reset under load (seen in CI). The clock tells what was skipped.
            if not any(transient in str(err) for transient in _TRANSIENT_RPC):
                raise


def app_event(event_id: str, customer_id: str, type: str, **properties: object) -> AppEvent:
    """An application event as a shop's code sends it to `POST /v1/events`."""
    return AppEvent.model_validate(
        {"event_id": event_id, "customer_id": customer_id, "type": type, "properties": properties}
    )
