"""The Temporal UI shows a journey's input decoded through the codec server (issue 17 item 4).

A dev server with its UI is given `--ui-codec-endpoint` (as `make run` does); headless
Debian Chromium opens a journey's page and must show the customer's data in clear, while
the history the server holds is ciphertext. The screenshot lands in tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import async_playwright
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

from cascade.infra.codec import ENCODING
from cascade.infra.settings import Settings
from models import search_attributes as sa
from models.journey import JourneyInput
from tests.codec import CODEC_CONVERTER
from tests.conftest import binary, quiet_port, quiet_runtime, started
from tests.helpers import spec
from webhooks.codec_server import create_app, launch_for_ui
from workflows.cascade import CascadeJourney

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
GIFT = "Philippa Quenby-Ostrander, +14155550199"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")


@pytest.fixture
async def ui_with_codec() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server whose UI decodes through a codec server on 127.0.0.1; yields it and the UI URL."""
    ui_port, codec_port = quiet_port(), quiet_port()
    base = Settings(codec_server_port=codec_port)
    env_vars, endpoint = launch_for_ui(base, ui_port)
    settings = Settings(
        codec_server_port=codec_port,
        codec_server_credential=env_vars["CASCADE_CODEC_SERVER_CREDENTIAL"],
        codec_cors_origins=[f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"],
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=codec_port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    env = await started(
        lambda: WorkflowEnvironment.start_local(
            data_converter=CODEC_CONVERTER,
            dev_server_existing_path=binary("temporal"),
            search_attributes=sa.REGISTERED,
            runtime=quiet_runtime(),
            ui=True,
            ui_port=ui_port,
            dev_server_extra_args=["--ui-codec-endpoint", endpoint],
        )
    )
    try:
        yield env, f"http://127.0.0.1:{ui_port}"
    finally:
        await env.shutdown()
        server.should_exit = True
        await task


async def test_a_journey_page_shows_its_input_decoded(ui_with_codec: tuple[WorkflowEnvironment, str]):
    env, ui = ui_with_codec
    workflow_id = f"journey/ui/{uuid.uuid4().hex[:8]}"
    journey = spec("email")
    journey.steps[0].content.subject = f"Socks for {GIFT}"
    # No worker: the start event's input is what the page shows.
    handle = await env.client.start_workflow(
        CascadeJourney.run,
        JourneyInput(spec=journey, customer_id="c-ui", context={"gift_for": GIFT}),
        id=workflow_id,
        task_queue="ui-only",
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.CUSTOMER_ID, "c-ui")]),
    )
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert started.metadata["encoding"] == ENCODING and b"Philippa" not in started.data

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "temporal_ui_decoded_journey.png"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(
                f"{ui}/namespaces/default/workflows/{workflow_id.replace('/', '%2F')}/{handle.result_run_id}"
            )
            # The Input card renders once the UI has the payload back from the codec server.
            try:
                # In the Input card's first lines (the subject), once the codec server answered.
                await page.get_by_text("Philippa Quenby-Ostrander", exact=False).first.wait_for(timeout=60_000)
            finally:
                await page.screenshot(path=str(shot), full_page=True)
            content = await page.content()
        finally:
            await browser.close()
    assert "Philippa Quenby-Ostrander" in content
    assert shot.stat().st_size > 10_000
    await handle.terminate()
