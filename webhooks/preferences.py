"""The preference centre behind the unsubscribe link: channels, topics and a preferred channel.

- GET /u/{token}/preferences: the customer's channels and topics as checkboxes, the
  preferred channel as a radio button; server-rendered, a plain form (no JavaScript).
- POST /u/{token}/preferences: saves them as consents and a preference, each with its
  source ("preference centre") and time. A choice that does not fit (a channel the
  customer has no address on) is a 422 page naming it, and changes nothing.

The token is the message's unsubscribe token: whoever received the message may manage
the preferences of the customer it was sent to, as with the unsubscribe link itself.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import FileSystemLoader, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.routing.preferences import PreferenceError, Preferences, load_preferences, save_preferences
from cascade.tracking.tokens import Purpose
from models.tables import Topic, utcnow
from webhooks.tracking import _NO_CACHE, _message, _verify

router = APIRouter(tags=["preferences"])
log = get_logger("webhooks.preferences")

SOURCE = "preference centre"
_TEMPLATES = SandboxedEnvironment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
_TOPICS = [(Topic.MARKETING.value, "Offers and news"), (Topic.TRANSACTIONAL.value, "Orders and receipts")]
_LABELS = {
    "email": "Email",
    "telegram": "Telegram",
    "vk": "VK",
    "viber": "Viber",
    "whatsapp": "WhatsApp",
    "webpush": "Browser notifications",
    "fcm": "App notifications",
    "sms": "SMS",
    "voice": "Phone calls",
}
# Form bodies are a few hundred bytes; anything much larger is not our form.
_MAX_FORM = 16 * 1024


def _render(prefs: Preferences, saved: str | None = None, error: str | None = None) -> str:
    return _TEMPLATES.get_template("preferences.html").render(
        channels=prefs.channels,
        channel_labels=_LABELS,
        topics=_TOPICS,
        accepted=prefs.is_accepted,
        preferred=prefs.preferred_channel,
        saved=saved,
        error=error,
    )


async def _customer(request: Request, token: str) -> str:
    data = _verify(request, token, Purpose.UNSUBSCRIBE)
    found = await _message(request.app.state.db, data.tracking_id)
    if found is None:
        raise HTTPException(404, "token: no such link")
    return found[1].customer_id


@router.get("/u/{token}/preferences", response_class=HTMLResponse, responses={404: {"description": "Unknown link"}})
async def preferences_page(token: str, request: Request) -> HTMLResponse:
    """The form with the customer's current choices; GET changes nothing."""
    customer_id = await _customer(request, token)
    db: Database = request.app.state.db
    async with db.session() as session:
        prefs = await load_preferences(session, customer_id)
    return HTMLResponse(_render(prefs), headers=_NO_CACHE)


@router.post(
    "/u/{token}/preferences",
    response_class=HTMLResponse,
    responses={404: {"description": "Unknown link"}, 422: {"description": "A choice that does not fit"}},
)
async def save_preferences_form(token: str, request: Request) -> HTMLResponse:
    """Save the submitted form: ticked pairs accepted, every other pair declined."""
    customer_id = await _customer(request, token)
    db: Database = request.app.state.db
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise HTTPException(413, "body: the form is too large")
    form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    stop_all = form.get("action", ["save"])[-1] == "none"
    accepted: set[tuple[str, str]] = set()
    for item in form.get("accept", []):
        channel, _, topic = item.partition(":")
        accepted.add((channel, topic or Topic.MARKETING.value))
    preferred = (form.get("preferred_channel", [""])[-1] or None) if not stop_all else None
    if stop_all:
        accepted = {pair for pair in accepted if pair[1] != Topic.MARKETING.value}
    try:
        async with db.session() as session:
            changes = await save_preferences(session, customer_id, accepted, preferred, SOURCE, utcnow())
    except PreferenceError as exc:
        async with db.session() as session:
            prefs = await load_preferences(session, customer_id)
        return HTMLResponse(_render(prefs, error=str(exc)), status_code=422, headers=_NO_CACHE)
    log.info("preferences.saved", customer_id=customer_id, changes=changes)
    async with db.session() as session:
        prefs = await load_preferences(session, customer_id)
    return HTMLResponse(_render(prefs, saved=", ".join(changes) or "no changes"), headers=_NO_CACHE)
