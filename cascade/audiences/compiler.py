"""Segments compiled to one SQL query (SQLAlchemy Core) that runs on SQLite and PostgreSQL.

The rules of a segment become one WHERE clause over `customers`: profile tests compare
columns (or typed values of the `attributes` JSON), an event count or sum is one grouped
subquery over `engagement_events` (GROUP BY customer_id HAVING ...) the database joins to
the customers, "any event" / "no event" are EXISTS / NOT EXISTS (semi / anti joins), all
read from the indexes on (type, customer, time) and (type, time, customer). A count of
one event type against a small threshold ("at least 2 purchases in 365 days", "none in
90") reads `event_recency` instead: the n-th latest event's time decides it, one row per
customer instead of every event in the window,
reachability is an EXISTS over `contact_points` and `consents`, and another segment is
inlined. No customer is ever loaded into Python to be filtered.

Every leaf is two-valued (never NULL), so `not` means exactly "the rule does not hold",
with the same treatment of a missing value as a journey's entry conditions: it fails
every test except `missing`, `ne`, `not_in` and `older_than` ("never bought" counts as
long ago).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Date,
    DateTime,
    Dialect,
    Float,
    Integer,
    Select,
    Table,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from cascade.audiences.definition import (
    PROPERTY_PATTERN,
    AllRule,
    AnyRule,
    EventRule,
    LoadedSegment,
    NotRule,
    ReachableRule,
    SegmentCatalog,
    SegmentDefinitionError,
    SegmentRef,
    describe,
)
from models.journey import Condition
from models.tables import (
    RECENCY_DEPTH,
    Consent,
    ContactPoint,
    ContactStatus,
    Customer,
    EngagementEvent,
    EventRecency,
    Topic,
)

CUSTOMERS: Table = SQLModel.metadata.tables[Customer.__tablename__]
EVENTS: Table = SQLModel.metadata.tables[EngagementEvent.__tablename__]
CONTACTS: Table = SQLModel.metadata.tables[ContactPoint.__tablename__]
CONSENTS: Table = SQLModel.metadata.tables[Consent.__tablename__]
RECENCY: Table = SQLModel.metadata.tables[EventRecency.__tablename__]

# Columns a rule may not name: the JSON bag is addressed by attribute, and merged or
# erased profiles are never members anyway.
_HIDDEN = {"attributes", "merged_into", "erased_at"}
_TIME_OPS = ("older_than", "within")
_ORDER_OPS = ("gt", "gte", "lt", "lte")
Loc = tuple[int | str, ...]


class SegmentRuleError(ValueError):
    """A rule that cannot be compiled; `loc` is its field path inside the segment's file."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


# json_type() names in SQLite, json_typeof() names in PostgreSQL, per kind of value.
_SQLITE_TYPES = {"number": ("integer", "real"), "string": ("text",), "bool": ("true", "false")}
_PG_TYPES = {"number": ("number",), "string": ("string",), "bool": ("boolean",)}


# Profile columns some writer changes without stamping `updated_at` (loyalty accruals,
# the preference centre's preferred channel): a corrected count cannot find who changed
# them since a refresh, so a segment testing one is always counted by its query.
UNSTAMPED_COLUMNS = frozenset({"loyalty_points", "preferred_channel"})


@dataclass(frozen=True)
class EventEdge:
    """An event rule's events: of `types` (on `channel`), counted while at most `within` old
    (None: ever); they leave the window `within` after they occurred."""

    types: tuple[str, ...]
    channel: str | None
    within: timedelta | None

    def filters(self) -> list[ColumnElement[bool]]:
        """The events' type (and channel) tests: the rule's subquery and a corrected count's
        search for changed customers read the same events."""
        tests = [EVENTS.c.type.in_(self.types) if len(self.types) > 1 else EVENTS.c.type == self.types[0]]
        if self.channel is not None:
            tests.append(EVENTS.c.channel == self.channel)
        return tests


@dataclass(frozen=True)
class ColumnEdge:
    """A time test on a profile column (`within` / `older_than` `seconds`)."""

    column: str
    seconds: float
    is_date: bool


@dataclass
class Edges:
    """What can change a segment's verdict on a customer without a write to that customer's
    profile or events: the windows its rules measure from `now`, and whether it reads
    reachability (contact points, consents). `bounded` is false when a rule depends on
    something a change of which leaves no trace a corrected count could find."""

    events: list[EventEdge] = field(default_factory=list)
    columns: list[ColumnEdge] = field(default_factory=list)
    reachable: bool = False
    bounded: bool = True


class _Compiler:
    """One compilation: the dialect, the moment windows are measured from, the catalog."""

    def __init__(
        self,
        catalog: SegmentCatalog,
        dialect: str,
        now: datetime,
        customer_id: str | None = None,
        scope: Select[Any] | None = None,
    ) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"segments compile for sqlite or postgresql, not {dialect!r}")
        self.catalog = catalog
        self.pg = dialect == "postgresql"
        self.now = now.astimezone(UTC)
        self.customer_id = customer_id
        # A SELECT of customer ids: every event subquery reads only their events.
        self.scope = scope
        self.edges = Edges()

    # --- rules ----------------------------------------------------------------------

    def segment(self, name: str, stack: tuple[str, ...]) -> ColumnElement[bool]:
        """Segment `name`'s rules; errors carry locations inside its own file."""
        if name in stack:
            raise SegmentRuleError((), "segments refer to each other in a circle: " + " -> ".join([*stack, name]))
        try:
            loaded = self.catalog.get(name)
        except KeyError as exc:
            raise SegmentRuleError((), str(exc.args[0])) from None
        inner = (*stack, name)
        return and_(*[self.rule(r, ("where", i), inner) for i, r in enumerate(loaded.spec.where)])

    def rule(self, rule: Any, loc: Loc, stack: tuple[str, ...]) -> ColumnElement[bool]:
        if isinstance(rule, Condition):
            return self.condition(rule, loc)
        if isinstance(rule, EventRule):
            return self.events(rule)
        if isinstance(rule, ReachableRule):
            return self.reachable(rule)
        if isinstance(rule, SegmentRef):
            try:
                return self.segment(rule.segment, stack)
            except SegmentRuleError as exc:
                if len(stack) > 1:
                    raise
                # The outermost reference is the place in this file that pulls the problem in.
                raise SegmentRuleError((*loc, "segment"), exc.message) from None
        if isinstance(rule, AllRule):
            return and_(*[self.rule(r, (*loc, "all", i), stack) for i, r in enumerate(rule.all)])
        if isinstance(rule, AnyRule):
            return or_(*[self.rule(r, (*loc, "any", i), stack) for i, r in enumerate(rule.any)])
        if isinstance(rule, NotRule):
            return not_(self.rule(rule.not_, (*loc, "not"), stack))
        raise SegmentRuleError(loc, f"unknown rule {type(rule).__name__}")

    # --- profile tests ----------------------------------------------------------------

    def condition(self, cond: Condition, loc: Loc) -> ColumnElement[bool]:
        name = cond.field
        if name.startswith("event."):
            raise SegmentRuleError(
                (*loc, "field"), "a segment has no triggering event: test events with an `event:` rule"
            )
        column = CUSTOMERS.c.get(name)
        if column is not None and name not in _HIDDEN:
            return self.column_test(column, cond, loc)
        key = name.removeprefix("attributes.")
        if not _is_property(key):
            fields = ", ".join(sorted(c.name for c in CUSTOMERS.c if c.name not in _HIDDEN))
            raise SegmentRuleError(
                (*loc, "field"),
                f"unknown field {name!r}: a profile field ({fields}) or a custom attribute (attributes.<name>)",
            )
        return self.attribute_test(key, cond, loc)

    def column_test(self, column: Column[Any], cond: Condition, loc: Loc) -> ColumnElement[bool]:
        # A decorated column type (UTCDateTime) is judged by the type it stores as.
        kind = column.type.impl_instance if isinstance(column.type, TypeDecorator) else column.type
        op, value = cond.op, cond.value
        if op == "exists":
            return column.is_not(None)
        if op == "missing":
            return column.is_(None)
        if column.name in UNSTAMPED_COLUMNS:
            self.edges.bounded = False
        if isinstance(kind, DateTime | Date):
            if op not in _TIME_OPS:
                raise SegmentRuleError(
                    (*loc, "op"), f"{column.name} is a time: use older_than, within, exists or missing"
                )
            is_date = isinstance(kind, Date) and not isinstance(kind, DateTime)
            self.edges.columns.append(ColumnEdge(column.name, float(value), is_date))
            return _timed(column, op, time_cutoff(self.now, float(value), is_date))
        if op in _TIME_OPS:
            raise SegmentRuleError((*loc, "op"), f"{op} needs a time field such as last_purchase_at or created_at")
        if isinstance(kind, JSON):
            if op != "contains":
                raise SegmentRuleError((*loc, "op"), f"{column.name} is a list: use contains, exists or missing")
            return self.list_contains(column, value)
        expected = "number" if isinstance(kind, Integer | Float) else "string"
        _check_values(cond, expected, loc)
        if op == "contains":
            if expected != "string":
                raise SegmentRuleError((*loc, "op"), f"contains needs a text or list field, {column.name} is a number")
            return and_(column.is_not(None), column.contains(value, autoescape=True))
        return _compare(column, op, value)

    def attribute_test(self, key: str, cond: Condition, loc: Loc) -> ColumnElement[bool]:
        bag = CUSTOMERS.c.attributes
        op, value = cond.op, cond.value
        type_name = self.json_type(bag, key)
        if op in ("exists", "missing"):
            present = func.coalesce(type_name, "null") != "null"
            return present if op == "exists" else not_(present)
        if op in _TIME_OPS:
            raise SegmentRuleError(
                (*loc, "op"), f"{op} works on the profile's time fields (created_at, last_purchase_at, updated_at)"
            )
        if op == "contains":
            text = self.typed(bag, key, "string")
            return or_(
                and_(text.is_not(None), text.contains(str(value), autoescape=True)),
                self.list_contains(bag, value, key),
            )
        kinds = {_json_kind(v) for v in (value if isinstance(value, list) else [value])}
        if len(kinds) != 1 or not kinds <= set(_SQLITE_TYPES):
            raise SegmentRuleError((*loc, "value"), "needs numbers, texts or true/false (one kind, not mixed)")
        if op in _ORDER_OPS and kinds == {"bool"}:
            raise SegmentRuleError((*loc, "op"), f"{op} needs a number or a text")
        return _compare(self.typed(bag, key, kinds.pop()), op, value)

    # --- JSON, per dialect ---------------------------------------------------------------

    def json_type(self, column: Column[Any], key: str) -> ColumnElement[str]:
        if self.pg:
            return func.json_typeof(column[key])
        return func.json_type(column, f"$.{key}")

    def typed(self, column: Column[Any], key: str, kind: str) -> ColumnElement[Any]:
        """The JSON value at `key` when it is of `kind`, else NULL (never a cast error)."""
        names = (_PG_TYPES if self.pg else _SQLITE_TYPES)[kind]
        element = column[key]
        value: ColumnElement[Any] = {
            "number": element.as_float,
            "string": element.as_string,
            "bool": element.as_boolean,
        }[kind]()
        # CASE, not AND: PostgreSQL may evaluate either side of an AND first, and a cast
        # of a text to a number fails the whole query.
        return case((self.json_type(column, key).in_(names), value), else_=None)

    def list_contains(self, column: Column[Any], value: Any, key: str | None = None) -> ColumnElement[bool]:
        if self.pg:
            target = column[key] if key is not None else column
            return func.coalesce(sql_cast(target, JSONB).contains([value]), false())
        items = (func.json_each(column, f"$.{key}") if key is not None else func.json_each(column)).table_valued(
            "value", "type"
        )
        return exists(select(literal(1)).select_from(items).where(items.c.type != "object", items.c.value == value))

    # --- behaviour ---------------------------------------------------------------------

    def events(self, rule: EventRule) -> ColumnElement[bool]:
        """A count or sum rule as one grouped subquery, "any" / "none" as a semi / anti join.

        The subquery reads the events of the rule's type(s) once, from an index range
        (type, then customer or time; migration 0012), and groups them by customer: the
        database joins its result to the customers instead of probing the events once per
        customer. When the rule holds for a customer without events (`eq 0`, `lt 2`, a sum
        below a threshold), the subquery selects the complement (the customers it does
        not hold for) and the rule becomes NOT EXISTS of it: an anti join.
        """
        edge = EventEdge(tuple(rule.types), rule.channel.value if rule.channel is not None else None, rule.within)
        self.edges.events.append(edge)
        where = edge.filters()
        if rule.within is not None:
            where.append(EVENTS.c.occurred_at >= self.now - rule.within)
        if self.customer_id is not None:
            # One customer (the event path): the subquery reads that customer's index range only.
            where.append(EVENTS.c.customer_id == self.customer_id)
        if self.scope is not None:
            # A few customers (a corrected count): their index ranges, not the whole window.
            where.append(EVENTS.c.customer_id.in_(self.scope))
        holds = _predicate(rule.op, rule.value)
        if rule.sum is None and len(rule.types) == 1 and self.customer_id is None:
            step = _count_step(holds)
            if step is not None:
                return self.recent(rule, *step)
        if rule.sum is None:
            # "At least one" and "none" need no count: (NOT) EXISTS stops at the first index hit.
            some = exists(select(literal(1)).where(EVENTS.c.customer_id == CUSTOMERS.c.id, *where))
            if not holds(0) and holds(1) and holds(10**12):
                return some
            if holds(0) and not holds(1) and not holds(10**12):
                return not_(some)
            measure: ColumnElement[Any] = func.count()
        else:
            # `amount` is a typed column (the same JSON number, computed by the database;
            # migration 0014) in the (type, customer, time) index: the sum reads no JSON.
            if rule.sum == "amount":
                amount: ColumnElement[Any] = EVENTS.c.amount
            else:
                amount = self.typed(EVENTS.c.properties, rule.sum, "number")
            measure = func.coalesce(func.sum(amount), 0.0)
        # A customer without events has a count (or sum) of 0: if the rule holds for 0, it
        # holds for everyone except the customers whose events make it fail.
        threshold: float = rule.value
        if rule.sum is None and float(threshold).is_integer():
            # A count against an integer: 2.0 would make PostgreSQL cast every group's
            # count to numeric to compare it.
            threshold = int(threshold)
        test = _compare(measure, rule.op, threshold, nullable=False)
        complement = holds(0)
        grouped = (
            select(EVENTS.c.customer_id)
            .where(EVENTS.c.customer_id.is_not(None), *where)
            .group_by(EVENTS.c.customer_id)
            .having(not_(test) if complement else test)
        )
        found: ColumnElement[bool]
        if self.pg:
            # EXISTS over the grouped rows, not `id IN (...)`: PostgreSQL turns it into a
            # hash (anti) join that spills to disk when big, where a NOT IN or an IN under
            # OR/NOT becomes a subplan that rescans the subquery's rows per customer once
            # they outgrow work_mem.
            rows = grouped.subquery()
            found = exists(select(literal(1)).select_from(rows).where(rows.c.customer_id == CUSTOMERS.c.id))
        else:
            # SQLite runs a non-correlated IN once into a temporary index, where it would
            # rebuild an EXISTS's grouped rows for every customer.
            found = CUSTOMERS.c.id.in_(grouped)
        return not_(found) if complement else found

    def recent(self, rule: EventRule, n: int, at_least: bool) -> ColumnElement[bool]:
        """ "At least n" (or "fewer than n") events in the window: is the n-th latest in it?

        One `event_recency` row per customer answers it, where counting reads every
        event in the window. Whole-base queries only: the event path's one-customer check
        reads that customer's few events directly.
        """
        tests: list[ColumnElement[bool]] = [
            RECENCY.c.customer_id == CUSTOMERS.c.id,
            RECENCY.c.type == rule.types[0],
            RECENCY.c.channel == (rule.channel.value if rule.channel is not None else ""),
            RECENCY.c.rank == n,
        ]
        if rule.within is not None:
            tests.append(RECENCY.c.occurred_at >= self.now - rule.within)
        found = exists(select(literal(1)).where(*tests))
        return found if at_least else not_(found)

    def reachable(self, rule: ReachableRule) -> ColumnElement[bool]:
        self.edges.reachable = True
        where: list[ColumnElement[bool]] = [
            CONTACTS.c.customer_id == CUSTOMERS.c.id,
            CONTACTS.c.channel.in_(rule.channels),
            CONTACTS.c.status == ContactStatus.VALID.value,
        ]
        if rule.topic == Topic.MARKETING:
            # No consent row means no marketing (see models.tables.Consent).
            where.append(
                exists(
                    select(literal(1)).where(
                        CONSENTS.c.customer_id == CONTACTS.c.customer_id,
                        CONSENTS.c.channel == CONTACTS.c.channel,
                        CONSENTS.c.topic == Topic.MARKETING.value,
                        CONSENTS.c.granted == true(),
                    )
                )
            )
        else:
            # Transactional needs no consent, only the absence of a refusal.
            where.append(
                not_(
                    exists(
                        select(literal(1)).where(
                            CONSENTS.c.customer_id == CONTACTS.c.customer_id,
                            CONSENTS.c.channel == CONTACTS.c.channel,
                            CONSENTS.c.topic == rule.topic.value,
                            CONSENTS.c.granted == false(),
                        )
                    )
                )
            )
        return exists(select(literal(1)).where(*where))


def _is_property(name: str) -> bool:
    return re.match(PROPERTY_PATTERN, name) is not None


def _predicate(op: str, threshold: float) -> Callable[[float], bool]:
    return {
        "eq": lambda n: n == threshold,
        "ne": lambda n: n != threshold,
        "gt": lambda n: n > threshold,
        "gte": lambda n: n >= threshold,
        "lt": lambda n: n < threshold,
        "lte": lambda n: n <= threshold,
    }[op]


def _count_step(holds: Callable[[float], bool]) -> tuple[int, bool] | None:
    """(n, True) when a count rule means "at least n", (n, False) when "fewer than n", for
    1 <= n <= RECENCY_DEPTH (what `event_recency` can answer); else None."""
    points = [*range(RECENCY_DEPTH + 2), 10**12]
    for n in range(1, RECENCY_DEPTH + 1):
        if all(holds(c) == (c >= n) for c in points):
            return n, True
        if all(holds(c) == (c < n) for c in points):
            return n, False
    return None


def time_cutoff(now: datetime, seconds: float, is_date: bool) -> Any:
    """The moment (or day, for a date column) a `within` / `older_than` test measures from."""
    cutoff = now - timedelta(seconds=seconds)
    return cutoff.date() if is_date else cutoff


def _timed(column: Column[Any], op: str, cutoff: Any) -> ColumnElement[bool]:
    if op == "older_than":
        # Never happened counts as long ago (a win-back test holds for a non-buyer).
        return or_(column.is_(None), column < cutoff)
    return and_(column.is_not(None), column >= cutoff)


def _compare(value: ColumnElement[Any], op: str, target: Any, *, nullable: bool = True) -> ColumnElement[bool]:
    """`value <op> target`, false (not NULL) when value is NULL except for ne / not_in.

    A count or coalesced sum is never NULL (`nullable=False`): no guard, so the subquery
    appears once in the statement.
    """
    match op:
        case "eq":
            test = value == target
        case "ne":
            return or_(value.is_(None), value != target) if nullable else value != target
        case "gt":
            test = value > target
        case "gte":
            test = value >= target
        case "lt":
            test = value < target
        case "lte":
            test = value <= target
        case "in":
            test = value.in_(target)
        case "not_in":
            return or_(value.is_(None), value.not_in(target))
        case _:
            raise ValueError(f"unsupported operator {op!r}")
    return and_(value.is_not(None), test) if nullable else test


def _check_values(cond: Condition, expected: str, loc: Loc) -> None:
    values: Sequence[Any] = cond.value if isinstance(cond.value, list) else [cond.value]
    if cond.op in ("in", "not_in") and not values:
        raise SegmentRuleError((*loc, "value"), f"{cond.op} needs at least one value")
    for v in values:
        if _json_kind(v) != expected:
            raise SegmentRuleError((*loc, "value"), f"{cond.field} is a {expected}: {v!r} is not")


def segment_condition(
    catalog: SegmentCatalog,
    name: str,
    *,
    dialect: str,
    now: datetime,
    customer_id: str | None = None,
    scope: Select[Any] | None = None,
) -> ColumnElement[bool]:
    """The WHERE clause (over `customers`) of segment `name`, windows measured from `now`.

    With `customer_id`, the clause is for that one customer (the event path asks "is this
    customer a member?"): the event subqueries read only that customer's events. With
    `scope` (a SELECT of customer ids), for those customers: the event subqueries read only
    their events (the caller restricts the customers to the same ids).
    """
    compiler = _Compiler(catalog, dialect, now, customer_id, scope)
    only = [CUSTOMERS.c.id == customer_id] if customer_id is not None else []
    return and_(
        *only,
        CUSTOMERS.c.merged_into.is_(None),
        CUSTOMERS.c.erased_at.is_(None),
        compiler.segment(name, ()),
    )


def member_query(catalog: SegmentCatalog, name: str, *, dialect: str, now: datetime) -> Select[Any]:
    """SELECT the ids of segment `name`'s members (one query; order and page it as needed)."""
    return select(CUSTOMERS.c.id).where(segment_condition(catalog, name, dialect=dialect, now=now))


def segment_edges(catalog: SegmentCatalog, name: str) -> Edges:
    """Segment `name`'s windows and reads (segments it refers to included), for a corrected count."""
    compiler = _Compiler(catalog, "postgresql", _DIGEST_MOMENT)
    compiler.segment(name, ())
    return compiler.edges


def count_query(catalog: SegmentCatalog, name: str, *, dialect: str, now: datetime) -> Select[Any]:
    """SELECT count(*) of segment `name`'s members."""
    return select(func.count()).select_from(CUSTOMERS).where(segment_condition(catalog, name, dialect=dialect, now=now))


# Windows in a digest are measured from one fixed moment, so the digest changes with the
# rules only, never with the time it is taken at.
_DIGEST_MOMENT = datetime(2000, 1, 1, tzinfo=UTC)


def definition_digest(catalog: SegmentCatalog, name: str, *, dialect: Dialect) -> str:
    """A digest of segment `name`'s compiled count for `dialect` (the database's engine's).

    It changes when anything that decides membership changes: the segment's rules, a
    segment it refers to (inlined), a threshold setting, or what the compiler makes of
    them. Memberships recorded under another digest are stale (`segment_refreshes`).
    """
    compiled = count_query(catalog, name, dialect=dialect.name, now=_DIGEST_MOMENT).compile(dialect=dialect)
    params = sorted((key, repr(value)) for key, value in compiled.params.items())
    return hashlib.sha256(f"{compiled.string}\n{params!r}".encode()).hexdigest()


def check_segment(catalog: SegmentCatalog, loaded: LoadedSegment) -> None:
    """Compile one segment for both databases; a SegmentDefinitionError with file/field/line if it fails."""
    for dialect in ("sqlite", "postgresql"):
        try:
            _Compiler(catalog, dialect, datetime.now(UTC)).segment(loaded.spec.name, ())
        except SegmentRuleError as exc:
            raise SegmentDefinitionError(describe(loaded.source, exc.loc, exc.message, loaded.tree)) from exc


def check_catalog(catalog: SegmentCatalog) -> None:
    """Check every segment of the catalog; all problems are reported together."""
    errors = []
    for name in catalog.names():
        try:
            check_segment(catalog, catalog.segments[name])
        except SegmentDefinitionError as exc:
            errors.append(str(exc))
    if errors:
        raise SegmentDefinitionError("\n".join(errors))


__all__ = [
    "ColumnEdge",
    "Edges",
    "EventEdge",
    "SegmentRuleError",
    "check_catalog",
    "check_segment",
    "count_query",
    "definition_digest",
    "member_query",
    "segment_condition",
    "segment_edges",
    "time_cutoff",
]
