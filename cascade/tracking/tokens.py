"""Tracking we own: signed tokens, click-redirect links with UTM tags, the open pixel, unsubscribe URLs.

Everything here is a pure function of its inputs (plus `save_tracking`, the one write
`send_message` makes before the provider call).

A token is 52 URL-safe characters: purpose (pixel / click / unsubscribe), link index,
expiry and the message's tracking id (the first 16 bytes of sha256 of the delivery's
idempotency key), followed by 16 bytes of HMAC-SHA256 over all of it with
`CASCADE_TRACKING_SECRET`. The tracking id resolves to the delivery by a database
look-up; it keeps SMS links short and customer ids out of URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import struct
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlmodel import Session

from cascade.content.rendered import Button, RenderedContent
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.infra.settings import DEV_TRACKING_SECRET, Settings
from cascade.tracking.links import HREF, TEXT_URL, TRAILING
from models.activities import SendMessageInput
from models.tables import Topic, TrackedMessage

log = get_logger(__name__)

_PACK = struct.Struct(">cHI16s")  # purpose, link index, expiry (unix seconds), tracking id
_MAC_BYTES = 16
TOKEN_LENGTH = len(base64.urlsafe_b64encode(b"\0" * (_PACK.size + _MAC_BYTES)).rstrip(b"="))
_DOMAIN = b"cascade-tracking-v1\n"

# A 1x1 transparent GIF (43 bytes): what every open pixel answers, valid token or not.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

_MEDIUM = {
    "email": "email",
    "sms": "sms",
    "voice": "voice",
    "webpush": "push",
    "fcm": "push",
    "telegram": "messenger",
    "vk": "messenger",
    "viber": "messenger",
    "whatsapp": "messenger",
}
# Channels whose messages carry links we rewrite; voice is spoken, so it has none.
_LINK_CHANNELS = set(_MEDIUM) - {"voice"}
# Channels that get an unsubscribe link in the text: push and voice have no room for one
# (a push is unsubscribed in the browser or app settings, a call by answering "stop").
_UNSUBSCRIBE_CHANNELS = {"email", "sms", "telegram", "vk", "viber", "whatsapp"}


class Purpose(StrEnum):
    """What a token may be used for; a click token is no pixel and no unsubscribe."""

    PIXEL = "o"
    CLICK = "c"
    UNSUBSCRIBE = "u"


class InvalidToken(ValueError):
    """Not a token we signed (forged, altered, truncated, or for another purpose)."""


class ExpiredToken(ValueError):
    """A token we signed whose time is up."""


@dataclass(frozen=True)
class TokenData:
    """What a verified token names."""

    purpose: Purpose
    tracking_id: str
    link_index: int
    expires_at: datetime


@dataclass(frozen=True)
class Tracking:
    """What `add_tracking` did to a message: the links it replaced, the unsubscribe URL."""

    tracking_id: str
    links: list[str]
    unsubscribe_url: str | None


def tracking_id(idempotency_key: str) -> str:
    """The message's id in tokens: 32 hex characters derived from its idempotency key."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _mac(secret: bytes, packed: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + packed, hashlib.sha256).digest()[:_MAC_BYTES]


def sign_token(secret: str, purpose: Purpose, tracking: str, expires_at: datetime, link_index: int = 0) -> str:
    """A URL-safe token naming (message, purpose, link, expiry), signed with `secret`."""
    packed = _PACK.pack(purpose.value.encode(), link_index, int(expires_at.timestamp()), bytes.fromhex(tracking))
    raw = packed + _mac(secret.encode(), packed)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify_token(secret: str, token: str, purpose: Purpose, now: datetime | None = None) -> TokenData:
    """Check the signature, then the purpose, then the expiry; raise InvalidToken / ExpiredToken."""
    if len(token) != TOKEN_LENGTH or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise InvalidToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    packed, mac = raw[: _PACK.size], raw[_PACK.size :]
    # Constant-time comparison: timing must not reveal how much of a forgery was right.
    if not hmac.compare_digest(mac, _mac(secret.encode(), packed)):
        raise InvalidToken("bad signature")
    code, index, expiry, tid = _PACK.unpack(packed)
    if code != purpose.value.encode():
        raise InvalidToken("token is for another purpose")
    expires_at = datetime.fromtimestamp(expiry, UTC)
    if expires_at <= (now or datetime.now(UTC)):
        raise ExpiredToken("token expired")
    return TokenData(purpose=purpose, tracking_id=tid.hex(), link_index=index, expires_at=expires_at)


def add_utm(url: str, *, channel: str, campaign: str, content: str) -> str:
    """`url` with utm_source/medium/campaign/content added; tags the marketer set are kept."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    tags = {
        "utm_source": channel,
        "utm_medium": _MEDIUM.get(channel, channel),
        "utm_campaign": campaign,
        "utm_content": content,
    }
    query += [(k, v) for k, v in tags.items() if k not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def utm_content(step: int, variant: str | None) -> str:
    """`step0`, or `step0-<variant>` in an experiment: clicks in web analytics tell the arms apart."""
    return f"step{step}" if variant is None else f"step{step}-{variant}"


def _trackable(url: str, public_url: str) -> bool:
    return url.lower().startswith(("http://", "https://")) and not url.startswith(public_url)


class _LinkBook:
    """Collects original links (with UTM) in order of appearance; one index per distinct link.

    Only `allowed` links are replaced: those the template wrote. A URL that came in with
    profile or event data is left as the customer typed it, never signed by us.
    """

    def __init__(self, url_for: _UrlFor, utm: dict[str, str], public_url: str, allowed: frozenset[str]) -> None:
        self.links: list[str] = []
        self._url_for = url_for
        self._utm = utm
        self._public = public_url
        self._allowed = allowed

    def replace(self, url: str) -> str:
        if url not in self._allowed or not _trackable(url, self._public):
            return url
        tagged = add_utm(url, **self._utm)
        if tagged not in self.links:
            self.links.append(tagged)
        return self._url_for(Purpose.CLICK, self.links.index(tagged))


class _UrlFor:
    def __init__(self, settings: Settings, tid: str, now: datetime) -> None:
        self._secret = settings.tracking_secret.get_secret_value()
        self._base = settings.public_url.rstrip("/")
        self._tid = tid
        self._links_expire = now + timedelta(days=settings.tracking_link_ttl_days)
        self._unsub_expire = now + timedelta(days=settings.unsubscribe_ttl_days)

    def __call__(self, purpose: Purpose, index: int = 0) -> str:
        expires = self._unsub_expire if purpose == Purpose.UNSUBSCRIBE else self._links_expire
        token = sign_token(self._secret, purpose, self._tid, expires, index)
        path = {Purpose.PIXEL: "t/o", Purpose.CLICK: "t/c", Purpose.UNSUBSCRIBE: "u"}[purpose]
        suffix = ".gif" if purpose == Purpose.PIXEL else ""
        return f"{self._base}/{path}/{token}{suffix}"


def rewrite_text_links(text: str, book: _LinkBook) -> str:
    """Replace every http(s) URL the template wrote in plain text with its click-redirect URL."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(TRAILING)
        return book.replace(stripped) + url[len(stripped) :]

    return TEXT_URL.sub(one, text)


def rewrite_html_links(markup: str, book: _LinkBook) -> str:
    """Replace the href of every <a> the template wrote with its click-redirect URL (entities respected)."""

    def one(match: re.Match[str]) -> str:
        prefix, quote, value = match.groups()
        return f"{prefix}{quote}{html.escape(book.replace(html.unescape(value)), quote=True)}{quote}"

    return HREF.sub(one, markup)


def _before_body_end(markup: str, snippet: str) -> str:
    at = markup.lower().rfind("</body>")
    return markup + snippet if at < 0 else markup[:at] + snippet + markup[at:]


def add_pixel(markup: str, pixel_url: str) -> str:
    """HTML with a 1x1 open pixel at the end of the body."""
    img = f'<img src="{html.escape(pixel_url)}" width="1" height="1" alt="" style="display:none" />'
    return _before_body_end(markup, img)


def unsubscribe_link(input: SendMessageInput, settings: Settings, now: datetime) -> str | None:
    """The one-click unsubscribe URL a marketing message will carry (None for transactional).

    Offered to templates as `{{ unsubscribe_url }}`; pass the same `now` to add_tracking,
    which then finds it in the text and adds no footer of its own.
    """
    if input.topic != Topic.MARKETING or input.channel.value not in _UNSUBSCRIBE_CHANNELS:
        return None
    return _UrlFor(settings, tracking_id(input.idempotency_key), now)(Purpose.UNSUBSCRIBE)


def add_tracking(
    rendered: RenderedContent, input: SendMessageInput, settings: Settings, now: datetime | None = None
) -> tuple[RenderedContent, Tracking]:
    """The message as it goes out: links rewritten to signed click redirects (UTM-tagged originals
    kept in `Tracking.links`), an open pixel in email HTML, and for marketing an unsubscribe link.

    Only the links in `rendered.template_links` are rewritten (render_content fills it with
    the links the template itself wrote); any other URL in the text is left alone.
    """
    channel = input.channel.value
    tid = tracking_id(input.idempotency_key)
    url_for = _UrlFor(settings, tid, now or datetime.now(UTC))
    book = _LinkBook(
        url_for,
        {"channel": channel, "campaign": input.journey, "content": utm_content(input.step, input.variant)},
        settings.public_url.rstrip("/"),
        rendered.template_links,
    )
    if channel not in _LINK_CHANNELS:
        return rendered, Tracking(tracking_id=tid, links=[], unsubscribe_url=None)
    url = book.replace(rendered.url) if rendered.url else None
    body = rewrite_text_links(rendered.body, book)
    markup = rewrite_html_links(rendered.html, book) if rendered.html is not None else None
    unsubscribe_url = None
    if input.topic == Topic.MARKETING and channel in _UNSUBSCRIBE_CHANNELS:
        unsubscribe_url = url_for(Purpose.UNSUBSCRIBE)
        # A template that placed {{ unsubscribe_url }} itself gets no second footer.
        if unsubscribe_url not in body:
            body = f"{body}\n\nUnsubscribe: {unsubscribe_url}"
        if markup is not None and html.escape(unsubscribe_url) not in markup and unsubscribe_url not in markup:
            footer = (
                f'<p style="font-size:12px;color:#888888"><a href="{html.escape(unsubscribe_url)}">Unsubscribe</a></p>'
            )
            markup = _before_body_end(markup, footer)
    if markup is not None and channel == "email":
        markup = add_pixel(markup, url_for(Purpose.PIXEL))
    # Messenger buttons are links too: a tap is a click, tracked like any other.
    buttons = tuple(Button(text, book.replace(link)) for text, link in rendered.buttons)
    tracked = replace(rendered, body=body, html=markup, url=url, buttons=buttons)
    return tracked, Tracking(tracking_id=tid, links=book.links, unsubscribe_url=unsubscribe_url)


async def save_tracking(db: Database, idempotency_key: str, tracking: Tracking) -> None:
    """Remember the message's tracking id and original links (first write wins on a retry)."""
    await db.transaction(save_tracking_in, db, idempotency_key, tracking)


def save_tracking_in(session: Session, db: Database, idempotency_key: str, tracking: Tracking) -> None:
    """`save_tracking` inside a transaction the caller holds (the send's claim)."""
    session.connection().execute(
        insert_ignoring_conflicts(db, TrackedMessage)
        .values(tracking_id=tracking.tracking_id, idempotency_key=idempotency_key, links=tracking.links)
        .on_conflict_do_nothing()
    )


def warn_if_dev_secret(settings: Settings) -> bool:
    """Log a warning when tracking links are signed with the public dev default; True if so."""
    if settings.tracking_secret.get_secret_value() == DEV_TRACKING_SECRET:
        log.warning(
            "tracking.dev_secret",
            detail="CASCADE_TRACKING_SECRET is the dev-only default: anyone can forge tracking links",
        )
        return True
    return False
