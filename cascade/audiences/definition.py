"""Segment definitions: the YAML schema, loading with file/field/line errors, the built-in funnel.

A segment file (`segments/<name>.yaml`) names a set of customers by rules that all
must hold (`where`). A rule is one of:

- a profile test, the same as a journey `entry` condition: `{field: city, op: eq, value: Berlin}`
- an event test, counting or summing the customer's events in a window:
  `{event: purchase, within: 90d, op: gte, value: 2}` (default: at least one),
  `{event: purchase, within: 365d, sum: amount, op: gt, value: 300}`,
  `{event: opened, channel: email, within: 30d}`, `{event: clicked, channel: sms, op: eq, value: 0}`
- reachability: `{reachable: telegram}` (a valid address and marketing consent on the channel;
  a list means any of them; `topic: transactional` needs no consent)
- another segment: `{segment: loyal}`
- set operations: `{all: [...]}`, `{any: [...]}`, `{not: rule}`

The five funnel segments (new, active, loyal, dormant, churned) are built in, with their
thresholds in the settings (`CASCADE_SEGMENT_*`), and may be referenced by any file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from cascade.infra.settings import PROJECT_ROOT, Settings
from cascade.infra.yaml_source import compose_and_load, line_of
from models.journey import ChannelName, Condition, parse_duration
from models.tables import Topic

SEGMENTS_DIR = PROJECT_ROOT / "segments"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Event properties and custom attributes are addressed by plain names (no JSON path syntax).
PROPERTY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_TAG = "rule:"

Comparison = Literal["eq", "ne", "gt", "gte", "lt", "lte"]


class SegmentDefinitionError(ValueError):
    """A segment definition is invalid; the message names the file, the field and the line."""


class EventRule(BaseModel):
    """How many of the customer's events of a type (or their summed property) are in a window."""

    model_config = ConfigDict(extra="forbid")

    event: str | list[str] = Field(description="Event type(s): purchase, opened, clicked, page_viewed, ...")
    channel: ChannelName | None = Field(default=None, description="Only events on this channel (opens, clicks)")
    within: timedelta | None = Field(default=None, description="Only events this recent (default: ever)")
    sum: str | None = Field(default=None, pattern=PROPERTY_PATTERN, description="Sum this event property")
    op: Comparison = "gte"
    value: float = 1

    _parse_within = field_validator("within", mode="before")(parse_duration)

    @field_validator("event")
    @classmethod
    def _types_named(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not re.match(r"^[a-z0-9_.-]{1,32}$", n) for n in names):
            raise ValueError("event types are 1-32 characters of a-z, 0-9, _ . -")
        return value

    @field_validator("within")
    @classmethod
    def _within_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be positive (e.g. 30d)")
        return value

    @property
    def types(self) -> list[str]:
        """The event types as a list."""
        return [self.event] if isinstance(self.event, str) else list(self.event)


class ReachableRule(BaseModel):
    """The customer has a valid address on one of the channels, and may be sent `topic` there."""

    model_config = ConfigDict(extra="forbid")

    reachable: ChannelName | list[ChannelName]
    topic: Topic = Topic.MARKETING

    @property
    def channels(self) -> list[str]:
        """The channels as a list of names."""
        items = [self.reachable] if isinstance(self.reachable, ChannelName) else self.reachable
        return [c.value for c in items]


class SegmentRef(BaseModel):
    """Members of another segment (a file or a built-in)."""

    model_config = ConfigDict(extra="forbid")

    segment: str = Field(pattern=NAME_PATTERN)


class AllRule(BaseModel):
    """Every rule holds."""

    model_config = ConfigDict(extra="forbid")

    all: list[Rule] = Field(min_length=1)


class AnyRule(BaseModel):
    """At least one rule holds."""

    model_config = ConfigDict(extra="forbid")

    any: list[Rule] = Field(min_length=1)


class NotRule(BaseModel):
    """The rule does not hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    not_: Rule = Field(alias="not")


_KINDS = ("field", "event", "reachable", "segment", "all", "any", "not")


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        names = {
            Condition: "field",
            EventRule: "event",
            ReachableRule: "reachable",
            SegmentRef: "segment",
            AllRule: "all",
            AnyRule: "any",
            NotRule: "not",
        }
        kind = names.get(type(value))
        return None if kind is None else _TAG + kind
    if isinstance(value, dict):
        for kind in _KINDS:
            if kind in value:
                return _TAG + kind
    return None


Rule = Annotated[
    Annotated[Condition, Tag(_TAG + "field")]
    | Annotated[EventRule, Tag(_TAG + "event")]
    | Annotated[ReachableRule, Tag(_TAG + "reachable")]
    | Annotated[SegmentRef, Tag(_TAG + "segment")]
    | Annotated[AllRule, Tag(_TAG + "all")]
    | Annotated[AnyRule, Tag(_TAG + "any")]
    | Annotated[NotRule, Tag(_TAG + "not")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule_kind",
        custom_error_message="a rule needs one of the keys: " + ", ".join(_KINDS),
    ),
]

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


class SegmentSpec(BaseModel):
    """A named set of customers: everyone for whom every rule in `where` holds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    where: list[Rule] = Field(min_length=1)


@dataclass
class LoadedSegment:
    """A segment with where it came from: a file path (and its YAML tree, for lines) or built-in."""

    spec: SegmentSpec
    source: str
    tree: yaml.Node | None = None


@dataclass
class SegmentCatalog:
    """Every segment by name: the built-in funnel and the files of a folder."""

    segments: dict[str, LoadedSegment] = field(default_factory=dict)

    def get(self, name: str) -> LoadedSegment:
        """The segment called `name`; a KeyError naming the known ones otherwise."""
        try:
            return self.segments[name]
        except KeyError:
            known = ", ".join(sorted(self.segments)) or "none"
            raise KeyError(f"unknown segment {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        """Every name, sorted."""
        return sorted(self.segments)


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # The union's tags and the `not_` attribute name are not keys of the file.
    return tuple("not" if p == "not_" else p for p in loc if not (isinstance(p, str) and p.startswith(_TAG)))


def describe(where: str, loc: tuple[int | str, ...], message: str, tree: yaml.Node | None) -> str:
    """`where: field.path (line N): message`."""
    line = line_of(tree, loc)
    at = f" (line {line})" if line is not None else ""
    return f"{where}: {'.'.join(map(str, loc)) or '(top level)'}{at}: {message}"


def parse_segment_text(text: str, where: str) -> LoadedSegment:
    """Parse and validate one segment's YAML; errors name `where`, the field and the line."""
    tree, data = compose_and_load(text, where, SegmentDefinitionError)
    if not isinstance(data, dict):
        raise SegmentDefinitionError(f"{where}: expected a mapping with name and where")
    try:
        spec = SegmentSpec.model_validate(data)
    except ValidationError as exc:
        lines = [
            describe(where, _clean_loc(tuple(e["loc"])), str(e["msg"]).removeprefix("Value error, "), tree)
            for e in exc.errors()
        ]
        raise SegmentDefinitionError("\n".join(lines)) from exc
    return LoadedSegment(spec, where, tree)


def load_segment(path: Path) -> LoadedSegment:
    """Read and validate one segment file; its name must match the file name."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SegmentDefinitionError(f"{path}: cannot read segment file ({exc.strerror})") from exc
    loaded = parse_segment_text(text, str(path))
    if loaded.spec.name != path.stem:
        raise SegmentDefinitionError(
            describe(str(path), ("name",), f"must match the file name ({path.stem!r})", loaded.tree)
        )
    return loaded


def builtin_segments(settings: Settings) -> list[SegmentSpec]:
    """The funnel: new, active, loyal, dormant, churned, with the thresholds of `settings`.

    active/dormant/churned split buyers by the age of their last purchase; loyal is the
    part of active that bought often lately and is not counted as active; new is a
    recent sign-up who has not become loyal. Someone who never bought and signed up long
    ago is in none of them.
    """
    days = timedelta(days=1)
    active = timedelta(days=settings.segment_active_days)
    churn = timedelta(days=settings.segment_churned_days)
    loyal_rule = [
        EventRule(
            event="purchase",
            within=timedelta(days=settings.segment_loyal_window_days),
            op="gte",
            value=settings.segment_loyal_purchases,
        ),
        Condition(field="last_purchase_at", op="within", value=active),
    ]
    rows: list[tuple[str, str, list[Any]]] = [
        (
            "new",
            f"Signed up in the last {settings.segment_new_days} days and not loyal yet",
            [
                Condition(field="created_at", op="within", value=settings.segment_new_days * days),
                NotRule(**{"not": SegmentRef(segment="loyal")}),
            ],
        ),
        (
            "loyal",
            f"At least {settings.segment_loyal_purchases} purchases in {settings.segment_loyal_window_days} days,"
            f" the last within {settings.segment_active_days} days",
            loyal_rule,
        ),
        (
            "active",
            f"Bought in the last {settings.segment_active_days} days (loyal customers excluded)",
            [
                Condition(field="last_purchase_at", op="within", value=active),
                NotRule(**{"not": SegmentRef(segment="loyal")}),
            ],
        ),
        (
            "dormant",
            f"Last purchase {settings.segment_active_days} to {settings.segment_churned_days} days ago",
            [
                Condition(field="last_purchase_at", op="older_than", value=active),
                Condition(field="last_purchase_at", op="within", value=churn),
            ],
        ),
        (
            "churned",
            f"Bought once, but not in the last {settings.segment_churned_days} days",
            [
                Condition(field="last_purchase_at", op="exists"),
                Condition(field="last_purchase_at", op="older_than", value=churn),
            ],
        ),
    ]
    return [SegmentSpec(name=name, description=desc, where=rules) for name, desc, rules in rows]


BUILTIN_NAMES = ("new", "active", "loyal", "dormant", "churned")


def segment_files(directory: Path) -> list[Path]:
    """Every segment file in `directory`, sorted."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_catalog(settings: Settings, directory: Path | None = None) -> SegmentCatalog:
    """The built-in funnel plus every file in `directory` (default: settings.segments_dir).

    Every file is validated (all errors of all files are reported together), and so are
    the references between segments (unknown names, cycles) and the fields the rules use.
    """
    catalog = SegmentCatalog({s.name: LoadedSegment(s, "built-in") for s in builtin_segments(settings)})
    errors: list[str] = []
    folder = directory if directory is not None else settings.segments_dir
    for path in segment_files(folder) if folder.is_dir() else []:
        try:
            loaded = load_segment(path)
        except SegmentDefinitionError as exc:
            errors.append(str(exc))
            continue
        if loaded.spec.name in catalog.segments:
            other = catalog.segments[loaded.spec.name].source
            errors.append(
                describe(str(path), ("name",), f"{loaded.spec.name!r} is already defined ({other})", loaded.tree)
            )
            continue
        catalog.segments[loaded.spec.name] = loaded
    if errors:
        raise SegmentDefinitionError("\n".join(errors))
    return catalog
