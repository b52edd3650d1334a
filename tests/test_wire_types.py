"""Wire types decode what an in-flight journey carries, even where authoring would refuse it.

A running journey's input holds the spec as it was at its start. The authoring checks
(cascade/journeys/definition.py) may tighten between releases; decoding that input through
Temporal's data converter must never apply them, or the worker could not resume the journey.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter

from cascade.journeys.definition import check_spec, validate_spec
from models.journey import JourneyInput

STEP: dict[str, Any] = {"channel": "email", "content": {"body": "hi"}}

# Each refused by the authoring checks, each still a shape the wire type can carry.
REFUSED_AT_AUTHORING: list[tuple[dict[str, Any], str, str]] = [
    ({"steps": [{**STEP, "content": {"body": "{{ name"}}]}, "steps.0.content.body", "template error on line 1"),
    ({"steps": [{**STEP, "wait": "0s"}]}, "steps.0.wait", "must be positive"),
    ({"steps": [STEP], "valid_for": -60}, "valid_for", "must be positive"),
    ({"steps": [STEP], "quiet_hours": {"start": "21:00", "end": "21:00"}}, "quiet_hours", "must differ"),
    ({"steps": [STEP], "frequency_cap": {"max": 2, "per": 0}}, "frequency_cap.per", "must be positive"),
    (
        {"steps": [STEP], "trigger": {"events": ["x"], "reentry": "-3d"}},
        "trigger.reentry",
        "must be positive",
    ),
    (
        {"steps": [STEP], "entry": {"conditions": [{"field": "city", "op": "in", "value": "Oslo"}]}},
        "entry.conditions.0",
        "needs a list value",
    ),
    (
        {"steps": [{**STEP, "if": [{"field": "last_purchase_at", "op": "older_than", "value": "soon"}]}]},
        "steps.0.if.0",
        "needs a duration",
    ),
    (
        {"steps": [{**STEP, "content": {"body": "x", "whatsapp": {"name": "t", "params": ["{% if %}"]}}}]},
        "steps.0.content.whatsapp.params",
        "template error",
    ),
]


@pytest.mark.parametrize(("extra", "where", "message"), REFUSED_AT_AUTHORING, ids=lambda v: str(v)[:40])
async def test_an_input_authoring_refuses_still_decodes_as_the_wire_type(
    extra: dict[str, Any], where: str, message: str
) -> None:
    data = {"name": "x", **extra}
    with pytest.raises(ValidationError) as refused:
        validate_spec(data)
    problems = {".".join(str(p) for p in e["loc"]): e["msg"] for e in refused.value.errors()}
    assert where in problems and message in problems[where], problems

    # What a history of an older release could carry: the same spec, serialised as JSON.
    raw = {"spec": data, "customer_id": "c-1", "context": {}}
    payloads = await pydantic_data_converter.encode([raw])
    [decoded] = await pydantic_data_converter.decode(payloads, [JourneyInput])
    assert isinstance(decoded, JourneyInput)
    assert decoded.spec.name == "x" and decoded.customer_id == "c-1"
    # And it encodes again unchanged in shape, as the workflow passes it on to a new round.
    [again] = await pydantic_data_converter.decode(await pydantic_data_converter.encode([decoded]), [JourneyInput])
    assert again == decoded
    # A spec built in code gets the same verdict when it is checked before a start.
    with pytest.raises(ValidationError):
        check_spec(decoded.spec)


def test_a_readable_duration_in_a_condition_is_stored_as_seconds_on_the_wire() -> None:
    spec = validate_spec(
        {"name": "x", "steps": [{**STEP, "if": [{"field": "last_purchase_at", "op": "within", "value": "2d"}]}]}
    )
    assert spec.steps[0].when[0].value == timedelta(days=2).total_seconds()
