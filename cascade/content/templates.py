"""Rendering message content with sandboxed Jinja2, and checking templates before a journey runs.

Templates come from journey files that marketers edit, so they run in Jinja2's
sandbox (no attribute access to internals) with StrictUndefined (a missing field is
an error, never a silent "Hello, !"). `check_template_fields` finds the missing
field when the journey is validated, not at 3 am in the worker.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from cascade.content.rendered import Button
from cascade.content.rendered import RenderedContent as RenderedContent  # re-exported: its old home
from cascade.content.sms import SmsInfo, sms_info
from cascade.journeys.files import JourneyDefinitionError, load_journey
from cascade.profiles.service import TYPED_FIELDS
from cascade.tracking.links import html_links, mark_value, text_links, unmark, whole_link
from models.journey import JourneySpec, MessageContent

_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
# The same, bracketing what each expression prints, for the fields that carry links:
# tracking must know which links the template wrote and which came in with the data.
_TEXT_MARKED = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=mark_value)
_HTML_MARKED = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, finalize=mark_value)

MESSENGERS = frozenset({"telegram", "vk", "viber", "whatsapp"})
PUSH = frozenset({"webpush", "fcm"})
# Fields every render has besides the profile's attributes and the journey context.
# Filled in at send time, whatever the profile: the signed one-click unsubscribe link.
SEND_TIME_FIELDS = frozenset({"unsubscribe_url"})
# What every customer's profile offers a template (custom attributes come on top).
BASE_FIELDS = frozenset({"customer_id", "attributes", *TYPED_FIELDS, *SEND_TIME_FIELDS})


class TemplateRenderError(ValueError):
    """A template could not be rendered with the fields given (names the field)."""


@lru_cache(maxsize=1024)
def _compiled(env: SandboxedEnvironment, source: str) -> Template:
    """A template compiled once per process: a journey's steps render the same sources for every customer."""
    return env.from_string(source)


def _render(env: SandboxedEnvironment, source: str | None, fields: dict[str, Any], where: str) -> str | None:
    if source is None:
        return None
    try:
        return _compiled(env, source).render(fields)
    except TemplateError as exc:
        raise TemplateRenderError(f"{where}: {exc.message or exc}") from exc


def _render_links(
    env: SandboxedEnvironment, source: str | None, fields: dict[str, Any], where: str
) -> tuple[str, list[bool]] | None:
    """Render `source` and say, per character, whether data (not the template) wrote it."""
    marked = _render(env, source, fields, where)
    return None if marked is None else unmark(marked)


def body_field(content: MessageContent, channel: str | None) -> tuple[str, str]:
    """Which template is the body on `channel`: (field path, source)."""
    if channel == "sms" and content.sms:
        return "sms", content.sms
    if channel == "voice" and content.voice:
        return "voice", content.voice
    if channel in MESSENGERS and content.messenger:
        return "messenger", content.messenger
    if channel in PUSH and content.push is not None and content.push.body:
        return "push.body", content.push.body
    return "body", content.body


def render_content(content: MessageContent, fields: dict[str, Any], channel: str | None = None) -> RenderedContent:
    """Fill the templates `channel` uses from `fields` (profile attributes + journey context).

    Without a channel: body, subject, html and url, as before variants existed.
    """
    where, source = body_field(content, channel)
    body = _render_links(_TEXT_MARKED, source, fields, where)
    assert body is not None
    subject = _render(_TEXT, content.subject, fields, "subject")
    url = _render_links(_TEXT_MARKED, content.url, fields, "url")
    links = text_links(*body) | (whole_link(*url) if url else set())
    rendered: dict[str, Any] = {"body": body[0], "subject": subject, "url": url[0] if url else None}
    if channel in (None, "email"):
        markup = _render_links(_HTML_MARKED, content.html, fields, "html")
        rendered["html"] = markup[0] if markup else None
        links |= html_links(*markup) if markup else set()
    if channel in MESSENGERS or channel in PUSH:
        buttons = []
        for i, b in enumerate(content.buttons):
            text = _render(_TEXT, b.text, fields, f"buttons.{i}.text") or ""
            target = _render_links(_TEXT_MARKED, b.url, fields, f"buttons.{i}.url") or ("", [])
            links |= whole_link(*target)
            buttons.append(Button(text, target[0]))
        rendered["buttons"] = tuple(buttons)
    if channel in PUSH:
        push = content.push
        rendered["title"] = _render(_TEXT, push.title if push and push.title else content.subject, fields, "push.title")
        if push is not None:
            rendered["icon"] = _render(_TEXT, push.icon, fields, "push.icon")
            rendered["image"] = _render(_TEXT, push.image, fields, "push.image")
    if channel == "whatsapp" and content.whatsapp is not None:
        rendered["template_name"] = content.whatsapp.name
        rendered["template_language"] = content.whatsapp.language
        rendered["template_params"] = tuple(
            _render(_TEXT, p, fields, f"whatsapp.params.{i}") or "" for i, p in enumerate(content.whatsapp.params)
        )
    return RenderedContent(**rendered, template_links=frozenset(links))


def template_fields(source: str) -> set[str]:
    """The top-level names a template reads (its undeclared variables)."""
    return set(_fields_of(source))


@lru_cache(maxsize=1024)
def _fields_of(source: str) -> frozenset[str]:
    # Every start checks its journey's templates against the profile: parsed once per process.
    return frozenset(meta.find_undeclared_variables(_TEXT.parse(source)))


def check_template_fields(content: MessageContent, available: Iterable[str]) -> list[str]:
    """One error per template field that reads a name not in `available`.

    `available` is what a render will have: the profile's field names, the custom
    attributes a shop declares and the journey's context keys. An empty list: fine.
    """
    known = set(available)
    errors = []
    for path, source in content.template_sources():
        missing = sorted(template_fields(source) - known)
        if missing:
            names = ", ".join(repr(m) for m in missing)
            errors.append(f"{path}: unknown field{'s' if len(missing) > 1 else ''} {names}")
    return errors


@lru_cache(maxsize=1024)
def estimate_sms(source: str, placeholder_length: int = 10) -> SmsInfo:
    """SMS length/segments of a template, each field counted as `placeholder_length` characters.

    Every start of a journey with an SMS step asks (check_journey): compiled once per process.
    """
    sample = {name: "x" * placeholder_length for name in template_fields(source)}
    try:
        text = _TEXT.from_string(source).render(sample)
    except TemplateError:
        text = source
    return sms_info(text)


def check_journey(spec: JourneySpec, available: Iterable[str]) -> tuple[list[str], list[str]]:
    """(errors, notes) for every step: unknown fields, and SMS length and segment count."""
    known = set(available)
    errors: list[str] = []
    notes: list[str] = []
    for index, step in enumerate(spec.steps):
        errors += [f"steps.{index}.content.{e}" for e in check_template_fields(step.content, known)]
        if step.channel.value == "sms":
            path, source = body_field(step.content, "sms")
            notes.append(f"steps.{index} sms ({path}): {estimate_sms(source).describe()}, fields as 10 chars")
        if step.channel.value == "whatsapp" and step.content.whatsapp is None:
            notes.append(f"steps.{index} whatsapp: free text only reaches customers who wrote in the last 24 h")
    return errors, notes


def main(argv: list[str]) -> int:
    """`python -m cascade.content.templates JOURNEY [FIELD ...]`: check a journey file's templates."""
    if not argv:
        print("usage: python -m cascade.content.templates JOURNEY [EXTRA_FIELD ...]", file=sys.stderr)
        return 2
    try:
        spec = load_journey(argv[0])
    except JourneyDefinitionError as exc:
        print(exc, file=sys.stderr)
        return 1
    errors, notes = check_journey(spec, BASE_FIELDS | set(argv[1:]))
    for note in notes:
        print(note)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
