"""The `experiment` block of a journey file: what it means, and errors that name file, field and line."""

from __future__ import annotations

import pytest

from cascade.journeys.files import JourneyDefinitionError, load_journey, parse_journey_text
from models.journey import CONTROL_ARM, JourneySpec
from tests.helpers import spec

HEAD = """name: t
convert_on: [purchase]
steps:
  - channel: email
    content: {subject: "Sale", body: "Hello {{ name }}"}
  - channel: sms
    content: {body: "Sale today"}
"""


def parse(experiment: str) -> JourneySpec:
    return parse_journey_text(HEAD + experiment, "journeys/t.yaml")


def test_the_example_is_a_subject_line_test_with_a_ten_percent_control():
    journey = load_journey("sale_subject_test")
    exp = journey.experiment
    assert exp is not None and exp.mode == "ab"
    assert exp.planned_split() == pytest.approx({CONTROL_ARM: 0.1, "plain": 0.45, "personal": 0.45})
    assert exp.steps_for("plain", journey.steps) == journey.steps
    personal = exp.steps_for("personal", journey.steps)
    assert personal[0].content.subject == "{{ name }}, your 20% off is waiting"
    assert personal[0].content.body == journey.steps[0].content.body  # only the subject changes
    assert exp.steps_for(CONTROL_ARM, journey.steps) == []


def test_journey_level_variants_and_weights():
    journey = parse(
        """experiment:
  name: chains
  control: 0.2
  variants:
    - {name: email-first, weight: 3}
    - name: sms-only
      steps:
        - {channel: sms, content: {body: "Only sms"}}
"""
    )
    exp = journey.experiment
    assert exp is not None
    assert exp.planned_split() == pytest.approx({CONTROL_ARM: 0.2, "email-first": 0.6, "sms-only": 0.2})
    assert [s.channel for s in exp.steps_for("sms-only", journey.steps)] == ["sms"]
    assert [s.channel for s in exp.steps_for("email-first", journey.steps)] == ["email", "sms"]


def test_a_journey_without_an_experiment_serialises_as_before():
    journey = spec("email")
    assert "experiment" not in journey.model_dump(by_alias=True)
    # The content hash of every existing journey file is unchanged by the new field.
    assert journey.content_hash() == JourneySpec.model_validate(journey.model_dump(by_alias=True)).content_hash()


@pytest.mark.parametrize(
    ("experiment", "where"),
    [
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a}\n    - {name: a}\n",
            "experiment.variants (line 10): Value error, variant names must be unique; repeated: a",
        ),
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a}\n    - {name: b, weight: 0}\n",
            "experiment.variants.1.weight (line 12): Input should be greater than 0",
        ),
        (
            "experiment:\n  name: x\n  control: 10%\n  variants:\n    - {name: control}\n",
            "experiment.variants (line 11): Value error, 'control' is the control group's name",
        ),
        (
            "experiment:\n  name: x\n  control: 95%\n  variants:\n    - {name: a}\n",
            "experiment.control (line 10): Input should be less than or equal to 0.9",
        ),
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a}\n",
            "experiment (line 8): Value error, an experiment needs two arms",
        ),
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a}\n    - name: b\n      content:\n"
            "        5: {subject: Hi}\n",
            "experiment (line 8): Value error, variant 'b' changes the content of step 5,"
            " but the journey has steps 0-1",
        ),
        (
            "experiment:\n  name: x\n  mode: bandit\n  variants:\n    - {name: a}\n"
            "    - name: b\n      steps: [{channel: sms, content: {body: x}}]\n",
            "experiment (line 8): Value error, bandit mode is for content variants",
        ),
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a}\n    - name: b\n      content:\n"
            "        0: {subject: '{{ oops'}\n",
            "experiment.variants.1.content.0.subject (line 14): Value error, template error on line 1",
        ),
        (
            "experiment:\n  name: x\n  variants:\n    - {name: a, colour: red}\n    - {name: b}\n",
            "experiment.variants.0.colour (line 11): Extra inputs are not permitted",
        ),
    ],
)
def test_bad_experiments_name_file_field_and_line(experiment: str, where: str):
    with pytest.raises(JourneyDefinitionError) as caught:
        parse(experiment)
    assert f"journeys/t.yaml: {where}" in str(caught.value)


def test_only_one_experiment_per_journey():
    with pytest.raises(JourneyDefinitionError, match="experiments"):
        parse("experiments:\n  - {name: x}\n")
