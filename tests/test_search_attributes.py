"""Search attributes on the real dev server's visibility: the README's queries, the rename.

`Status` collided with Temporal's own execution status (`Status="waiting"` is refused as
"invalid search attribute: status"); the journey status is `JourneyStatus` now, and a
journey started with the old attribute keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from cascade.infra.db import Database
from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.infra.temporal import quote
from models import search_attributes as sa
from models.events import CancelInput
from models.journey import JourneyInput
from starter import start_journey
from tests.codec import CODEC_CONVERTER
from tests.conftest import seed
from tests.helpers import eventually, spec, wait_for_state
from tests.test_replay import HISTORIES, _history
from worker import build_worker
from workflows.cascade import CascadeJourney
from workflows.registry import WORKFLOWS

pytestmark = pytest.mark.integration

LEGACY_STATUS = sa.RETIRED[0]

# `Name op value` where Name is CamelCase (as search attributes and Temporal's own fields
# are) and the value a literal: tells `CustomerId="c-42"` from `CASCADE_X=1` or prose.
_QUERY = re.compile(r"""^[A-Z][a-z][A-Za-z0-9]*\s*(?:(?:=|!=|<=|>=|<|>)\s*["'\d(]|\s(?:IN|STARTS_WITH|BETWEEN|IS)\s)""")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CLI_QUERY = re.compile(r"""--query\s+(?:'([^']*)'|"((?:[^"\\]|\\.)*)")""")
_URL = re.compile(r"https?://\S+")


def readme_queries(text: str) -> list[str]:
    """Every visibility query README.md shows: inline code, `--query '...'` in code blocks,
    and `?query=` in UI links."""
    found: list[str] = []
    for block in _FENCE.findall(text):
        found += [single or double for single, double in _CLI_QUERY.findall(block)]
    prose = _FENCE.sub("", text)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if _QUERY.match(span)]
    for url in _URL.findall(text):
        found += parse_qs(urlsplit(url.rstrip(").,")).query).get("query", [])
    return list(dict.fromkeys(found))


def test_the_extraction_finds_queries_and_skips_settings():
    text = (
        'Filter by `CustomerId="c-42"` or `Journey="w" AND JourneyStatus="waiting"`; set\n'
        "`CASCADE_CHANNEL_EMAIL=smtp` and `DATABASE_URL=postgresql://x`.\n"
        "```bash\ntemporal workflow list --query 'Step >= 2'\nCASCADE_X=1 make run\n```\n"
        "UI: http://localhost:8233/namespaces/default/workflows?query=Journey%3D%22demo%22\n"
    )
    assert readme_queries(text) == [
        "Step >= 2",
        'CustomerId="c-42"',
        'Journey="w" AND JourneyStatus="waiting"',
        'Journey="demo"',
    ]


@pytest.fixture
def client(dev_server: WorkflowEnvironment) -> Client:
    """The dev server (both the current and the retired attributes registered, as `make run`)."""
    return dev_server.client


async def test_every_query_the_readme_shows_runs_on_the_dev_server(client):
    queries = readme_queries((PROJECT_ROOT / "README.md").read_text())
    # The README documents the status filter and the UI link; an extraction that finds
    # nothing must not pass.
    assert any(sa.JOURNEY_STATUS.name in q for q in queries), queries
    assert len(queries) >= 3, queries
    failures = {}
    for query in queries:
        try:
            [_ async for _ in client.list_workflows(query, limit=1)]
        except RPCError as exc:
            failures[query] = str(exc)
    assert failures == {}


async def test_the_old_status_attribute_is_refused_in_queries(client):
    """Why the rename: the README's old example fails on a server that has `Status` registered."""
    with pytest.raises(RPCError, match="invalid search attribute"):
        [_ async for _ in client.list_workflows('Journey="welcome" AND Status="waiting"', limit=1)]


def test_make_run_and_tests_register_both_names():
    flags = sa.dev_server_flags()
    assert "JourneyStatus=Keyword" in flags and "Status=Keyword" in flags
    assert {k.name for k in sa.ALL}.isdisjoint({"Status", "StartTime", "CloseTime", "ExecutionStatus", "WorkflowId"})


async def test_a_journey_started_with_the_old_attribute_keeps_upserting(
    client, settings: Settings, db: Database, unique_id
):
    """A journey the previous release started (initial `Status`, no `JourneyStatus`) runs on
    today's worker: its status shows under `JourneyStatus` and queries find it."""
    await seed(db, unique_id, email="ann@example.com", sms="+14155552671")
    journey = spec("email", "sms", wait="1h")
    old_attributes = TypedSearchAttributes(
        [
            SearchAttributePair(sa.CUSTOMER_ID, unique_id),
            SearchAttributePair(sa.JOURNEY, journey.name),
            SearchAttributePair(LEGACY_STATUS, "running"),
            SearchAttributePair(sa.STEP, 0),
            SearchAttributePair(sa.CHANNEL, "email"),
        ]
    )
    async with build_worker(client, settings, db):
        handle = await client.start_workflow(
            CascadeJourney.run,
            JourneyInput(spec=journey, customer_id=unique_id),
            id=f"journey/test/{unique_id}",
            task_queue=settings.task_queue,
            search_attributes=old_attributes,
        )
        await wait_for_state(handle, lambda s: s.status == "waiting")
        query = f"{sa.JOURNEY_STATUS.name} = {quote('waiting')} AND {sa.CUSTOMER_ID.name} = {quote(unique_id)}"

        async def listed() -> list[str] | None:
            ids = [wf.id async for wf in client.list_workflows(query)]
            return ids or None

        assert await eventually(listed) == [handle.id]
        await handle.signal(CascadeJourney.cancel, CancelInput(reason="test"))
        await handle.result()
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(sa.JOURNEY_STATUS) == "cancelled"
    # Nothing writes the retired attribute any more; it keeps its start value.
    assert attrs.get(LEGACY_STATUS) == "running"


async def test_starter_list_by_status_finds_a_waiting_journey(client, settings: Settings, db: Database, unique_id):
    """`starter.py list --status waiting` used to end in a traceback (Status=...)."""
    await seed(db, unique_id, email="ann@example.com")
    async with build_worker(client, settings, db):
        handle = await start_journey(unique_id, spec("email", wait="1h"), client=client, db=db, settings=settings)
        await wait_for_state(handle, lambda s: s.status == "waiting")
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "CASCADE_TEMPORAL_NAMESPACE": client.namespace,
            "COLUMNS": "250",
        }
        rows: list[str] = []
        for _ in range(50):  # visibility is eventually consistent
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "starter.py",
                "list",
                "--status",
                "waiting",
                "--customer",
                unique_id,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            rows = [line for line in out.decode().splitlines() if handle.id in line]
            if rows:
                break
            await asyncio.sleep(0.2)
        assert rows and "waiting" in rows[0], out.decode()
        await handle.signal(CascadeJourney.cancel, CancelInput(reason="test"))
        await handle.result()


def _upserted_names(path: Path) -> set[str]:
    names: set[str] = set()
    for event in json.loads(path.read_text())["events"]:
        if attrs := event.get("upsertWorkflowSearchAttributesEventAttributes"):
            names |= set(attrs["searchAttributes"]["indexedFields"])
    return names


async def test_histories_that_upsert_the_old_name_replay_without_a_patch():
    """Upserts are matched by their position in the history, not by their content: the
    histories recorded when the workflow upserted `Status` replay on code that upserts
    `JourneyStatus`, so the rename needs no `workflow.patched`."""
    old = [p for p in HISTORIES if LEGACY_STATUS.name in _upserted_names(p)]
    assert len(old) >= 5, "the histories recorded before the rename are gone"
    replayer = Replayer(workflows=WORKFLOWS, data_converter=CODEC_CONVERTER)
    for path in old:
        assert sa.JOURNEY_STATUS.name not in _upserted_names(path)
        result = await replayer.replay_workflow(_history(path), raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
