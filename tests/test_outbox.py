"""Events through the outbox, on the real dev server and both databases.

The webhooks app gets a client that watches every Temporal call: it notes one made while
the calling code holds a database transaction, and can make chosen signals fail.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    SignalWorkflowInput,
    StartWorkflowInput,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from cascade.events.outbox import PlannedSignal, enqueue, pending_signals
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import Outcome
from models.loyalty import LoyaltyState
from models.tables import OutboxSignal, utcnow
from starter import start_journey
from tests.codec import decrypt_history
from tests.conftest import seed
from tests.helpers import deliveries, eventually, serve_app, spec
from tests.test_lifecycle import LOOP
from webhooks.app import create_app
from webhooks.keys import create_key
from worker import build_worker
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop

pytestmark = pytest.mark.integration

IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("in_transaction", default=False)


class WatchedDatabase(Database):
    """The same database; notes in the calling task whether a transaction is open."""

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        token = IN_TRANSACTION.set(True)
        try:
            async with super().session() as session:
                yield session
        finally:
            IN_TRANSACTION.reset(token)


@dataclasses.dataclass
class Probe(Interceptor):
    """Notes Temporal calls made inside a transaction; fails the signals `fail` picks."""

    held: list[str] = dataclasses.field(default_factory=list)
    signals: list[str] = dataclasses.field(default_factory=list)
    fail: Callable[[int, SignalWorkflowInput], bool] = lambda n, s: False

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Watch(next, self)


class _Watch(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, probe: Probe) -> None:
        super().__init__(next)
        self.probe = probe

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        if IN_TRANSACTION.get():
            self.probe.held.append(f"signal {input.signal} to {input.id}")
        self.probe.signals.append(input.id)
        if self.probe.fail(len(self.probe.signals), input):
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        await super().signal_workflow(input)

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        if IN_TRANSACTION.get():
            self.probe.held.append(f"start {input.id}")
        return await super().start_workflow(input)


@dataclasses.dataclass
class Stack:
    http: httpx.AsyncClient
    probe: Probe
    key: str
    app: Any

    async def event(self, **body: Any) -> httpx.Response:
        reply = await self.http.post("/v1/events", json=body, headers={"X-API-Key": self.key})
        return reply


@pytest.fixture
async def stack(dev_server, settings: Settings, any_db: Database) -> AsyncIterator[Stack]:
    settings.outbox_poll_seconds = 0.2
    probe = Probe()
    watched = Client(**{**dev_server.client.config(), "interceptors": [probe]})
    app = create_app(settings, client=watched, db=WatchedDatabase(any_db.engine))
    key, _ = await create_key(any_db, "shop1")
    async with build_worker(dev_server.client, settings, any_db), serve_app(app) as url:
        settings.public_url = url
        async with httpx.AsyncClient(base_url=url) as http:
            yield Stack(http, probe, key, app)


async def signals_taken(handle: WorkflowHandle[Any, Any]) -> list[EngagementInput]:
    """The engagement signals in a journey's history (decrypted, issue 17)."""
    history = await decrypt_history(await handle.fetch_history())
    found = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = event.workflow_execution_signaled_event_attributes
            if attrs.signal_name == "engagement":
                [payload] = attrs.input.payloads
                found.append(EngagementInput.model_validate_json(payload.data))
    return found


async def started(dev_server: Any, settings: Settings, db: Database, cid: str, name: str, **extra: Any) -> Any:
    journey = spec("email", wait="1h", name=name, **extra)
    handle = await start_journey(cid, journey, client=dev_server.client, db=db, settings=settings)

    async def sent() -> bool | None:
        rows = await deliveries(db, handle.id)
        return True if rows and rows[0].status == "sent" else None

    await eventually(sent)
    return handle


async def test_a_purchase_converts_only_the_journeys_that_name_it(dev_server, stack, settings, any_db, unique_id):
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    welcome = await started(dev_server, settings, any_db, unique_id, "welcome-test", convert_on=["purchase"])
    orders = await started(dev_server, settings, any_db, unique_id, "orders-test", topic="transactional")
    referral = await started(dev_server, settings, any_db, unique_id, "referral-test", convert_on=["friend_joined"])

    reply = await stack.event(event_id="ord-1", customer_id=unique_id, type="purchase", properties={"amount": 5})
    assert reply.status_code == 202 and reply.json()["signalled"] == [welcome.id]
    assert (await welcome.result()).outcome == Outcome.REACTED
    await stack.app.state.relay.idle()
    for handle in (orders, referral):
        assert (await handle.query(CascadeJourney.state)).outcome is None
        assert await signals_taken(handle) == []
    reply = await stack.event(event_id="f-1", customer_id=unique_id, type="friend_joined")
    assert reply.json()["signalled"] == [referral.id]
    assert (await referral.result()).reaction == "converted"
    await orders.cancel()


async def test_no_transaction_is_open_during_a_temporal_call(dev_server, stack, settings, any_db, unique_id):
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    journeys = [
        await started(dev_server, settings, any_db, unique_id, name, convert_on=["purchase"]) for name in ("a", "b")
    ]
    cart = {"cart_id": "k1", "cart_value": 20}
    reply = await stack.event(event_id="cart-1", customer_id=unique_id, type="cart_abandoned", properties=cart)
    assert reply.json()["started"] == [f"journey/abandoned_cart/{unique_id}/k1"]
    reply = await stack.event(event_id="ord-1", customer_id=unique_id, type="purchase")
    assert len(reply.json()["signalled"]) == 3
    for handle in journeys:
        assert (await handle.result()).outcome == Outcome.REACTED
    # A message event: recorded, then its signal (to a journey that has ended meanwhile).
    [row] = await deliveries(any_db, journeys[0].id)
    opened = await stack.http.post("/v1/engagement", json={"event": "opened", "message_id": row.provider_message_id})
    assert opened.status_code == 202 and opened.json()["detail"].startswith("journey already")
    await stack.app.state.relay.idle()
    assert len(stack.probe.signals) >= 4
    assert stack.probe.held == []


async def test_a_failed_signal_is_retried_and_none_is_taken_twice(dev_server, stack, settings, any_db, unique_id):
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    # A loyalty loop counts every purchase and outlives it: a second delivery would show.
    loop = await start_journey(unique_id, LOOP, client=dev_server.client, db=any_db, settings=settings)
    await eventually(lambda: _sent(any_db, f"{loop.id}/round-1"))
    journeys = [
        await started(dev_server, settings, any_db, unique_id, name, convert_on=["purchase"]) for name in ("a", "b")
    ]
    # Temporal refuses the third signal of the three the purchase implies (once).
    stack.probe.fail = lambda n, s: n == 3
    reply = await stack.event(event_id="ord-7", customer_id=unique_id, type="purchase")
    if reply.status_code == 503:  # what a shop does with a 503: send the event again
        reply = await stack.event(event_id="ord-7", customer_id=unique_id, type="purchase")
    assert reply.status_code == 202
    for handle in journeys:
        result = await handle.result()
        assert result.outcome == Outcome.REACTED and result.reaction == "converted"
    first_round = dev_server.client.get_workflow_handle(loop.id, run_id=loop.result_run_id)
    for handle in [first_round, *journeys]:
        taken = await signals_taken(handle)
        assert len(taken) == 1, f"{handle.id} took the purchase {len(taken)} times"
        assert taken[0].event_id == "shop1:ord-7"
    assert len(stack.probe.signals) == 4  # three, and the one that failed again
    # The relay settles what it sent in one transaction at most every 50 ms: the row of the
    # signal sent last may still be unsettled when the journeys have already ended.
    assert await eventually(lambda: _none_pending(any_db))

    async def next_round() -> LoyaltyState | None:
        state = await loop.query(LoyaltyLoop.state)
        return state if state.round == 2 else None

    assert (await eventually(next_round)).points_accrued == 100
    await loop.signal(LoyaltyLoop.cancel, CancelInput(reason="test over"))
    await loop.result()


async def _sent(db: Database, workflow_id: str) -> bool | None:
    rows = await deliveries(db, workflow_id)
    return True if rows and rows[0].status == "sent" else None


async def test_a_message_event_waits_in_the_outbox_while_temporal_is_down(
    dev_server, stack, settings, any_db, unique_id
):
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    handle = await started(dev_server, settings, any_db, unique_id, "down")
    [row] = await deliveries(any_db, handle.id)
    down = True
    stack.probe.fail = lambda n, s: down
    reply = await stack.http.post("/v1/engagement", json={"event": "opened", "message_id": row.provider_message_id})
    assert reply.status_code == 202 and reply.json()["signalled"] is False
    assert "queued" in reply.json()["detail"]
    assert await pending_signals(any_db) == 1
    down = False  # Temporal is back: the relay's next look sends it
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "opened"
    assert await eventually(lambda: _none_pending(any_db))


async def _none_pending(db: Database) -> bool | None:
    return True if await pending_signals(db) == 0 else None


async def test_the_relay_sends_what_a_crashed_process_left(dev_server, settings, any_db, unique_id):
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    async with build_worker(dev_server.client, settings, any_db):
        handle = await started(dev_server, settings, any_db, unique_id, "left", convert_on=["purchase"])
        # A process stored an event's signal and died before sending it (its lease ran out).
        converted = EngagementInput(type=EngagementType.CONVERTED, occurred_at=utcnow(), event_id="shop1:ord-9")
        async with any_db.session() as session:
            [row] = enqueue(
                session, [PlannedSignal(handle.id, handle.result_run_id, "engagement", converted)], "x", timedelta(0)
            )
            row.not_before = utcnow() - timedelta(seconds=1)
        settings.outbox_poll_seconds = 0.2
        async with serve_app(create_app(settings, client=dev_server.client, db=any_db)):
            result = await handle.result()
    assert result.outcome == Outcome.REACTED
    async with any_db.session() as session:
        assert (await session.exec(select(OutboxSignal))).all() == []
