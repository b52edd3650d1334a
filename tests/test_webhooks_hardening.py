"""Holes found when the webhooks were attacked (issue 11): replays, ids, numbers, HTTP semantics.

Real HTTP (uvicorn on a free port), the real Temporal dev server, SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from sqlmodel import col, select

from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.profiles.importer import import_profiles
from cascade.profiles.privacy import erase_customer
from cascade.profiles.service import upsert_customer
from models.ids import (
    CUSTOMER_ID_PATTERN,
    MAX_AMOUNT,
    MAX_LOYALTY_POINTS,
    MAX_POINTS_PER_EVENT,
    check_run_key,
    is_customer_id,
)
from models.profiles import CustomerProfile
from models.tables import ContactPoint, Customer, Delivery, EngagementEvent, ReceiptToken
from starter import UnknownCustomerError, journey_workflow_id, start_journey
from tests.conftest import seed
from tests.helpers import serve_app, spec
from webhooks.app import create_app
from webhooks.keys import create_key

pytestmark = pytest.mark.integration
SECRET = "provider-secret"
LIMIT = 16 * 1024
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def web(dev_server, settings: Settings, any_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    settings.webhook_mailgun_signing_key = SecretStr(SECRET)
    settings.webhook_viber_auth_token = SecretStr(SECRET)
    settings.webhook_whatsapp_verify_token = SecretStr("verify-me")
    settings.webhooks_max_body_bytes = LIMIT
    async with serve_app(create_app(settings, client=dev_server.client, db=any_db)) as url:
        settings.public_url = url
        async with httpx.AsyncClient(base_url=url) as http:
            yield http


async def _events(db: Database) -> list[EngagementEvent]:
    async with db.session() as session:
        return list((await session.exec(select(EngagementEvent).order_by(col(EngagementEvent.id)))).all())


async def _customer(db: Database, customer_id: str) -> Customer | None:
    async with db.session() as session:
        return await session.get(Customer, customer_id)


# ------------------------------------------------------------------ item 11: Mailgun replay


def _mailgun(token: str, event_data: dict[str, Any], timestamp: int | None = None) -> dict[str, Any]:
    stamp = str(timestamp or int(time.time()))
    signature = hmac.new(SECRET.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": event_data}


async def _sent_email(db: Database, customer_id: str, message_id: str) -> Delivery:
    """A delivery row as send_message leaves it, for a journey that no longer runs."""
    async with db.session() as session:
        point = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == customer_id))).one()
        row = Delivery(
            idempotency_key=f"journey/t/{customer_id}/run-1/0",
            workflow_id=f"journey/t/{customer_id}",
            run_id="run-1",
            journey="t",
            step=0,
            customer_id=customer_id,
            channel="email",
            contact_point_id=point.id,
            provider_message_id=message_id,
            status="sent",
        )
        session.add(row)
    return row


async def _state(db: Database, customer_id: str) -> tuple[str, str, int]:
    async with db.session() as session:
        point = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == customer_id))).one()
        delivery = (await session.exec(select(Delivery).where(Delivery.customer_id == customer_id))).one()
    return point.status, delivery.status, len(await _events(db))


async def test_an_ignored_mailgun_event_spends_its_token(web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    message_id = f"{unique_id}@shop.example"
    await _sent_email(any_db, unique_id, message_id)
    message = {"headers": {"message-id": f"<{message_id}>"}}
    temporary = {"event": "failed", "severity": "temporary", "reason": "greylisted", "message": message}
    permanent = {"event": "failed", "severity": "permanent", "reason": "bounce", "message": message}

    # A routine temporary failure: ignored (Mailgun retries it itself), but its token is spent.
    first = _mailgun("tok-temporary", temporary)
    reply = await web.post("/v1/receipts/email/mailgun", json=first)
    assert reply.status_code == 200 and reply.json() == {"status": "ignored"}
    before = await _state(any_db, unique_id)
    assert before == ("valid", "sent", 0)

    # The same signed token with another body (a permanent bounce): refused, nothing changes.
    replay = {**first, "event-data": permanent}
    refused = await web.post("/v1/receipts/email/mailgun", json=replay)
    assert refused.status_code == 401, refused.text
    assert "signature.token" in refused.json()["error"] and "replay" in refused.json()["error"]
    assert await _state(any_db, unique_id) == before

    # `accepted` is ignored too, and burns its token the same way.
    accepted = _mailgun("tok-accepted", {"event": "accepted", "message": message})
    assert (await web.post("/v1/receipts/email/mailgun", json=accepted)).json() == {"status": "ignored"}
    complained = {**accepted, "event-data": {"event": "complained", "message": message}}
    assert (await web.post("/v1/receipts/email/mailgun", json=complained)).status_code == 401
    assert await _state(any_db, unique_id) == before

    # Mailgun's own retry of the same body (after a 5xx) still goes through: same answer.
    again = await web.post("/v1/receipts/email/mailgun", json=first)
    assert again.status_code == 200 and again.json() == {"status": "ignored"}

    # A real permanent bounce with a token of its own is applied, once.
    bounce = _mailgun("tok-bounce", permanent)
    assert (await web.post("/v1/receipts/email/mailgun", json=bounce)).status_code == 200
    assert (await _state(any_db, unique_id))[:2] == ("bounced", "failed")
    async with any_db.session() as session:
        tokens = {t.token for t in (await session.exec(select(ReceiptToken))).all()}
    assert tokens == {"tok-temporary", "tok-accepted", "tok-bounce"}


async def test_a_bad_mailgun_signature_spends_no_token(web, any_db):
    body = _mailgun("tok-x", {"event": "accepted"})
    body["signature"]["signature"] = "0" * 64
    assert (await web.post("/v1/receipts/email/mailgun", json=body)).status_code == 401
    old = _mailgun("tok-y", {"event": "accepted"}, timestamp=int(time.time()) - 3600)
    assert (await web.post("/v1/receipts/email/mailgun", json=old)).status_code == 401
    async with any_db.session() as session:
        assert (await session.exec(select(ReceiptToken))).all() == []


async def test_a_signed_receipt_with_an_unusable_message_id_is_answered_not_failed(web, any_db):
    # A NUL in the id made the delivery look-up fail on PostgreSQL (500, and the provider retries).
    body = _mailgun("tok-nul", {"event": "delivered", "message": {"headers": {"message-id": "<a\x00b@x>"}}})
    reply = await web.post("/v1/receipts/email/mailgun", json=body)
    assert reply.status_code == 200 and reply.json() == {"status": "unknown message"}, reply.text
    assert await _events(any_db) == []


# ------------------------------------------------------------------ item 14: one customer id rule

BAD_IDS = ["s-3/r3", "a\u202eb", "nul\x00", "has space", "tab\t", "-leading", "", "x" * 129, "é"]


async def test_events_refuse_ids_the_profile_rule_refuses(web, any_db):
    key, _ = await create_key(any_db, "shop1")
    for bad in BAD_IDS:
        for kind in ("registered", "purchase"):
            event = {"event_id": f"e-{kind}-{len(bad)}", "customer_id": bad, "type": kind}
            reply = await web.post("/v1/events", json=event, headers={"X-API-Key": key})
            assert reply.status_code == 422, (bad, reply.text)
            assert [f["field"] for f in reply.json()["fields"]] == ["customer_id"], reply.text
        with pytest.raises(ValidationError):
            CustomerProfile(id=bad)
    # A registration did not create any of them.
    async with any_db.session() as session:
        assert (await session.exec(select(Customer))).all() == []
    # What the rule allows, both sides accept.
    ok = {"event_id": "e-ok", "customer_id": "ann@example.com", "type": "registered"}
    assert (await web.post("/v1/events", json=ok, headers={"X-API-Key": key})).status_code == 202
    assert CustomerProfile(id="ann@example.com").id == "ann@example.com"


async def test_other_ids_we_are_handed_may_not_hide_characters(web, any_db, unique_id):
    # A NUL in an event id or message id was a 500 on PostgreSQL; U+202E makes ids look alike.
    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    for bad in ("a\x00b", "a\u202eb", "a b"):
        event = {"event_id": bad, "customer_id": unique_id, "type": "page_viewed"}
        reply = await web.post("/v1/events", json=event, headers={"X-API-Key": key})
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "event_id", reply.text
        for field in ("message_id", "workflow_id"):
            reply = await web.post("/v1/engagement", json={"event": "opened", field: bad})
            assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == field, reply.text
    assert await _events(any_db) == []
    # Unicode that is visible is fine in a sender's event id.
    event = {"event_id": "заказ-1", "customer_id": unique_id, "type": "page_viewed"}
    assert (await web.post("/v1/events", json=event, headers={"X-API-Key": key})).status_code == 202


async def test_start_journey_refuses_ids_and_keys_that_would_make_workflow_ids_ambiguous(any_db, settings):
    journey = spec("email")
    for bad in ("s-3/r3", "x\u202e"):
        with pytest.raises(ValueError, match="customer id"):
            await start_journey(bad, journey, db=any_db, settings=settings)
    await seed(any_db, "s-3", email="s3@example.com")
    for key in ("r3/x", "a\x00b", "\u202e", ""):
        with pytest.raises(ValueError, match="key"):
            await start_journey("s-3", journey, key=key, db=any_db, settings=settings)
    # A loop's rounds are `<loop id>/round-<n>`: a run key of that shape would name one.
    loop = spec("email", loop={"points_per_purchase": 10})
    with pytest.raises(ValueError, match="reserved"):
        await start_journey("s-3", loop, key="round-1", db=any_db, settings=settings)
    check_run_key("round-1")  # fine for a journey that is no loop


async def test_imports_refuse_the_same_ids_and_numbers(any_db, tmp_path):
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "id,name,loyalty_points\nok-1,Ann,5\ns-3/r3,Bob,1\nok-2,Cy,9223372036854775807\nbad\u202eid,Di,1\n",
        encoding="utf-8",
    )
    jsonl = tmp_path / "people.jsonl"
    jsonl.write_text('{"id": "ok-3"}\n{"id": "x/y"}\n{"id": "ok-4", "attributes": {"ltv": 1e999}}\n')
    csv_report = await import_profiles(any_db, csv_file, skip_invalid=True)
    jsonl_report = await import_profiles(any_db, jsonl, skip_invalid=True)
    assert [(r.line, r.reason.split(":")[0]) for r in csv_report.rejected] == [
        (3, "id"),
        (4, "loyalty_points"),
        (5, "id"),
    ]
    assert [(r.line, r.reason.split(":")[0]) for r in jsonl_report.rejected] == [(2, "id"), (3, "attributes")]
    async with any_db.session() as session:
        assert sorted((await session.exec(select(Customer.id))).all()) == ["ok-1", "ok-3"]


JOURNEY_NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
CUSTOMER_IDS = st.from_regex(CUSTOMER_ID_PATTERN, fullmatch=True)
KEYS = st.one_of(st.none(), st.text(min_size=1, max_size=128).filter(lambda k: _valid_key(k)))


def _valid_key(key: str) -> bool:
    try:
        check_run_key(key)
    except ValueError:
        return False
    return True


@hsettings(max_examples=300, deadline=None)
@given(JOURNEY_NAMES, CUSTOMER_IDS, KEYS)
def test_a_workflow_id_names_exactly_one_journey_customer_and_key(journey, customer_id, key):
    # The parts read back from the id are the parts it was made of: no two triples share an id.
    parts = journey_workflow_id(journey, customer_id, key).split("/")
    assert parts == ["journey", journey, customer_id, *([key] if key else [])]


def test_the_id_from_the_issue_has_one_reading():
    assert journey_workflow_id("x", "s-3", "r3") == "journey/x/s-3/r3"
    # The other reading, customer "s-3/r3" without a key, cannot exist.
    assert not is_customer_id("s-3/r3")


def _cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CASCADE_DATABASE_URL": database_url, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    return subprocess.run(
        [sys.executable, "starter.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------ item 15: bounded numbers


async def test_numbers_out_of_bounds_are_422_naming_the_field_and_nobody_gets_stuck(web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    headers = {"X-API-Key": key}

    def purchase(n: int, **properties: Any) -> dict[str, Any]:
        event = {"event_id": f"ord-{n}", "customer_id": unique_id, "type": "purchase"}
        return {**event, "conversion": False, "properties": properties}

    refused = {
        "properties.loyalty_points": [2**63, 2**63 - 1, -1, -(2**63), 1.5, True],
        "properties.amount": [-1, 1e300, 2**63],
    }
    n = 0
    for field, values in refused.items():
        for value in values:
            n += 1
            reply = await web.post("/v1/events", json=purchase(n, **{field.split(".")[1]: value}), headers=headers)
            assert reply.status_code == 422, (field, value, reply.text)
            assert field in [f["field"] for f in reply.json()["fields"]], (field, value, reply.text)
    for raw in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"event_id": "n", "customer_id": "%s", "type": "page_viewed", "properties": {"x": %s}}'
        reply = await web.post(
            "/v1/events",
            content=body % (unique_id.encode(), raw),
            headers={**headers, "content-type": "application/json"},
        )
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "properties.x", reply.text
    customer = await _customer(any_db, unique_id)
    assert customer is not None and (customer.loyalty_points or 0) == 0 and (customer.purchase_count or 0) == 0
    assert await _events(any_db) == []

    # The largest accepted values, again and again: the total saturates, purchases keep working.
    for n in range(100, 103):
        reply = await web.post(
            "/v1/events", json=purchase(n, loyalty_points=MAX_POINTS_PER_EVENT, amount=MAX_AMOUNT), headers=headers
        )
        assert reply.status_code == 202, reply.text
    customer = await _customer(any_db, unique_id)
    assert customer is not None and customer.loyalty_points == 3 * MAX_POINTS_PER_EVENT and customer.purchase_count == 3
    too_many = purchase(150, loyalty_points=MAX_POINTS_PER_EVENT + 1)
    assert (await web.post("/v1/events", json=too_many, headers=headers)).status_code == 422

    # A profile can hold at most MAX_LOYALTY_POINTS; from there a purchase still succeeds.
    with pytest.raises(ValidationError, match="loyalty_points"):
        CustomerProfile(id=unique_id, loyalty_points=2**63 - 1)
    await upsert_customer(any_db, CustomerProfile(id=unique_id, loyalty_points=MAX_LOYALTY_POINTS))
    reply = await web.post("/v1/events", json=purchase(200, loyalty_points=MAX_POINTS_PER_EVENT), headers=headers)
    assert reply.status_code == 202, reply.text
    customer = await _customer(any_db, unique_id)
    assert customer is not None and customer.loyalty_points == MAX_LOYALTY_POINTS and customer.purchase_count == 4


async def test_event_times_out_of_range_are_422(web, any_db, unique_id):
    # Year 1 at +14:00 or 9999 at -14:00 cannot be stored on PostgreSQL (it was a 500), and a
    # purchase dated 9999 would pin last_purchase_at there for good.
    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    for n, at in enumerate(("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2999-01-01T00:00:00Z")):
        event = {"event_id": f"t-{n}", "customer_id": unique_id, "type": "purchase", "occurred_at": at}
        reply = await web.post("/v1/events", json={**event, "conversion": False}, headers={"X-API-Key": key})
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "occurred_at", reply.text
        engagement = {"event": "opened", "workflow_id": "journey/x/c-1", "occurred_at": at}
        reply = await web.post("/v1/engagement", json=engagement)
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "occurred_at", reply.text
    assert await _events(any_db) == []
    ok = {"event_id": "t-ok", "customer_id": unique_id, "type": "page_viewed", "occurred_at": "2020-02-29T12:00:00Z"}
    assert (await web.post("/v1/events", json=ok, headers={"X-API-Key": key})).status_code == 202


def test_profile_numbers_are_bounded():
    for bad in ({"purchase_count": 2**63}, {"loyalty_points": -1}, {"attributes": {"ltv": float("inf")}}):
        with pytest.raises(ValidationError):
            CustomerProfile(id="c-1", **bad)
    deep = CustomerProfile.model_validate_json('{"id": "c-1", "attributes": {"a": [1, {"b": 2.5}]}}')
    assert deep.attributes == {"a": [1, {"b": 2.5}]}
    with pytest.raises(ValidationError, match=r"a\.1\.b"):
        CustomerProfile.model_validate({"id": "c-1", "attributes": {"a": [1, {"b": 2**60}]}})


# ------------------------------------------------------------------ item 17: HTTP semantics


async def test_a_chunked_body_over_the_limit_is_413(web, any_db):
    key, _ = await create_key(any_db, "shop1")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"event_id": "big", "customer_id": "c-1", "type": "page_viewed", "properties": {"x": "'
        for _ in range(LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}'

    headers = {"X-API-Key": key, "content-type": "application/json"}
    reply = await web.post("/v1/events/batch", content=chunks(), headers=headers)
    assert reply.status_code == 413 and "larger than" in reply.json()["error"]
    declared = await web.post("/v1/events", content=b"x" * (LIMIT + 1), headers=headers)
    assert declared.status_code == 413


async def test_unreadable_bodies_are_422_with_the_place_as_line_and_column(web, any_db):
    key, _ = await create_key(any_db, "shop1")
    headers = {"X-API-Key": key, "content-type": "application/json"}
    reply = await web.post("/v1/events", content=b'{"event_id": "a",\n "customer_id": oops}', headers=headers)
    assert reply.status_code == 422
    [field] = reply.json()["fields"]
    assert field["field"] == "body" and "line 2, column 17" in field["message"], reply.text
    assert "not valid JSON" in reply.json()["error"]

    reply = await web.post("/v1/events", content='{"event_id": "é\xff"}'.encode("latin-1"), headers=headers)
    assert reply.status_code == 422
    [field] = reply.json()["fields"]
    assert field == {"field": "body", "message": "not UTF-8: byte 0xe9 at line 1, column 15"}, reply.text

    # A raw-signed body (Viber) that is no JSON gets the same shape, after its signature is checked.
    raw = b'{"event": "seen",\n\n  "x": }'
    signature = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    reply = await web.post("/v1/receipts/viber", content=raw, headers={"X-Viber-Content-Signature": signature})
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "body"
    assert "line 3, column 8" in reply.json()["fields"][0]["message"], reply.text


async def test_conversion_must_be_a_real_boolean(web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    for n, value in enumerate((0, 1, "true", "false", "no")):
        event = {"event_id": f"v-{n}", "customer_id": unique_id, "type": "page_viewed", "conversion": value}
        reply = await web.post("/v1/events", json=event, headers={"X-API-Key": key})
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "conversion", (value, reply.text)
    event = {"event_id": "v-ok", "customer_id": unique_id, "type": "page_viewed", "conversion": False}
    assert (await web.post("/v1/events", json=event, headers={"X-API-Key": key})).status_code == 202


async def test_options_and_405_name_every_method_and_echoes_are_nosniff(web):
    for path, expected in (
        ("/v1/receipts/whatsapp", {"GET", "POST"}),
        ("/v1/events", {"POST"}),
        ("/u/some-token", {"GET", "POST"}),
    ):
        reply = await web.options(path)
        allow = {m.strip() for m in reply.headers["allow"].split(",")}
        assert reply.status_code == 204 and expected | {"OPTIONS"} <= allow, (path, reply.headers)
    wrong = await web.put("/v1/receipts/whatsapp")
    assert wrong.status_code == 405 and {"GET", "POST"} <= {m.strip() for m in wrong.headers["allow"].split(",")}
    assert (await web.options("/no/such/path")).status_code == 404

    verify = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "<script>alert(1)</script>"}
    echo = await web.get("/v1/receipts/whatsapp", params=verify)
    assert echo.status_code == 200 and echo.text == verify["hub.challenge"]
    assert echo.headers["x-content-type-options"] == "nosniff"
    assert echo.headers["content-type"].startswith("text/plain")


def test_the_openapi_document_names_the_413_of_the_batch_endpoint():
    document = create_app(Settings()).openapi()
    for path in ("/v1/events/batch", "/v1/events", "/v1/receipts/email/mailgun"):
        assert "413" in document["paths"][path]["post"]["responses"], path


# ------------------------------------------------------------------ item 24 (and the CLI side of 14)


async def test_cli_start_refuses_an_erased_customer_and_a_bad_id(tmp_path, unique_id):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    db = Database.from_url(url)
    await migrate(db.engine)
    await seed(db, unique_id, email="ann@example.com")
    await erase_customer(db, unique_id)
    with pytest.raises(UnknownCustomerError, match="erased"):
        await start_journey(unique_id, spec("email"), db=db, settings=Settings(database_url=url))
    await db.dispose()

    erased = _cli("start", unique_id, "welcome", database_url=url)
    assert erased.returncode == 2, erased.stdout + erased.stderr
    assert "erased" in erased.stdout and "Traceback" not in erased.stdout + erased.stderr
    for command in (("start", "s-3/r3", "welcome"), ("event", "s-3/r3", "registered")):
        bad = _cli(*command, database_url=url)
        assert bad.returncode == 2 and "customer id" in bad.stdout, bad.stdout + bad.stderr


async def test_an_erased_customer_gets_404_from_the_events_api_too(web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    await erase_customer(any_db, unique_id)
    key, _ = await create_key(any_db, "shop1")
    event = {"event_id": "r-1", "customer_id": unique_id, "type": "registered"}
    assert (await web.post("/v1/events", json=event, headers={"X-API-Key": key})).status_code == 404
    customer = await _customer(any_db, unique_id)
    assert customer is not None and customer.attributes == {} and await _events(any_db) == []
