"""Per-channel content variants: rendering, and missing fields found at validation time."""

from __future__ import annotations

import pytest

from cascade.content.templates import (
    BASE_FIELDS,
    TemplateRenderError,
    check_journey,
    check_template_fields,
    render_content,
)
from cascade.journeys.definition import validate_spec
from cascade.journeys.files import load_journey
from models.journey import JourneySpec, MessageContent

CONTENT = MessageContent.model_validate(
    {
        "subject": "Welcome, {{ name }}!",
        "body": "Hello, {{ name }}! Code {{ coupon }}",
        "html": "<p>Hello, <b>{{ name }}</b> {{ coupon }}</p>",
        "url": "https://shop.example/w?c={{ customer_id }}",
        "sms": "{{ name }}: {{ coupon }} -10%",
        "messenger": "Hi {{ name }}! Tap below for {{ coupon }}",
        "voice": "Hello {{ name }}. Your code is {{ coupon | list | join(' ') }}.",
        "push": {"title": "{{ name }}, 10% off", "image": "https://cdn.shop.example/{{ city }}.png"},
        "buttons": [{"text": "Shop in {{ city }}", "url": "https://shop.example/{{ city | lower }}"}],
        "whatsapp": {"name": "welcome_offer", "language": "de", "params": ["{{ name }}", "{{ coupon }}"]},
    }
)
FIELDS = {"customer_id": "c-1", "name": "Ann <3", "coupon": "W10", "city": "Kazan"}


def test_each_channel_gets_its_variant():
    sms = render_content(CONTENT, FIELDS, "sms")
    assert sms.body == "Ann <3: W10 -10%" and sms.html is None and sms.buttons == ()
    tg = render_content(CONTENT, FIELDS, "telegram")
    assert tg.body == "Hi Ann <3! Tap below for W10"
    assert tg.buttons == (("Shop in Kazan", "https://shop.example/kazan"),)
    push = render_content(CONTENT, FIELDS, "webpush")
    assert push.title == "Ann <3, 10% off" and push.image == "https://cdn.shop.example/Kazan.png"
    assert push.body == "Hello, Ann <3! Code W10"  # no push.body: the default body
    email = render_content(CONTENT, FIELDS, "email")
    assert email.html == "<p>Hello, <b>Ann &lt;3</b> W10</p>"  # HTML is escaped, text is not
    assert email.url == "https://shop.example/w?c=c-1"
    voice = render_content(CONTENT, FIELDS, "voice")
    assert voice.body == "Hello Ann <3. Your code is W 1 0."
    wa = render_content(CONTENT, FIELDS, "whatsapp")
    assert (wa.template_name, wa.template_language, wa.template_params) == ("welcome_offer", "de", ("Ann <3", "W10"))
    # Different content, different hashes; same content, same hash.
    assert len({r.content_hash for r in (sms, tg, push, email, voice, wa)}) == 6
    assert render_content(CONTENT, FIELDS, "sms").content_hash == sms.content_hash


def test_a_missing_field_names_the_variant_at_render_time():
    with pytest.raises(TemplateRenderError, match=r"^buttons\.0\.text: 'city' is undefined"):
        render_content(CONTENT, {k: v for k, v in FIELDS.items() if k != "city"}, "fcm")
    # The SMS step does not need the push image's field.
    assert render_content(CONTENT, {k: v for k, v in FIELDS.items() if k != "city"}, "sms").body


def test_check_template_fields_lists_every_unknown_field_before_any_send():
    errors = check_template_fields(CONTENT, {"customer_id", "name", "coupon"})
    assert errors == [
        "push.image: unknown field 'city'",
        "buttons.0.text: unknown field 'city'",
        "buttons.0.url: unknown field 'city'",
    ]
    assert check_template_fields(CONTENT, set(FIELDS)) == []
    # Loop variables and filters are not fields.
    looped = MessageContent(body="{% for c in categories %}{{ c | upper }} {% endfor %}")
    assert check_template_fields(looped, {"categories"}) == []


def test_journey_check_reports_sms_segments_and_unknown_fields():
    spec = JourneySpec.model_validate(
        {
            "name": "t",
            "steps": [
                {"channel": "email", "content": {"body": "Hi {{ nmae }}"}},
                {"channel": "sms", "content": {"body": "long", "sms": "Привет, {{ name }}! " + "x" * 60}},
            ],
        }
    )
    errors, notes = check_journey(spec, BASE_FIELDS)
    assert errors == ["steps.0.content.body: unknown field 'nmae'"]
    assert notes == ["steps.1 sms (sms): 80 chars, UCS-2, 2 segments (67 per segment), fields as 10 chars"]
    # The shipped journeys are clean.
    for name in ("demo", "welcome"):
        assert check_journey(load_journey(name), BASE_FIELDS)[0] == []


def test_variant_templates_are_parsed_when_the_journey_loads():
    def load(content: dict[str, object]) -> None:
        validate_spec({"name": "t", "steps": [{"channel": "email", "content": content}]})

    with pytest.raises(ValueError, match=r"steps\.0\.content\.buttons\.0\.url"):
        load({"body": "x", "buttons": [{"text": "Go", "url": "{{ broken"}]})
    with pytest.raises(ValueError, match=r"steps\.0\.content\.push\.title"):
        load({"body": "x", "push": {"title": "{% if %}"}})
    with pytest.raises(ValueError, match=r"whatsapp\.name"):
        MessageContent.model_validate({"body": "x", "whatsapp": {"name": "Bad Name"}})
