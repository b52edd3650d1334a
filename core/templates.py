"""Rendering message content with sandboxed Jinja2.

Templates come from journey files that marketers edit, so they run in Jinja2's
sandbox (no attribute access to internals) with StrictUndefined (a missing field is
an error, never a silent "Hello, !").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from models.journey import MessageContent

_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


class TemplateRenderError(ValueError):
    """A template could not be rendered with the fields given (names the field)."""


@dataclass(frozen=True)
class RenderedContent:
    """Content with every template filled in."""

    body: str
    subject: str | None = None
    html: str | None = None
    url: str | None = None

    @property
    def content_hash(self) -> str:
        """sha256 of what the customer sees, for the delivery log."""
        digest = hashlib.sha256()
        for part in (self.subject, self.body, self.html, self.url):
            digest.update((part or "").encode())
            digest.update(b"\x00")
        return digest.hexdigest()


def _render(env: SandboxedEnvironment, source: str | None, fields: dict[str, Any], where: str) -> str | None:
    if source is None:
        return None
    try:
        return env.from_string(source).render(fields)
    except TemplateError as exc:
        raise TemplateRenderError(f"{where}: {exc.message or exc}") from exc


def render_content(content: MessageContent, fields: dict[str, Any]) -> RenderedContent:
    """Fill `content`'s templates from `fields` (profile attributes + journey context)."""
    body = _render(_TEXT, content.body, fields, "body")
    assert body is not None
    return RenderedContent(
        body=body,
        subject=_render(_TEXT, content.subject, fields, "subject"),
        html=_render(_HTML, content.html, fields, "html"),
        url=_render(_TEXT, content.url, fields, "url"),
    )
