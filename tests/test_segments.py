"""Segments: every operator compiled to one query and run on SQLite and PostgreSQL against
hand-made customers; the built-in funnel; errors naming file, field and line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, select

from cascade.audiences.compiler import CONSENTS, CONTACTS, CUSTOMERS, EVENTS, member_query, segment_condition
from cascade.audiences.definition import SegmentCatalog, SegmentDefinitionError
from cascade.audiences.service import all_members, count_customers, count_members, load_segments, member_page
from cascade.events.recency import rebuild_event_recency
from cascade.infra.db import Database
from cascade.infra.settings import Settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PEOPLE = {"ann", "bob", "cat", "dan"}


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


async def _people(db: Database) -> None:
    """Four live customers, one merged and one erased (never members of anything)."""
    customers: list[dict[str, Any]] = [
        {
            "id": "ann",
            "city": "Berlin",
            "purchase_count": 5,
            "last_purchase_at": ago(10),
            "created_at": ago(400),
            "favourite_categories": ["shoes", "bags"],
            "attributes": {"shoe_size": 42, "vip": True, "tier": "gold", "tags": ["a", "b"]},
        },
        {
            "id": "bob",
            "city": "Paris",
            "purchase_count": 1,
            "last_purchase_at": ago(200),
            "created_at": ago(500),
            "attributes": {"shoe_size": "big"},
        },
        {"id": "cat", "city": None, "purchase_count": 0, "created_at": ago(5), "attributes": {}},
        {
            "id": "dan",
            "city": "Berlin",
            "purchase_count": 2,
            "last_purchase_at": ago(370),
            "created_at": ago(800),
            "attributes": {"tier": "silver"},
        },
        {"id": "eve", "city": "Berlin", "purchase_count": 9, "last_purchase_at": ago(1), "merged_into": "ann"},
        {"id": "fay", "city": "Berlin", "purchase_count": 9, "last_purchase_at": ago(1), "erased_at": ago(1)},
    ]
    defaults = {
        "timezone": "UTC",
        "children_ages": [],
        "favourite_categories": [],
        "loyalty_points": 0,
        "attributes": {},
        "created_at": ago(100),
        "last_purchase_at": None,
        "merged_into": None,
        "erased_at": None,
    }
    events = [
        ("ann", "purchase", None, 80, {"amount": 100}),
        ("ann", "purchase", None, 40, {"amount": 150}),
        ("ann", "purchase", None, 10, {"amount": 200}),
        ("ann", "opened", "email", 5, {}),
        ("bob", "purchase", None, 200, {"amount": 50}),
        ("bob", "clicked", "sms", 20, {}),
        ("bob", "opened", "email", 60, {}),
        ("dan", "purchase", None, 380, {"amount": 10}),
        ("dan", "purchase", None, 370, {"amount": "ten"}),
        ("eve", "purchase", None, 1, {"amount": 999}),
    ]
    contacts = [
        ("ann", "telegram", "111", "valid"),
        ("bob", "telegram", "222", "valid"),
        ("bob", "sms", "+4915100000001", "valid"),
        ("cat", "email", "cat@example.com", "bounced"),
        ("dan", "email", "dan@example.com", "valid"),
    ]
    consents = [("ann", "telegram", True), ("bob", "sms", True), ("cat", "email", True), ("bob", "telegram", False)]
    async with db.engine.begin() as conn:
        # Merged profiles point at their survivor: insert that one first.
        for row in sorted(customers, key=lambda r: "merged_into" in r):
            await conn.execute(insert(CUSTOMERS).values({**defaults, **row}))
        for i, (cid, kind, channel, days, props) in enumerate(events):
            await conn.execute(
                insert(EVENTS).values(
                    event_id=f"e{i}",
                    customer_id=cid,
                    type=kind,
                    channel=channel,
                    occurred_at=ago(days),
                    properties=props,
                    source="test",
                    received_at=NOW,
                )
            )
        # Raw inserts skip the event path that keeps event_recency (tests/test_event_recency.py).
        await rebuild_event_recency(conn)
        for cid, channel, address, status in contacts:
            await conn.execute(
                insert(CONTACTS).values(
                    customer_id=cid, channel=channel, address=address, status=status, created_at=NOW
                )
            )
        for cid, channel, granted in consents:
            await conn.execute(
                insert(CONSENTS).values(
                    customer_id=cid, channel=channel, topic="marketing", granted=granted, changed_at=NOW
                )
            )


@pytest.fixture
async def people(any_db: Database) -> AsyncIterator[Database]:
    await _people(any_db)
    yield any_db


def _write(folder: Path, name: str, where: list[Any] | str) -> Path:
    path = folder / f"{name}.yaml"
    text = where if isinstance(where, str) else yaml.safe_dump({"name": name, "where": where}, sort_keys=False)
    path.write_text(text)
    return path


# Each rule, and exactly who of ann, bob, cat, dan it selects at NOW.
CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("eq", {"field": "city", "op": "eq", "value": "Berlin"}, {"ann", "dan"}),
    ("ne counts a missing value", {"field": "city", "op": "ne", "value": "Berlin"}, {"bob", "cat"}),
    ("gt", {"field": "purchase_count", "op": "gt", "value": 1}, {"ann", "dan"}),
    ("gte", {"field": "purchase_count", "op": "gte", "value": 1}, {"ann", "bob", "dan"}),
    ("lt", {"field": "purchase_count", "op": "lt", "value": 1}, {"cat"}),
    ("lte", {"field": "purchase_count", "op": "lte", "value": 1}, {"bob", "cat"}),
    ("in", {"field": "city", "op": "in", "value": ["Paris", "Rome"]}, {"bob"}),
    ("not_in", {"field": "city", "op": "not_in", "value": ["Paris"]}, {"ann", "cat", "dan"}),
    ("exists", {"field": "city", "op": "exists"}, {"ann", "bob", "dan"}),
    ("missing", {"field": "city", "op": "missing"}, {"cat"}),
    ("contains text", {"field": "city", "op": "contains", "value": "erl"}, {"ann", "dan"}),
    ("contains list", {"field": "favourite_categories", "op": "contains", "value": "shoes"}, {"ann"}),
    (
        "older_than (never = long ago)",
        {"field": "last_purchase_at", "op": "older_than", "value": "180d"},
        {"bob", "cat", "dan"},
    ),
    ("within", {"field": "last_purchase_at", "op": "within", "value": "30d"}, {"ann"}),
    ("within on created_at", {"field": "created_at", "op": "within", "value": "30d"}, {"cat"}),
    ("attribute number skips texts", {"field": "attributes.shoe_size", "op": "gte", "value": 40}, {"ann"}),
    ("attribute text", {"field": "shoe_size", "op": "eq", "value": "big"}, {"bob"}),
    ("attribute bool", {"field": "attributes.vip", "op": "eq", "value": True}, {"ann"}),
    ("attribute in", {"field": "attributes.tier", "op": "in", "value": ["gold", "silver"]}, {"ann", "dan"}),
    ("attribute ne", {"field": "attributes.tier", "op": "ne", "value": "gold"}, {"bob", "cat", "dan"}),
    ("attribute list contains", {"field": "attributes.tags", "op": "contains", "value": "a"}, {"ann"}),
    ("attribute text contains", {"field": "attributes.tier", "op": "contains", "value": "ilv"}, {"dan"}),
    ("attribute missing", {"field": "attributes.tier", "op": "missing"}, {"bob", "cat"}),
    ("events counted in a window", {"event": "purchase", "within": "90d", "op": "gte", "value": 2}, {"ann"}),
    (
        "events summed in a window",
        {"event": "purchase", "within": "365d", "sum": "amount", "op": "gt", "value": 300},
        {"ann"},
    ),
    (
        "sum ever, non-numbers ignored",
        {"event": "purchase", "sum": "amount", "op": "gte", "value": 10},
        {"ann", "bob", "dan"},
    ),
    ("sum of nothing is 0", {"event": "purchase", "sum": "amount", "op": "eq", "value": 0}, {"cat"}),
    ("any open of an email in 30 days", {"event": "opened", "channel": "email", "within": "30d"}, {"ann"}),
    ("never clicked an SMS", {"event": "clicked", "channel": "sms", "op": "eq", "value": 0}, {"ann", "cat", "dan"}),
    ("several types", {"event": ["purchase", "opened"], "within": "30d"}, {"ann"}),
    ("fewer than two ever", {"event": "purchase", "op": "lt", "value": 2}, {"bob", "cat"}),
    ("exactly two", {"event": "purchase", "op": "eq", "value": 2}, {"dan"}),
    ("reachable needs consent", {"reachable": "telegram"}, {"ann"}),
    ("reachable on any of", {"reachable": ["telegram", "sms"]}, {"ann", "bob"}),
    ("bounced or unconsented email is not reachable", {"reachable": "email"}, set()),
    ("transactional needs no consent", {"reachable": "email", "topic": "transactional"}, {"dan"}),
    (
        "any",
        {"any": [{"field": "city", "op": "eq", "value": "Paris"}, {"field": "purchase_count", "op": "eq", "value": 0}]},
        {"bob", "cat"},
    ),
    (
        "all",
        {"all": [{"field": "city", "op": "eq", "value": "Berlin"}, {"event": "purchase", "within": "90d"}]},
        {"ann"},
    ),
    ("not of a test on a missing value", {"not": {"field": "city", "op": "eq", "value": "Berlin"}}, {"bob", "cat"}),
    ("another segment", {"segment": "berliners"}, {"ann", "dan"}),
    ("not another segment", {"not": {"segment": "berliners"}}, {"bob", "cat"}),
    # Rules that hold for a customer without events compile to the complement (NOT EXISTS).
    (
        "a sum below a threshold holds without events",
        {"event": "purchase", "within": "365d", "sum": "amount", "op": "lt", "value": 100},
        {"bob", "cat", "dan"},
    ),
    ("count ne", {"event": "purchase", "op": "ne", "value": 1}, {"ann", "cat", "dan"}),
    ("count lte in a window", {"event": "purchase", "within": "90d", "op": "lte", "value": 1}, {"bob", "cat", "dan"}),
    ("not of a count", {"not": {"event": "purchase", "op": "gte", "value": 2}}, {"bob", "cat"}),
    (
        "a count under any",
        {
            "any": [
                {"event": "purchase", "within": "90d", "op": "gte", "value": 3},
                {"field": "city", "op": "eq", "value": "Paris"},
            ]
        },
        {"ann", "bob"},
    ),
    (
        "not of a sum that holds for nothing bought",
        {"not": {"event": "purchase", "within": "365d", "sum": "amount", "op": "lt", "value": 100}},
        {"ann"},
    ),
]


def case_catalog(tmp_path: Path) -> SegmentCatalog:
    """A catalog of one segment per operator case (`case0`, `case1`, ...), and `berliners`
    that some cases refer to."""
    folder = tmp_path / "segments"
    folder.mkdir()
    _write(folder, "berliners", [{"field": "city", "op": "eq", "value": "Berlin"}])
    for i, (_, rule, _) in enumerate(CASES):
        _write(folder, f"case{i}", [rule])
    return load_segments(Settings(), folder)


@pytest.mark.postgres
async def test_every_operator_selects_exactly_the_expected_customers(people: Database, tmp_path: Path) -> None:
    catalog = case_catalog(tmp_path)
    failures = []
    for i, (label, _, expected) in enumerate(CASES):
        got = await all_members(people, catalog, f"case{i}", now=NOW)
        count = await count_members(people, catalog, f"case{i}", now=NOW)
        if got != expected or count != len(expected):
            failures.append(f"{label}: got {sorted(got)} (count {count}), expected {sorted(expected)}")
        # The event path asks about one customer: the same answer, from that customer's rows only.
        for person in ["eve", "fay", *sorted(PEOPLE)]:
            condition = segment_condition(
                catalog, f"case{i}", dialect=people.engine.dialect.name, now=NOW, customer_id=person
            )
            async with people.engine.connect() as conn:
                one = (await conn.execute(select(CUSTOMERS.c.id).where(condition))).all()
            if bool(one) != (person in expected):
                failures.append(f"{label}: {person} alone gives {bool(one)}")
    assert not failures, "\n".join(failures)
    assert await count_customers(people) == 4


@pytest.mark.postgres
async def test_the_builtin_funnel_places_each_customer(people: Database) -> None:
    catalog = load_segments(Settings(), Path("/nonexistent"))
    placed = {name: await all_members(people, catalog, name, now=NOW) for name in catalog.names()}
    assert placed == {
        "new": {"cat"},
        "loyal": {"ann"},
        "active": set(),
        "dormant": {"bob"},
        "churned": {"dan"},
    }
    # The thresholds come from the settings: a shorter active window makes ann dormant.
    strict = load_segments(Settings(segment_active_days=7), Path("/nonexistent"))
    assert await all_members(people, strict, "dormant", now=NOW) == {"ann", "bob"}
    assert await all_members(people, strict, "loyal", now=NOW) == set()
    # Time alone moves a customer: 100 days later ann is no longer loyal but dormant.
    later = NOW + timedelta(days=100)
    assert await all_members(people, catalog, "dormant", now=later) == {"ann", "bob"}


@pytest.mark.postgres
async def test_members_page_by_id_without_offset(people: Database, tmp_path: Path) -> None:
    folder = tmp_path / "segments"
    folder.mkdir()
    _write(folder, "everyone", [{"field": "purchase_count", "op": "gte", "value": 0}])
    catalog = load_segments(Settings(), folder)
    first = await member_page(people, catalog, "everyone", limit=3, now=NOW)
    rest = await member_page(people, catalog, "everyone", after=first[-1], limit=3, now=NOW)
    assert first == ["ann", "bob", "cat"]
    assert rest == ["dan"]


def _error(folder: Path) -> str:
    with pytest.raises(SegmentDefinitionError) as caught:
        load_segments(Settings(), folder)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: bad\nwhere:\n  - {field: city, op: eq, value: Berlin}\n  - {field: shoe.size, op: eq, value: 1}\n",
            "bad.yaml: where.1.field (line 4): unknown field 'shoe.size'",
        ),
        (
            "name: bad\nwhere:\n  - field: last_purchase_at\n    op: gt\n    value: 3\n",
            "bad.yaml: where.0.op (line 4): last_purchase_at is a time: use older_than, within",
        ),
        (
            "name: bad\nwhere:\n  - {field: purchase_count, op: eq, value: many}\n",
            "bad.yaml: where.0.value (line 3): purchase_count is a number: 'many' is not",
        ),
        (
            "name: bad\nwhere:\n  - any:\n      - {events: purchase}\n",
            "bad.yaml: where.0.any.0 (line 4): a rule needs one of the keys: field, event",
        ),
        (
            "name: bad\nwhere:\n  - event: purchase\n    within: soon\n",
            "bad.yaml: where.0.within (line 4):",
        ),
        (
            "name: bad\nwhere:\n  - not: {segment: nowhere}\n",
            "bad.yaml: where.0.not.segment (line 3): unknown segment 'nowhere'",
        ),
        (
            "name: bad\nwhere:\n  - {field: event.cart_value, op: gt, value: 1}\n",
            "bad.yaml: where.0.field (line 3): a segment has no triggering event",
        ),
        ("name: other\nwhere:\n  - {segment: loyal}\n", "bad.yaml: name (line 1): must match the file name ('bad')"),
        ("name: bad\nwhere: [\n", "bad.yaml: line 3 invalid YAML"),
    ],
)
def test_errors_name_file_field_and_line(tmp_path: Path, text: str, expected: str) -> None:
    _write(tmp_path, "bad", text)
    assert expected in _error(tmp_path)


def test_a_circle_of_segments_and_a_clash_with_a_builtin_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a", [{"segment": "b"}])
    _write(tmp_path, "b", [{"any": [{"segment": "a"}]}])
    message = _error(tmp_path)
    assert "a.yaml: where.0.segment (line 3): segments refer to each other in a circle: a -> b -> a" in message
    for p in tmp_path.glob("*.yaml"):
        p.unlink()
    _write(tmp_path, "loyal", [{"field": "city", "op": "eq", "value": "x"}])
    assert "loyal.yaml: name (line 1): 'loyal' is already defined (built-in)" in _error(tmp_path)


def test_the_shipped_segment_files_are_valid() -> None:
    catalog = load_segments(Settings())
    assert {"new", "active", "loyal", "dormant", "churned"} <= set(catalog.names())
    assert len(catalog.names()) > 5


def test_one_query_for_a_behavioural_segment() -> None:
    catalog = load_segments(Settings())
    name = next(n for n in catalog.names() if n not in ("new", "active", "loyal", "dormant", "churned"))
    sql = str(member_query(catalog, name, dialect="postgresql", now=NOW))
    assert sql.count("SELECT") >= 1 and sql.lstrip().startswith("SELECT customers.id")


@pytest.mark.postgres
async def test_the_typed_amount_is_the_json_number_through_merges_and_erasure(people: Database) -> None:
    """engagement_events.amount (migration 0014) is computed by the database from the JSON."""
    from cascade.profiles.privacy import erase_customer, pseudonym
    from cascade.profiles.service import merge_customers

    odd = {"x1": {"amount": 12}, "x2": {"amount": 12.5}, "x3": {"amount": "12"}, "x4": {"amount": True}}
    odd |= {"x5": {"amount": None}, "x6": {"price": 3}, "x7": {"amount": {"value": 4}}, "x8": {"amount": -2}}
    async with people.engine.begin() as conn:
        for event_id, props in odd.items():
            await conn.execute(
                insert(EVENTS).values(
                    event_id=event_id,
                    customer_id="bob",
                    type="purchase",
                    occurred_at=ago(3),
                    properties=props,
                    source="test",
                    received_at=NOW,
                )
            )

    async def amounts() -> dict[str, tuple[str | None, float | None]]:
        async with people.engine.connect() as conn:
            rows = await conn.execute(select(EVENTS.c.event_id, EVENTS.c.customer_id, EVENTS.c.amount))
            return {str(r[0]): (r[1], r[2]) for r in rows}

    got = await amounts()
    assert {k: got[k][1] for k in odd} == {
        "x1": 12,
        "x2": 12.5,
        "x3": None,
        "x4": None,
        "x5": None,
        "x6": None,
        "x7": None,
        "x8": -2,
    }
    assert got["e0"] == ("ann", 100) and got["e8"] == ("dan", None)  # "ten" is no number
    # A merge moves the events, amounts and all: the survivor's sums include them.
    async with people.session() as session:
        await merge_customers(session, "ann", "bob", reason="test")
    got = await amounts()
    assert got["x2"] == ("ann", 12.5) and got["e4"] == ("ann", 50)
    # Erasure blanks the properties under a pseudonym: the amount goes with them.
    await erase_customer(people, "ann")
    got = await amounts()
    erased = {k: v for k, v in got.items() if k != "e7" and k != "e8"}
    assert {amount for _, amount in erased.values()} == {None}
    assert {customer for customer, _ in erased.values()} == {pseudonym("ann")}
    assert got["e7"] == ("dan", 10) and got["e8"] == ("dan", None)


@pytest.mark.postgres
async def test_a_sum_of_the_typed_amount_equals_the_sum_of_the_same_json_property(
    people: Database, tmp_path: Path
) -> None:
    """`sum: amount` (typed column) and `sum: price` (JSON) over the same values: the same members."""
    values: list[Any] = [100, 0.5, "7", True, None, 250, -30, 1e3]
    async with people.engine.begin() as conn:
        for i, value in enumerate(values):
            customer = ["ann", "bob", "cat", "dan"][i % 4]
            await conn.execute(
                insert(EVENTS).values(
                    event_id=f"p{i}",
                    customer_id=customer,
                    type="order",
                    # Either side of the 30-day window's edge.
                    occurred_at=ago(30 + (0.001 if i % 2 else -0.001)),
                    properties={"amount": value, "price": value},
                    source="test",
                    received_at=NOW,
                )
            )
    folder = tmp_path / "segments"
    folder.mkdir()
    cases = [("gt", 50), ("lt", 10), ("eq", 0), ("gte", 100.5), ("ne", 0)]
    for i, (op, value) in enumerate(cases):
        for window in ("30d", "365d"):
            for prop in ("amount", "price"):
                rule = {"event": "order", "within": window, "sum": prop, "op": op, "value": value}
                _write(folder, f"s{i}_{window}_{prop}", [rule])
    catalog = load_segments(Settings(), folder)
    seen = set()
    for i in range(len(cases)):
        for window in ("30d", "365d"):
            typed = await all_members(people, catalog, f"s{i}_{window}_amount", now=NOW)
            parsed = await all_members(people, catalog, f"s{i}_{window}_price", now=NOW)
            assert typed == parsed, (cases[i], window)
            seen.add(frozenset(typed))
    assert len(seen) > 2  # the cases tell customers apart: the comparison is not vacuous
