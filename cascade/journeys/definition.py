"""The authoring checks of a journey definition: what a marketer's file must satisfy to start.

models/journey.py holds the wire types, the shapes that cross Temporal in a workflow's
input, and decodes whatever an older release wrote there. The checks here run only when
a definition is authored: a journey file is loaded (cascade/journeys/files.py) or
application code starts a JourneySpec (cascade/journeys/service.py). Tightening one of
them therefore never refuses the input of a journey that is already running.

Problems are raised as a pydantic ValidationError with the same locations and
"Value error, ..." messages a field validator gives, so the file/field/line report of
files.describe_validation_error reads exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails

from models.journey import Condition, Experiment, JourneyInput, JourneySpec, JourneyStep, MessageContent

Loc = tuple[str | int, ...]
Problem = tuple[Loc, Any, str]

_TEMPLATES = SandboxedEnvironment(autoescape=False)


def validate_spec(data: Any) -> JourneySpec:
    """Decode authored journey data and apply every authoring check (ValidationError if any fails).

    When the shape itself is wrong, the authoring problems of the parts that do decode are
    reported with it, so one run names every mistake in a file, as one validator pass did.
    """
    try:
        spec = JourneySpec.model_validate(data)
    except ValidationError as exc:
        extra = list(_problems_of_raw(data)) if isinstance(data, dict) else []
        if not extra:
            raise
        details = [
            InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {})) for e in exc.errors()
        ]
        raise ValidationError.from_exception_data(JourneySpec.__name__, details + _details(extra)) from None
    check_spec(spec)
    return spec


def check_spec(spec: JourneySpec) -> None:
    """Refuse a decoded spec that breaks an authoring rule: ValidationError naming each field."""
    _raise(JourneySpec.__name__, list(spec_problems(spec)))


def journey_input(
    spec: JourneySpec,
    customer_id: str,
    deadline: datetime | None,
    context: dict[str, Any],
    triggered_at: datetime | None = None,
) -> JourneyInput:
    """The workflow input of a new start, refused (ValidationError) if the deadline has no time zone."""
    payload = JourneyInput(
        spec=spec, customer_id=customer_id, deadline=deadline, context=context, triggered_at=triggered_at
    )
    if payload.deadline is not None and payload.deadline.tzinfo is None:
        # On the object itself, as the model validator that used to hold this check reported it.
        _raise(
            JourneyInput.__name__,
            [((), deadline, "deadline must carry a time zone (e.g. 2026-12-31T23:59:00+00:00)")],
        )
    return payload


def spec_problems(spec: JourneySpec) -> Iterator[Problem]:
    """Every authoring problem of `spec` as (location, offending value, message)."""
    yield from _problems_of_parts({name: getattr(spec, name) for name in _PARTS})
    for i, step in enumerate(spec.steps):
        yield from _step_problems(i, step)
    if spec.experiment is not None:
        yield from _experiment_problems(spec.experiment)


# The text fields an experiment's content change may replace: Jinja templates, like the step's.
_CHANGE_TEMPLATES = ("subject", "body", "html", "url", "sms", "messenger", "voice")


def _experiment_problems(experiment: Experiment) -> Iterator[Problem]:
    """Templates in the variants: a chain's steps and each per-step content change must parse."""
    for v, variant in enumerate(experiment.variants):
        for i, step in enumerate(variant.steps or []):
            yield from _step_problems(i, step, ("experiment", "variants", v))
        for index, change in variant.content.items():
            for name in _CHANGE_TEMPLATES:
                source = getattr(change, name)
                if source is None:
                    continue
                if (error := template_error(source)) is not None:
                    yield ("experiment", "variants", v, "content", index, name), source, error


def _problems_of_parts(parts: dict[str, Any]) -> Iterator[Problem]:
    valid_for, trigger = parts.get("valid_for"), parts.get("trigger")
    if valid_for is not None and valid_for <= timedelta(0):
        yield ("valid_for",), valid_for, "must be positive"
    if trigger is not None and trigger.reentry is not None and trigger.reentry <= timedelta(0):
        yield ("trigger", "reentry"), trigger.reentry, "must be positive (e.g. 180d)"
    if (entry := parts.get("entry")) is not None:
        yield from _condition_problems(("entry", "conditions"), entry.conditions)
    cap, quiet = parts.get("frequency_cap"), parts.get("quiet_hours")
    if cap is not None and cap.per <= timedelta(0):
        yield ("frequency_cap", "per"), cap.per, "must be positive (e.g. 7d)"
    if quiet is not None and quiet.start == quiet.end:
        yield ("quiet_hours",), quiet, "start and end must differ"


# The spec's fields that carry authoring rules (besides the steps, checked one by one).
_PARTS = ("valid_for", "trigger", "entry", "frequency_cap", "quiet_hours")


def _step_problems(i: int, step: JourneyStep, within: Loc = ()) -> Iterator[Problem]:
    for name, value in (("wait", step.wait), ("delay", step.delay)):
        if value is not None and value <= timedelta(0):
            yield (*within, "steps", i, name), value, "must be positive (e.g. 30s, 15m, 36h, 2d)"
    yield from content_problems((*within, "steps", i, "content"), step.content)
    yield from _condition_problems((*within, "steps", i, "if"), step.when)


def _problems_of_raw(data: dict[str, Any]) -> Iterator[Problem]:
    """The authoring problems of every part of `data` that decodes on its own."""
    parts: dict[str, Any] = {}
    for name in _PARTS:
        if name in data:
            try:
                parts[name] = TypeAdapter[Any](cast(Any, JourneySpec.model_fields[name].annotation)).validate_python(
                    data[name]
                )
            except ValidationError:
                continue
    yield from _problems_of_parts(parts)
    steps = data.get("steps")
    for i, raw in enumerate(steps if isinstance(steps, list) else []):
        try:
            step = JourneyStep.model_validate(raw)
        except ValidationError:
            continue
        yield from _step_problems(i, step)


def content_problems(where: Loc, content: MessageContent) -> Iterator[Problem]:
    """Every template of `content` that does not parse, with the line Jinja reports."""
    for path, source in content.template_sources():
        if (error := template_error(source)) is not None:
            parts = [int(p) if p.isdigit() else p for p in path.split(".")]
            if parts[0] == "whatsapp":
                # The parameters were checked as one list field: the location names the list.
                parts = parts[:2]
            yield (*where, *parts), source, error


@lru_cache(maxsize=4096)
def template_error(source: str) -> str | None:
    """Why `source` is not a Jinja template ("template error on line N: ..."), None if it parses.

    Cached: a spec built in application code is checked on every start (check_spec), and
    parsing its templates each time was the largest part of a start's own CPU.
    """
    try:
        _TEMPLATES.parse(source)
    except TemplateSyntaxError as exc:
        return f"template error on line {exc.lineno}: {exc.message}"
    return None


def _condition_problems(where: Loc, conditions: Sequence[Condition]) -> Iterator[Problem]:
    for i, cond in enumerate(conditions):
        if cond.op in ("older_than", "within"):
            # The wire type turns a readable duration into seconds; anything left is not one.
            if not isinstance(cond.value, int | float) or isinstance(cond.value, bool):
                yield (*where, i), cond.value, f"{cond.op} needs a duration such as 30d or 6w, got {cond.value!r}"
        elif cond.op in ("in", "not_in") and not isinstance(cond.value, list):
            yield (*where, i), cond.value, f"{cond.op} needs a list value"
        elif cond.op not in ("exists", "missing") and cond.value is None:
            yield (*where, i), cond.value, f"{cond.op} needs a value"


def _details(problems: list[Problem]) -> list[InitErrorDetails]:
    # "value_error" with the ValueError as context reads "Value error, <message>", exactly
    # what pydantic reports for a ValueError raised in a validator.
    return [
        InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": ValueError(message)})
        for loc, value, message in problems
    ]


def _raise(title: str, problems: list[Problem]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, _details(problems))
