"""Personal data encrypted in Temporal (issue 17 part A): the payload codec end to end.

A journey runs on the time-skipping server with the codec on client and worker; its
history, fetched raw, must hold no name, address, template text or provider message,
and must decode with the codec. Keys rotate, a missing or wrong key is a clear error.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowHistory
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from cascade.infra.codec import (
    ENCODING,
    KEY_ID,
    CodecError,
    EncryptionCodec,
    Keyring,
    MissingKeyError,
    SharedPydanticPayloadConverter,
    WrongKeyError,
    data_converter,
)
from cascade.infra.db import Database, migrate
from cascade.infra.settings import DEV_CODEC_KEY, DEV_CODEC_KEY_ID, Settings
from cascade.infra.temporal import check_codec_keys, connect, erase_customer_histories
from channels.base import OutboundMessage, PermanentSendError, SendReceipt
from channels.registry import build_channels
from models import search_attributes as sa
from models.journey import JourneyInput, JourneyResult, Outcome, StepStatus
from starter import start_journey
from tests.codec import CODEC_CONVERTER, payloads_in
from tests.conftest import seed
from tests.helpers import spec
from worker import WORKFLOWS, build_worker
from workflows.cascade import CascadeJourney

NAME = "Philippa Quenby-Ostrander"
PHONE = "+14155550199"
TEMPLATE = "Your basket misses you, {{ name }}: 12 zebra-striped socks for {{ gift_for }}"
RENDERED = f"Your basket misses you, {NAME}: 12 zebra-striped socks for"
ROOT = Path(__file__).resolve().parents[1]
PROVIDER_TEXT = "550 5.1.1 mailbox-of-philippa unavailable at mx.quenby.example"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _settings(keys: dict[str, str], active: str | None = None, **kw: object) -> Settings:
    return Settings(codec_keys=keys, codec_key_id=active, **kw)  # type: ignore[arg-type]


def _client(base: Client, converter: DataConverter) -> Client:
    """A client on the same connection with another data converter (and the test server's
    time-skipping interceptor, which a bare Client would lose)."""
    config = base.config()
    config["data_converter"] = converter
    return Client(**config)


def _raw_text(history: WorkflowHistory) -> str:
    """What someone reading the stored history without keys can read: its JSON and every
    payload's bytes as text."""
    parts = [history.to_json()]
    for event in history.events:
        for payload in payloads_in(event):
            parts.append(payload.data.decode("utf-8", errors="replace"))
            parts += [v.decode("utf-8", errors="replace") for v in payload.metadata.values()]
    return "\n".join(parts)


async def _decoded_text(history: WorkflowHistory, codec: EncryptionCodec) -> str:
    payloads = [p for event in history.events for p in payloads_in(event)]
    return "\n".join(p.data.decode("utf-8", errors="replace") for p in await codec.decode(payloads))


class _BouncingEmail:
    """An email provider that refuses the address with its own (address-quoting) text."""

    name = "email"
    idempotent = True

    async def send(self, message: OutboundMessage) -> SendReceipt:
        raise PermanentSendError(PROVIDER_TEXT)


@pytest.fixture
async def encrypted_run(client: Client, settings: Settings, db: Database, unique_id: str) -> AsyncIterator[str]:
    """A finished journey: email bounced with a provider text, sms sent with the template."""
    await seed(db, unique_id, name=NAME, email=f"{unique_id}@quenby.example", sms=PHONE)
    channels = {**build_channels(settings, db), "email": _BouncingEmail()}
    journey = spec("email", "sms", wait="1h")
    for step in journey.steps:
        step.content.body = TEMPLATE
    async with build_worker(client, settings, db, channels=channels):
        # Template fields given at start travel in the workflow input: personal data too.
        gift_for = {"gift_for": f"{NAME} <{unique_id}@quenby.example>, {PHONE}"}
        handle = await start_journey(unique_id, journey, context=gift_for, client=client, db=db, settings=settings)
        result = await handle.result()
    assert [s.status for s in result.steps] == [StepStatus.FAILED, StepStatus.SENT]
    assert result.outcome == Outcome.EXHAUSTED
    yield handle.id


async def test_raw_history_holds_no_personal_data_and_decodes_with_the_codec(
    client: Client, encrypted_run: str, unique_id: str
):
    # The reader without keys: a client speaking plain pydantic JSON on the same server.
    raw_client = _client(client, pydantic_data_converter)
    history = await raw_client.get_workflow_handle(encrypted_run).fetch_history()
    raw = _raw_text(history)
    secrets = [NAME, f"{unique_id}@quenby.example", PHONE, "zebra-striped socks", RENDERED, PROVIDER_TEXT]
    assert [s for s in secrets if s in raw] == []
    # Every payload of the journey's own is ciphertext naming its key.
    payloads = [p for e in history.events for p in payloads_in(e)]
    encrypted = [p for p in payloads if p.metadata.get("encoding") == ENCODING]
    assert len(encrypted) >= 10
    assert {p.metadata[KEY_ID] for p in encrypted} == {DEV_CODEC_KEY_ID.encode()}
    clear = [p for p in payloads if p not in encrypted]
    # What stays in clear: search attributes (typed indexes) and the SDK's own markers: a
    # patch's id, and a local activity's sequence number, type and times (its input and
    # result are ours: encrypted like any activity's).
    assert clear and all(
        "type" in p.metadata or p.data.startswith(b'{"id":') or p.data.startswith(b'{"seq":') for p in clear
    )

    # The operator with the keys: everything is there.
    codec = client.data_converter.payload_codec
    assert isinstance(codec, EncryptionCodec)
    decoded = await _decoded_text(history, codec)
    # Name and addresses (template fields) and the template travel in payloads; the rendered
    # text and the provider's answer never enter Temporal at all (the activities keep them).
    assert [s for s in secrets if s not in decoded] == [RENDERED, PROVIDER_TEXT]
    # ... and the typed client reads the result as ever.
    result = await client.get_workflow_handle(encrypted_run, result_type=JourneyResult).result()
    assert result.steps[0].reason == "invalid_address"


async def test_failure_messages_are_encrypted_too():
    """A provider's text in an exception (a retried send's failure) is not left in clear."""
    failure = Failure()
    await CODEC_CONVERTER.encode_failure(ApplicationError(PROVIDER_TEXT, "detail"), failure)
    assert PROVIDER_TEXT not in str(failure) and failure.message == "Encoded failure"
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    decoded = await CODEC_CONVERTER.decode_failure(failure)
    assert str(decoded) == PROVIDER_TEXT


async def test_a_client_without_the_key_cannot_read_the_result(client: Client, encrypted_run: str):
    raw_client = _client(client, pydantic_data_converter)
    with pytest.raises(Exception) as caught:
        await raw_client.get_workflow_handle(encrypted_run).result()
    assert NAME not in str(caught.value)


async def test_search_attributes_stay_readable_and_hold_no_contact_data(
    client: Client, encrypted_run: str, unique_id: str
):
    raw_client = _client(client, pydantic_data_converter)
    described = await raw_client.get_workflow_handle(encrypted_run).describe()
    fields = described.raw_description.workflow_execution_info.search_attributes.indexed_fields
    assert set(fields) >= {sa.CUSTOMER_ID.name, sa.JOURNEY.name, sa.JOURNEY_STATUS.name}
    # Indexes must stay in clear: the server filters on them.
    assert all(p.metadata.get("encoding") != ENCODING for p in fields.values())
    typed = described.typed_search_attributes
    assert typed.get(sa.CUSTOMER_ID) == unique_id and typed.get(sa.JOURNEY) == "test"
    values = " ".join(p.data.decode() for p in fields.values())
    assert unique_id in values
    for secret in (NAME, "Philippa", "quenby", "@", PHONE, "4155550199", "zebra"):
        assert secret not in values


def test_keys_rotate_new_payloads_use_the_newest_and_old_ones_still_decode():
    old, new = _key(), _key()
    before = EncryptionCodec(Keyring.from_settings(_settings({"2026-01": old})))
    # The last key listed is the active one unless CASCADE_CODEC_KEY_ID says otherwise.
    after = EncryptionCodec(Keyring.from_settings(_settings({"2026-01": old, "2026-07": new})))
    pinned = EncryptionCodec(Keyring.from_settings(_settings({"2026-01": old, "2026-07": new}, active="2026-01")))
    assert after.keyring.active == "2026-07" and pinned.keyring.active == "2026-01"

    async def roundtrip() -> None:
        clear = Payload(metadata={"encoding": b"json/plain"}, data=b'{"name": "Ann"}')
        (sealed_old,) = await before.encode([clear])
        (sealed_new,) = await after.encode([clear])
        assert sealed_old.metadata[KEY_ID] == b"2026-01" and sealed_new.metadata[KEY_ID] == b"2026-07"
        assert b"Ann" not in sealed_old.data and sealed_old.data != sealed_new.data
        assert await after.decode([sealed_old, sealed_new]) == [clear, clear]
        # A retired key removed too early: the error names it, nothing garbled comes out.
        with pytest.raises(MissingKeyError, match="'2026-01'"):
            await EncryptionCodec(Keyring.from_settings(_settings({"2026-07": new}))).decode([sealed_old])
        # Another key under the same id: refused by GCM's tag, named as a wrong key.
        with pytest.raises(WrongKeyError, match="'2026-01'"):
            await EncryptionCodec(Keyring.from_settings(_settings({"2026-01": new}))).decode([sealed_old])
        # A payload relabelled to another key id fails too (the id is authenticated).
        relabelled = Payload()
        relabelled.CopyFrom(sealed_old)
        relabelled.metadata[KEY_ID] = b"2026-07"
        with pytest.raises(WrongKeyError):
            await after.decode([relabelled])
        # Payloads from before encryption pass through (stored histories replay).
        assert await after.decode([clear]) == [clear]

    asyncio.run(roundtrip())


async def test_a_journey_started_under_the_old_key_finishes_after_rotation(
    ts_env: WorkflowEnvironment, client: Client, settings: Settings, db: Database, unique_id: str
):
    old, new = _key(), _key()
    # A rotation's two deploys: the new key goes out first (still encrypting with the old
    # one), then becomes the active key. The journey starts before the second deploy.
    old_client = _client(client, data_converter(_settings({"k-old": old, "k-new": new}, active="k-old")))
    new_client = _client(client, data_converter(_settings({"k-old": old, "k-new": new})))
    await seed(db, unique_id, email=f"{unique_id}@example.com", sms=PHONE)
    handle = await start_journey(unique_id, spec("email", "sms"), client=old_client, db=db, settings=settings)
    async with build_worker(new_client, settings, db):
        # (This handle skips time on the test server; one from get_workflow_handle would not.)
        result = JourneyResult.model_validate(await handle.result())
    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.SENT]
    history = await handle.fetch_history()
    ids = {p.metadata[KEY_ID] for e in history.events for p in payloads_in(e) if p.metadata.get("encoding") == ENCODING}
    assert ids == {b"k-old", b"k-new"}
    # Replay through the codec with both keys accepts it; with the old key gone it cannot.
    replayed = await Replayer(workflows=WORKFLOWS, data_converter=new_client.data_converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None
    without_old = data_converter(_settings({"k-new": new}))
    failed = await Replayer(workflows=WORKFLOWS, data_converter=without_old).replay_workflow(
        history, raise_on_replay_failure=False
    )
    # The workflow task fails (the worker would retry it once the key is back): no garbled input.
    assert "MissingKeyError" in str(failed.replay_failure)


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ({}, None, "CASCADE_CODEC_KEYS is empty"),
        ({"k1": "not base64!"}, None, r"CASCADE_CODEC_KEYS\['k1'\] is not base64"),
        ({"k1": base64.b64encode(b"short").decode()}, None, r"CASCADE_CODEC_KEYS\['k1'\]: an AES-256 key is 32 bytes"),
        ({"k1": DEV_CODEC_KEY}, "k2", "CASCADE_CODEC_KEY_ID='k2' is not a key id"),
    ],
)
async def test_misconfigured_keys_stop_start_up_with_a_clear_error(keys, active, message):
    # Before any connection is tried: the address below has no server.
    with pytest.raises(CodecError, match=message):
        await connect(_settings(keys, active, temporal_address="127.0.0.1:1"))


async def test_start_up_check_finds_a_missing_or_wrong_key_in_the_namespace(dev_server: WorkflowEnvironment):
    real = _key()
    keys = {DEV_CODEC_KEY_ID: DEV_CODEC_KEY, "k-real": real}
    writer = _client(dev_server.client, data_converter(_settings(keys)))
    workflow_id = f"codec-check-{uuid.uuid4().hex[:8]}"
    journey_input = JourneyInput(spec=spec("email"), customer_id="c-check")
    # Started without a worker: its start event (the encrypted input) is all the check reads.
    handle = await writer.start_workflow(
        CascadeJourney.run,
        journey_input,
        id=workflow_id,
        task_queue="codec-check",
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.CUSTOMER_ID, "c-check")]),
    )
    query = f'WorkflowId = "{workflow_id}"'
    try:
        assert await _eventually_checked(writer, query) == 1
        missing = _client(dev_server.client, data_converter(_settings({DEV_CODEC_KEY_ID: DEV_CODEC_KEY})))
        with pytest.raises(MissingKeyError, match=f"workflow '{workflow_id}'.*'k-real'"):
            await check_codec_keys(missing, query=query)
        wrong = _client(dev_server.client, data_converter(_settings({**keys, "k-real": _key()})))
        with pytest.raises(WrongKeyError, match=f"workflow '{workflow_id}'.*'k-real'"):
            await check_codec_keys(wrong, query=query)
    finally:
        # Ended: the start-up checks of later tests (holding only the dev key) look at
        # running workflows, so they do not meet this test's key.
        await handle.terminate()


async def _eventually_checked(client: Client, query: str) -> int:
    """check_codec_keys once visibility lists the workflow (it lags the start a little)."""
    for _ in range(100):
        if checked := await check_codec_keys(client, query=query):
            return checked
        await asyncio.sleep(0.1)
    return 0


def test_the_test_servers_speak_the_codec(ts_env: WorkflowEnvironment):
    """The shared test servers' clients are the production converter (item 1 for tests)."""
    converter = ts_env.client.data_converter
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)


async def _start_unattended(client: Client, customer_id: str) -> str:
    """A journey of `customer_id` started without a worker: a history with its encrypted input."""
    workflow_id = f"erase-{customer_id}-{uuid.uuid4().hex[:6]}"
    await client.start_workflow(
        CascadeJourney.run,
        JourneyInput(spec=spec("email"), customer_id=customer_id, context={"gift_for": NAME}),
        id=workflow_id,
        task_queue=f"erase-{uuid.uuid4().hex[:6]}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.CUSTOMER_ID, customer_id)]),
    )
    return workflow_id


async def _gone(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        return exc.status == RPCStatusCode.NOT_FOUND
    return False


async def _listed(client: Client, customer_id: str) -> set[str]:
    return {w.id async for w in client.list_workflows(f'{sa.CUSTOMER_ID.name} = "{customer_id}"')}


async def test_erasure_deletes_the_customers_histories_and_only_theirs(dev_server: WorkflowEnvironment, tmp_path):
    """Item 5: GDPR erasure removes the customer's histories from Temporal (running or not),
    through `python customers.py erase` as an operator runs it."""
    client = dev_server.client
    erased, kept = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    theirs = {await _start_unattended(client, erased), await _start_unattended(client, erased)}
    await client.get_workflow_handle(next(iter(theirs))).terminate("closed before the erasure")
    other = await _start_unattended(client, kept)
    for customer, expected in ((erased, theirs), (kept, {other})):
        for _ in range(100):
            if await _listed(client, customer) == expected:
                break
            await asyncio.sleep(0.1)
    assert await _listed(client, erased) == theirs

    database = Database.from_url(f"sqlite:///{tmp_path / 'erase.db'}")
    await migrate(database.engine)
    await seed(database, erased, name=NAME, email="philippa@quenby.example")
    await database.dispose()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'erase.db'}",
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
    }
    done = await asyncio.create_subprocess_exec(
        sys.executable, "customers.py", "erase", erased, "--yes", cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(done.communicate(), timeout=120)
    text = " ".join(err.decode().split())
    assert done.returncode == 0, text
    assert f"deleted 2 workflow histories of {erased}" in text

    for workflow_id in theirs:
        # The server deletes in the background (about half a minute on the dev server).
        for _ in range(240):
            if await _gone(client, workflow_id):
                break
            await asyncio.sleep(0.5)
        assert await _gone(client, workflow_id), workflow_id
    assert not await _gone(client, other)
    await client.get_workflow_handle(other).terminate("test over")
    # Nothing left to delete: a second run (a retry) deletes nothing and succeeds.
    assert await erase_customer_histories(client, erased) == []


def test_the_worker_refuses_to_start_with_a_misconfigured_key(tmp_path: Path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
        "CASCADE_CODEC_KEYS": '{"2026-11": "c2hvcnQ="}',
    }
    done = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "worker: CASCADE_CODEC_KEYS['2026-11']: an AES-256 key is 32 bytes, this one is 5" in done.stderr
    assert "Traceback" not in done.stderr


async def test_every_payload_converter_the_sdk_builds_is_the_one_shared_converter():
    """The SDK builds a payload converter per workflow run and per activation: ours is built once."""
    assert CODEC_CONVERTER.payload_converter_class is SharedPydanticPayloadConverter
    assert CODEC_CONVERTER.payload_converter_class() is CODEC_CONVERTER.payload_converter_class()
    journey = JourneyInput(customer_id="c-1", spec=spec("email", "sms"))
    [decoded] = await CODEC_CONVERTER.decode(await CODEC_CONVERTER.encode([journey]), [JourneyInput])
    assert decoded == journey
