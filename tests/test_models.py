"""Bad input fails with a message naming what was wrong, before anything starts."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from cascade.content.templates import TemplateRenderError, render_content
from cascade.journeys.definition import journey_input, validate_spec
from cascade.journeys.files import JOURNEYS_DIR, JourneyDefinitionError, load_journey
from models.events import EngagementRequest
from models.journey import JourneySpec, MessageContent
from models.profiles import ContactIn, CustomerProfile

STEP = {"channel": "email", "content": {"body": "hi"}}


def test_durations_read_like_a_marketer_writes_them():
    spec = JourneySpec.model_validate(
        {"name": "x", "valid_for": "3d", "steps": [{**STEP, "wait": "36h"}, {**STEP, "wait": 90}]}
    )
    assert spec.steps[0].wait == timedelta(hours=36)
    assert spec.steps[1].wait == timedelta(seconds=90)
    assert spec.valid_for == timedelta(days=3)
    assert spec.steps[0].await_reaction == "opened"


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        ({"name": "x", "steps": []}, "steps", "at least 1"),
        ({"name": "x", "steps": [{**STEP, "channel": "pigeon"}]}, "steps.0.channel", "email"),
        ({"name": "x", "steps": [{**STEP, "wait": "-2d"}]}, "steps.0.wait", ""),
        ({"name": "x", "steps": [{**STEP, "wait": "0s"}]}, "steps.0.wait", "positive"),
        ({"name": "x", "steps": [{**STEP, "await": "liked"}]}, "steps.0.await", "opened"),
        ({"name": "Bad Name", "steps": [STEP]}, "name", "pattern"),
        (
            {"name": "x", "steps": [{**STEP, "content": {"body": "{{ name"}}]},
            "steps.0.content.body",
            "template",
        ),
        ({"name": "x", "steps": [{**STEP, "colour": "red"}]}, "steps.0.colour", "Extra"),
    ],
)
def test_invalid_journey_definitions_name_the_field(data, where, what):
    with pytest.raises(ValidationError) as info:
        validate_spec(data)
    locs = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert where in locs
    assert what.lower() in str(info.value).lower()


def test_journey_file_errors_name_the_file_and_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - channel: fax\n    content: {body: hi}\n")
    with pytest.raises(JourneyDefinitionError, match=r"bad\.yaml: steps\.0\.channel"):
        load_journey(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsteps: [\n")
    with pytest.raises(JourneyDefinitionError, match=r"broken\.yaml: line \d+ invalid YAML"):
        load_journey(broken)
    with pytest.raises(JourneyDefinitionError, match="cannot read"):
        load_journey(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(JOURNEYS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_journeys_are_valid(path: Path):
    spec = load_journey(path)
    assert spec.name == path.stem


def test_deadline_needs_a_time_zone():
    spec = JourneySpec.model_validate({"name": "x", "steps": [STEP]})
    with pytest.raises(ValidationError, match="time zone"):
        journey_input(spec, "c-1", datetime(2030, 1, 1), {})


@pytest.mark.parametrize(
    ("contact", "message"),
    [
        ({"channel": "email", "address": "not-an-email"}, "email address 'not-an-email'"),
        ({"channel": "sms", "address": "12345"}, "phone number '12345'"),
        ({"channel": "sms", "address": "+1 415 555"}, "not a valid number"),
        ({"channel": "fax", "address": "1"}, "channel"),
    ],
)
def test_bad_contacts_are_rejected_with_the_reason(contact, message):
    with pytest.raises(ValidationError, match=message):
        ContactIn.model_validate(contact)


def test_contacts_are_normalised():
    assert ContactIn(channel="sms", address="+1 (415) 555-2671").address == "+14155552671"
    assert ContactIn(channel="email", address="Ann@EXAMPLE.com").address == "ann@example.com"
    with pytest.raises(ValidationError, match="id"):
        CustomerProfile(id="has space")


def test_engagement_request_needs_exactly_one_target():
    with pytest.raises(ValidationError, match="exactly one"):
        EngagementRequest.model_validate({"event": "opened"})
    with pytest.raises(ValidationError, match="exactly one"):
        EngagementRequest.model_validate({"event": "opened", "message_id": "m", "workflow_id": "w"})


def test_templates_are_sandboxed_strict_and_escaped():
    content = MessageContent(subject="Hi {{ name }}", body="{{ name }}!", html="<b>{{ name }}</b>")
    rendered = render_content(content, {"name": "<Ann>"})
    assert rendered.body == "<Ann>!" and rendered.html == "<b>&lt;Ann&gt;</b>"
    assert len(rendered.content_hash) == 64
    with pytest.raises(TemplateRenderError, match="body: 'coupon' is undefined"):
        render_content(MessageContent(body="{{ coupon }}"), {})
    with pytest.raises(TemplateRenderError, match="unsafe"):
        render_content(MessageContent(body="{{ name.__class__.__mro__ }}"), {"name": "x"})


def test_journey_files_are_parsed_again_only_when_they_change(tmp_path):
    import os

    from cascade.journeys.files import load_all_journeys

    path = tmp_path / "j.yaml"
    path.write_text("name: j\nsteps:\n  - channel: email\n    content: {body: one}\n")
    first = load_all_journeys(tmp_path)
    assert load_all_journeys(tmp_path)[0] is first[0]  # unchanged: the parsed spec is reused
    path.write_text("name: j\nsteps:\n  - channel: sms\n    content: {body: two words}\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    assert load_all_journeys(tmp_path)[0].steps[0].channel == "sms"


def test_every_model_is_complete_when_its_module_is_imported():
    """No model may wait for pydantic to resolve a forward reference on first use.

    That late rebuild looks the names up in `sys.modules`; inside the workflow sandbox, with
    the workflow modules passed through, the model's module is not there, and the first
    journey to build the model failed its workflow task on every retry (a hang).
    """
    incomplete = []
    for package in ("models", "workflows", "cascade", "activities", "channels", "analytics"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            incomplete += [
                f"{info.name}.{name}"
                for name, value in vars(module).items()
                if inspect.isclass(value)
                and issubclass(value, BaseModel)
                and value.__module__ == info.name
                and not value.__pydantic_complete__
            ]
    assert incomplete == []
