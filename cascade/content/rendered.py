"""Rendered content: what a message says once its templates are filled in.

Kept apart from the rendering (cascade/content/templates.py) so the channel adapters can
build on it (channels.base.OutboundMessage extends it) without importing Jinja or the
profile service.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple


class Button(NamedTuple):
    """A call-to-action under a messenger message or a push notification: label and link."""

    text: str
    url: str


@dataclass(frozen=True)
class RenderedContent:
    """Content with every template the channel uses filled in."""

    body: str
    subject: str | None = None
    html: str | None = None
    url: str | None = None
    title: str | None = None
    icon: str | None = None
    image: str | None = None
    buttons: tuple[Button, ...] = ()
    template_name: str | None = None
    template_language: str | None = None
    template_params: tuple[str, ...] = ()
    # Links whose scheme and host the template itself wrote (see cascade/tracking/links.py), as they
    # appear in body, html, url and buttons: the only ones tracking may turn into redirects.
    template_links: frozenset[str] = frozenset()

    @property
    def content_hash(self) -> str:
        """sha256 of what the customer sees, for the delivery log."""
        digest = hashlib.sha256()
        parts: list[str | None] = [self.subject, self.body, self.html, self.url]
        extra = [self.title, self.icon, self.image, self.template_name, self.template_language]
        # Only mixed in when present, so hashes of plain content stay what they were.
        if any(extra) or self.buttons or self.template_params:
            parts += [*extra, *(f"{t}\x01{u}" for t, u in self.buttons), *self.template_params]
        for part in parts:
            digest.update((part or "").encode())
            digest.update(b"\x00")
        return digest.hexdigest()
