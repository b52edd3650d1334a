"""End to end on the real Temporal dev server: start_journey -> worker -> HTTP webhook -> signal.

The webhooks app is served by uvicorn on 127.0.0.1 and called over HTTP; the
journey is found again through a search-attribute query, as an operator would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.infra.temporal import quote
from models import search_attributes as sa
from models.events import CancelInput
from models.journey import JourneyState, Outcome
from models.tables import EngagementEvent
from starter import journey_state, start_journey
from tests.conftest import seed
from tests.helpers import deliveries, eventually, serve_app, spec
from webhooks.app import create_app
from worker import build_worker
from workflows.cascade import CascadeJourney

pytestmark = pytest.mark.integration


@pytest.fixture
def dev_env(dev_server: WorkflowEnvironment) -> WorkflowEnvironment:
    """The session's real dev server (one for every integration test)."""
    return dev_server


@pytest.fixture
async def stack(dev_env: WorkflowEnvironment, settings: Settings, db: Database) -> AsyncIterator[str]:
    """Worker + webhooks service on the dev server; yields the webhooks base URL."""
    async with (
        build_worker(dev_env.client, settings, db),
        serve_app(create_app(settings, client=dev_env.client, db=db)) as url,
    ):
        yield url


async def _events(db: Database) -> list[EngagementEvent]:
    async with db.session() as session:
        return list((await session.exec(select(EngagementEvent))).all())


async def _first_message_id(db: Database, workflow_id: str) -> str:
    async def sent() -> str | None:
        rows = await deliveries(db, workflow_id)
        return rows[0].provider_message_id if rows and rows[0].status == "sent" else None

    return await eventually(sent)


async def test_webhook_open_stops_the_journey_and_the_ui_query_finds_it(dev_env, stack, settings, db, unique_id):
    client: Client = dev_env.client
    await seed(db, unique_id, email="ann@example.com", telegram="42", sms="+14155552671")
    handle = await start_journey(
        unique_id, spec("email", "telegram", "sms", wait="1h"), client=client, db=db, settings=settings
    )
    message_id = await _first_message_id(db, handle.id)

    async with httpx.AsyncClient(base_url=stack) as http:
        reply = await http.post("/v1/engagement", json={"message_id": message_id, "event": "opened"})
        assert reply.status_code == 202, reply.text
        assert reply.json() == {"workflow_id": handle.id, "step": 0, "signalled": True, "detail": "signalled"}
        result = await handle.result()
        assert result.outcome == Outcome.REACTED and result.reacted_step == 0

        late = await http.post("/v1/engagement", json={"message_id": message_id, "event": "clicked"})
        assert late.status_code == 202 and late.json()["signalled"] is False
        assert "already completed" in late.json()["detail"]

    [row] = await deliveries(db, handle.id)
    assert row.status == "clicked" and row.opened_at is not None and row.clicked_at is not None
    assert [e.type for e in await _events(db)] == ["opened", "clicked"]

    async def listed() -> list[str | None] | None:
        found = [
            wf.typed_search_attributes.get(sa.JOURNEY_STATUS)
            async for wf in client.list_workflows(f"CustomerId = {quote(unique_id)}")
        ]
        return found if found == ["reacted"] else None

    assert await eventually(listed) == ["reacted"]
    state = await journey_state(client, handle.id)
    assert isinstance(state, JourneyState) and state.outcome == Outcome.REACTED


async def test_an_event_about_an_earlier_run_does_not_touch_the_new_one(dev_env, stack, settings, db, unique_id):
    """Journey ids are reused (the same journey may run again next month): an event about
    the old run's message reaches the old run, never the new one."""
    client: Client = dev_env.client
    await seed(db, unique_id, email="ann@example.com", telegram="42")
    journey = spec("email", "telegram", wait="1h")
    old = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
    old_message = await _first_message_id(db, old.id)
    await old.signal(CascadeJourney.cancel, CancelInput())
    await old.result()

    new = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
    assert new.id == old.id and new.result_run_id != old.result_run_id
    await eventually(lambda: _sent_in_run(db, new.id, new.result_run_id))
    async with httpx.AsyncClient(base_url=stack) as http:
        reply = await http.post("/v1/engagement", json={"message_id": old_message, "event": "opened"})
    assert reply.status_code == 202 and reply.json()["signalled"] is False
    state = await new.query(CascadeJourney.state)
    assert state.status == "waiting" and state.steps[0].reaction is None and state.outcome is None
    await new.signal(CascadeJourney.cancel, CancelInput())


async def _sent_in_run(db: Database, workflow_id: str, run_id: str | None) -> bool | None:
    rows = [d for d in await deliveries(db, workflow_id) if d.status == "sent" and d.run_id == run_id]
    return True if rows else None


async def test_bad_webhook_input_is_refused_and_changes_nothing(dev_env, stack, settings, db, unique_id):
    await seed(db, unique_id, email="ann@example.com")
    handle = await start_journey(unique_id, spec("email", wait="1h"), client=dev_env.client, db=db, settings=settings)
    message_id = await _first_message_id(db, handle.id)

    async with httpx.AsyncClient(base_url=stack) as http:
        cases = [
            ({"message_id": message_id}, 422, "event: Field required"),
            ({"message_id": message_id, "event": "liked"}, 422, "event: Input should be"),
            ({"event": "opened"}, 422, "exactly one of message_id or workflow_id"),
            ({"event": "opened", "message_id": message_id, "extra": 1}, 422, "extra: Extra inputs"),
            ({"event": "opened", "message_id": "sbx-nope"}, 404, "message_id 'sbx-nope': no such message"),
            ({"event": "converted", "workflow_id": "journey/x/none"}, 404, "no such journey"),
        ]
        for body, status, error in cases:
            reply = await http.post("/v1/engagement", json=body)
            assert reply.status_code == status, (body, reply.text)
            assert error in reply.json()["error"], (body, reply.json())
        not_json = await http.post("/v1/engagement", content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 422 and "JSON" in not_json.json()["error"]
        huge = await http.post("/v1/engagement", content=b"x" * (settings.webhooks_max_body_bytes + 1))
        assert huge.status_code == 413

    state = await handle.query(CascadeJourney.state)
    assert state.status == "waiting" and state.steps[0].reaction is None
    assert await _events(db) == []

    # A conversion reported by the shop by workflow id ends the journey.
    async with httpx.AsyncClient(base_url=stack) as http:
        ok = await http.post("/v1/engagement", json={"workflow_id": handle.id, "event": "converted"})
    assert ok.status_code == 202 and ok.json()["signalled"] is True
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"
