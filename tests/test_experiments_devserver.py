"""On the real dev server (visibility as the Temporal UI uses it): `Variant` filters journeys."""

from __future__ import annotations

from functools import partial

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from starter import start_journey
from tests.conftest import seed
from tests.helpers import eventually, wait_for_state
from tests.test_experiments_workflow import ids_by_arm, with_experiment_name
from worker import build_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def client(dev_server: WorkflowEnvironment) -> Client:
    return dev_server.client


async def test_variant_filters_journeys_and_the_state_says_it(client, settings: Settings, db: Database, unique_id):
    journey = with_experiment_name(load_journey("sale_subject_test"), f"ui-{unique_id}")
    assert journey.experiment is not None
    arms = ids_by_arm(journey.experiment, unique_id)
    async with build_worker(client, settings, db):
        handles = {}
        for arm, cid in arms.items():
            await seed(db, cid, email=f"{cid}@example.com")
            handles[arm] = await start_journey(cid, journey, client=client, db=db, settings=settings)
        for arm, handle in handles.items():
            state = await wait_for_state(handle, lambda s: s.status in ("waiting", "held_out"))
            assert state.variant == arm

        async def found(query: str) -> list[str] | None:
            ids = [wf.id async for wf in client.list_workflows(query)]
            return ids or None

        for arm, cid in arms.items():
            ids = await eventually(partial(found, f'Variant="{arm}" AND CustomerId="{cid}"'))
            assert ids == [handles[arm].id]
        everyone = " OR ".join(f'CustomerId="{c}"' for c in arms.values())
        held = await eventually(partial(found, f'Variant="control" AND ({everyone})'))
        assert held == [handles["control"].id]
        for handle in handles.values():
            await handle.terminate("test done")
