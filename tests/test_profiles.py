"""The single customer view on real SQLite and PostgreSQL: profiles, consent, merges, GDPR."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import col, func, select

from cascade.infra.db import Database
from cascade.profiles.contacts import load_reachability
from cascade.profiles.privacy import erase_customer, export_profile, pseudonym
from cascade.profiles.service import ProfileError, surviving_customer, template_fields, upsert_customer
from models.profiles import ConsentIn, ContactIn, CustomerProfile, typed_attribute
from models.tables import (
    Consent,
    ContactPoint,
    ContactStatus,
    Customer,
    CustomerMerge,
    Delivery,
    EngagementEvent,
    JourneyRun,
    SandboxMessage,
    Topic,
    utcnow,
)


async def _reach(db: Database, cid: str, channel: str, topic: Topic = Topic.MARKETING) -> str | None:
    async with db.session() as session:
        reach = await load_reachability(session, cid, channel, topic)
    return reach.reason


def _delivery(customer_id: str, channel: str, cost: float = 0.0) -> Delivery:
    """A sent message of journey `x` in the delivery log."""
    return Delivery(
        idempotency_key=f"k-{customer_id}",
        workflow_id=f"journey/x/{customer_id}",
        run_id="r",
        journey="x",
        step=0,
        customer_id=customer_id,
        channel=channel,
        cost=cost,
    )


async def _count(db: Database, table: type, *where: object) -> int:
    async with db.session() as session:
        return int((await session.exec(select(func.count()).select_from(table).where(*where))).one())  # type: ignore[arg-type]


async def test_typed_fields_are_kept_when_a_later_update_leaves_them_out(any_db: Database) -> None:
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="p1",
            name="Ann",
            birth_date=date(1990, 5, 17),
            timezone="Europe/Moscow",
            children_ages=[3, 7],
            loyalty_points=120,
            preferred_channel="telegram",
            attributes={"shoe_size": 38},
        ),
    )
    await upsert_customer(any_db, CustomerProfile(id="p1", city="Kazan", attributes={"vip": True}))
    async with any_db.session() as session:
        customer = await session.get(Customer, "p1")
    assert customer is not None
    assert (customer.name, customer.city, customer.timezone) == ("Ann", "Kazan", "Europe/Moscow")
    assert customer.birth_date == date(1990, 5, 17) and customer.children_ages == [3, 7]
    assert customer.attributes == {"shoe_size": 38, "vip": True}
    fields = template_fields(customer)
    assert fields["name"] == "Ann" and fields["shoe_size"] == 38 and fields["preferred_channel"] == "telegram"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"id": "x", "timezone": "Mars/Olympus"}, "timezone"),
        ({"id": "x", "children_ages": [4, 99]}, "children_ages"),
        ({"id": "x", "gender": "robot"}, "gender"),
        ({"id": "x", "contacts": [{"channel": "sms", "address": "12345"}]}, "contacts.0"),
        ({"id": "x", "contacts": [{"channel": "email", "address": "not-an-email"}]}, "contacts.0"),
        ({"id": "has space"}, "id"),
    ],
)
def test_bad_profile_fields_are_rejected_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CustomerProfile.model_validate(data)
    assert field in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_typed_attribute_reads_custom_attributes_as_their_type() -> None:
    attrs = {"size": "38", "vip": "yes", "since": "2024-01-02", "tags": ["a"]}
    assert typed_attribute(attrs, "size", int) == 38
    assert typed_attribute(attrs, "vip", bool) is True
    assert typed_attribute(attrs, "since", date) == date(2024, 1, 2)
    assert typed_attribute(attrs, "missing", int, 0) == 0
    with pytest.raises(ValueError, match="'tags'"):
        typed_attribute(attrs, "tags", int)


async def test_consent_per_channel_and_topic(any_db: Database) -> None:
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="c1",
            contacts=[
                ContactIn(channel="email", address="c1@example.com"),
                ContactIn(channel="sms", address="+14155552671", consent=False),
                ContactIn(channel="telegram", address="77", status=ContactStatus.UNSUBSCRIBED),
                ContactIn(channel="viber", address="v1", status=ContactStatus.BOUNCED),
            ],
            consents=[ConsentIn(channel="email", topic="transactional", granted=False, source="settings page")],
        ),
    )
    assert await _reach(any_db, "c1", "email") is None
    # Opted out of order e-mails but not of news: the topic decides.
    assert await _reach(any_db, "c1", "email", Topic.TRANSACTIONAL) == "no consent"
    assert await _reach(any_db, "c1", "sms") == "no consent"
    assert await _reach(any_db, "c1", "sms", Topic.TRANSACTIONAL) is None
    # An unsubscribed address still gets receipts; a bounced one gets nothing.
    assert await _reach(any_db, "c1", "telegram") == "contact unsubscribed"
    assert await _reach(any_db, "c1", "telegram", Topic.TRANSACTIONAL) is None
    assert await _reach(any_db, "c1", "viber", Topic.TRANSACTIONAL) == "contact bounced"
    assert await _reach(any_db, "c1", "whatsapp") == "no whatsapp contact"
    assert await _reach(any_db, "nobody", "email") == "unknown customer"


async def test_profiles_sharing_an_email_are_merged_with_nothing_lost(any_db: Database) -> None:
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="old",
            name="Ann",
            purchase_count=2,
            loyalty_points=50,
            favourite_categories=["shoes"],
            contacts=[ContactIn(channel="email", address="ann@example.com", status=ContactStatus.UNSUBSCRIBED)],
        ),
    )
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="new",
            city="Omsk",
            purchase_count=1,
            loyalty_points=10,
            favourite_categories=["toys"],
            external_ids={"loyalty": "L-1"},
            attributes={"size": 38},
            contacts=[ContactIn(channel="sms", address="+14155552671")],
        ),
    )
    async with any_db.session() as session:
        session.add(_delivery("new", "sms"))
    # The new profile now turns out to share Ann's e-mail (typed in another case).
    result = await upsert_customer(
        any_db, CustomerProfile(id="new", contacts=[ContactIn(channel="email", address="ANN@example.com")])
    )
    assert result.customer_id == "old" and result.merged == ["new"]

    async with any_db.session() as session:
        old = await session.get(Customer, "old")
        new = await session.get(Customer, "new")
        merge = (await session.exec(select(CustomerMerge))).one()
        points = (await session.exec(select(ContactPoint).where(ContactPoint.customer_id == "old"))).all()
        delivery = (await session.exec(select(Delivery))).one()
    assert old is not None and new is not None and new.merged_into == "old"
    assert (old.name, old.city, old.purchase_count, old.loyalty_points) == ("Ann", "Omsk", 3, 60)
    assert old.favourite_categories == ["shoes", "toys"] and old.attributes == {"size": 38}
    assert sorted((p.channel, p.address, p.status) for p in points) == [
        ("email", "ann@example.com", "unsubscribed"),  # the unsubscribe survives the merge
        ("sms", "+14155552671", "valid"),
    ]
    assert delivery.customer_id == "old"
    assert merge.survivor_id == "old" and merge.merged_id == "new"
    assert merge.details["profile"]["city"] == "Omsk" and merge.details["moved"]["contact_points"] >= 1
    # Journeys and look-ups by the old id find the surviving profile.
    assert await _reach(any_db, "new", "sms") is None
    assert (await export_profile(any_db, "new"))["profile"]["id"] == "old"


async def test_the_same_phone_on_whatsapp_and_sms_is_the_same_person(any_db: Database) -> None:
    await upsert_customer(any_db, CustomerProfile(id="a", contacts=[ContactIn(channel="sms", address="+14155552671")]))
    result = await upsert_customer(
        any_db, CustomerProfile(id="b", contacts=[ContactIn(channel="whatsapp", address="+1 415 555 2671")])
    )
    assert result.customer_id == "a" and result.merged == ["b"]


async def test_concurrent_writers_never_duplicate_a_customer_or_contact(any_db: Database) -> None:
    profile = CustomerProfile(id="race", name="R", contacts=[ContactIn(channel="email", address="race@example.com")])
    results = await asyncio.gather(*(upsert_customer(any_db, profile) for _ in range(6)), return_exceptions=True)
    # SQLite serialises writers; PostgreSQL row-locks the customer: either way, no errors.
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(r.created for r in results if not isinstance(r, BaseException)) == 1
    assert await _count(any_db, Customer, Customer.id == "race") == 1
    assert await _count(any_db, ContactPoint, ContactPoint.customer_id == "race") == 1
    assert await _count(any_db, Consent, Consent.customer_id == "race") == 1


async def test_erasure_removes_personal_data_and_keeps_aggregates(any_db: Database) -> None:
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="gone",
            name="Eve",
            city="Riga",
            external_ids={"crm": "E-9"},
            contacts=[ContactIn(channel="email", address="eve@example.com")],
        ),
    )
    async with any_db.session() as session:
        session.add(_delivery("gone", "email", cost=0.05))
        session.add(
            EngagementEvent(customer_id="gone", type="purchase", properties={"card": "4111"}, occurred_at=utcnow())
        )
        session.add(
            SandboxMessage(
                channel="email",
                idempotency_key="k-eve",
                provider_message_id="m1",
                to_address="eve@example.com",
                body="Hi",
            )
        )
    report = await erase_customer(any_db, "gone")
    assert report.removed["contact_points"] == 1 and report.removed["outbox_messages"] == 1
    exported = await export_profile(any_db, "gone")
    assert exported["profile"]["name"] is None and exported["profile"]["city"] is None
    assert exported["profile"]["erased_at"] is not None
    assert exported["contact_points"] == [] and exported["external_ids"] == [] and exported["messages"] == []
    async with any_db.session() as session:
        kept = (await session.exec(select(Delivery).where(Delivery.customer_id == pseudonym("gone")))).one()
        event = (await session.exec(select(EngagementEvent))).one()
    assert (kept.channel, kept.cost) == ("email", 0.05)
    assert event.customer_id == pseudonym("gone") and event.properties == {} and event.type == "purchase"
    assert await _reach(any_db, "gone", "email", Topic.TRANSACTIONAL) == "customer erased"
    with pytest.raises(ProfileError, match="erased"):
        await upsert_customer(any_db, CustomerProfile(id="gone", name="Eve again"))
    assert await _count(any_db, Customer, col(Customer.name).is_not(None), Customer.id == "gone") == 0


async def test_an_implied_yes_never_overrides_an_opt_out(any_db: Database) -> None:
    await upsert_customer(
        any_db, CustomerProfile(id="o1", contacts=[ContactIn(channel="email", address="o1@example.com", consent=False)])
    )
    # A second address arrives without a consent decision (a checkout form).
    await upsert_customer(any_db, CustomerProfile(id="o1", contacts=[ContactIn(channel="email", address="o1b@x.org")]))
    assert await _reach(any_db, "o1", "email") == "no consent"


async def test_a_merge_keeps_the_opt_out_over_an_implied_yes_and_survives_naive_times(any_db: Database) -> None:
    bought = datetime(2026, 1, 5, tzinfo=UTC)
    await upsert_customer(
        any_db,
        CustomerProfile(
            id="m1",
            last_purchase_at=bought,
            contacts=[ContactIn(channel="email", address="m@example.com", consent=False)],
        ),
    )
    async with any_db.session() as session:
        session.add(JourneyRun(workflow_id="journey/cart/m2", run_id="r1", journey="cart", customer_id="m2"))
        session.add(Customer(id="m2", last_purchase_at=bought + timedelta(days=3)))
    # A guest profile with the same address and only an implied opt-in, bought later.
    result = await upsert_customer(
        any_db,
        CustomerProfile(
            id="m2",
            last_purchase_at=bought + timedelta(days=3),
            contacts=[ContactIn(channel="email", address="m@example.com")],
        ),
    )
    assert result.customer_id == "m1" and result.merged == ["m2"]
    assert await _reach(any_db, "m1", "email") == "no consent"
    async with any_db.session() as session:
        survivor = await session.get(Customer, "m1")
        run = (await session.exec(select(JourneyRun))).one()
    assert survivor is not None and survivor.last_purchase_at is not None
    assert survivor.last_purchase_at.replace(tzinfo=UTC) == bought + timedelta(days=3)
    # Events for the absorbed profile's running journeys now find them under the survivor.
    assert run.customer_id == "m1"


async def test_the_surviving_customer_follows_merges_to_the_end(any_db: Database) -> None:
    async with any_db.session() as session:
        session.add(Customer(id="end"))
        session.add(Customer(id="mid", merged_into="end"))
        session.add(Customer(id="first", merged_into="mid"))
        a, b = Customer(id="loop-a"), Customer(id="loop-b")
        session.add_all([a, b])
        await session.flush()
        a.merged_into, b.merged_into = "loop-b", "loop-a"
    async with any_db.session() as session:
        found = {
            cid: (c.id if c else None)
            for cid in ("first", "mid", "end", "loop-a", "unknown")
            for c in [await surviving_customer(session, cid)]
        }
    # As resolve_customer_id then a look-up did: a cycle stops at the last profile before it repeats.
    assert found == {"first": "end", "mid": "end", "end": "end", "loop-a": "loop-b", "unknown": None}
