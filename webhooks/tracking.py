"""Open pixel, click redirect and unsubscribe: the links we put into every message.

- GET /t/o/{token}.gif: always a 1x1 GIF with no-cache headers; a valid token records
  an open and signals the run that sent the message (the first open only).
- GET /t/c/{token}: 302 to the original link of the message (from the database, never
  from the request); a forged or altered token is 404, an expired one 410.
- GET /u/{token}: a confirmation page with a button; POST /u/{token}: unsubscribe
  (also the RFC 8058 one-click POST a mailbox provider sends). Idempotent.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import col, select
from temporalio.client import Client

from cascade.events.engagement import apply_delivery_event
from cascade.events.outbox import EngineUnavailable
from cascade.events.unsubscribe import unsubscribe_contact
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.tracking.tokens import PIXEL_GIF, ExpiredToken, InvalidToken, Purpose, TokenData, verify_token
from models.events import EngagementType
from models.tables import Delivery, TrackedMessage

router = APIRouter(tags=["tracking"])
log = get_logger("webhooks.tracking")

_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


def _verify(request: Request, token: str, purpose: Purpose) -> TokenData:
    settings: Settings = request.app.state.settings
    try:
        return verify_token(settings.tracking_secret.get_secret_value(), token, purpose)
    except ExpiredToken as exc:
        raise HTTPException(410, "token: this link has expired") from exc
    except InvalidToken as exc:
        # The same answer as for an unknown message: a forger learns nothing.
        raise HTTPException(404, "token: no such link") from exc


async def _message(db: Database, tracking_id: str) -> tuple[TrackedMessage, Delivery] | None:
    async with db.session() as session:
        row = (
            await session.exec(
                select(TrackedMessage, Delivery)
                .join(Delivery, col(Delivery.idempotency_key) == col(TrackedMessage.idempotency_key))
                .where(TrackedMessage.tracking_id == tracking_id)
            )
        ).first()
    return (row[0], row[1]) if row else None


async def _record(request: Request, delivery: Delivery, event: EngagementType, source: str) -> None:
    """Record and signal, but never fail the customer's click or image load over it."""
    try:
        await apply_delivery_event(
            request.app.state.client, request.app.state.db, delivery, event, source=source, signal_repeats=False
        )
    except EngineUnavailable:
        log.warning("tracking.signal_failed", workflow_id=delivery.workflow_id, delivery_id=delivery.id)


@router.get(
    "/t/o/{token}",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "A 1x1 transparent GIF, whatever the token"}},
)
async def open_pixel(token: str, request: Request) -> Response:
    """The open pixel of an email: records an open; always answers the GIF."""
    try:
        data = _verify(request, token.removesuffix(".gif"), Purpose.PIXEL)
        found = await _message(request.app.state.db, data.tracking_id)
        if found is not None:
            await _record(request, found[1], EngagementType.OPENED, "pixel")
    except HTTPException:
        log.info("tracking.pixel_refused")
    return Response(PIXEL_GIF, media_type="image/gif", headers=_NO_CACHE)


@router.get(
    "/t/c/{token}",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "Redirect to the message's original link"},
        404: {"description": "Forged, altered or unknown link"},
        410: {"description": "Expired link"},
    },
)
async def click(token: str, request: Request) -> RedirectResponse:
    """A click on a rewritten link: records the click and redirects to the original link."""
    data = _verify(request, token, Purpose.CLICK)
    found = await _message(request.app.state.db, data.tracking_id)
    if found is None or data.link_index >= len(found[0].links):
        raise HTTPException(404, "token: no such link")
    tracked, delivery = found
    await _record(request, delivery, EngagementType.CLICKED, "click")
    return RedirectResponse(tracked.links[data.link_index], status_code=302, headers=_NO_CACHE)


def _page(title: str, text: str, button: bool = False, preferences: str | None = None) -> str:
    form = (
        '<form method="post"><input type="hidden" name="confirm" value="yes">'
        '<button type="submit">Unsubscribe</button></form>'
        if button
        else ""
    )
    if preferences is not None:
        # The preference centre (webhooks/preferences.py): choose channels, not only leave.
        form += f'<p><a href="{html.escape(preferences)}">Choose which messages you get instead</a></p>'

    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<meta name='robots' content='noindex'><title>{html.escape(title)}</title></head>"
        "<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</body></html>"
    )


@router.get("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "Unknown link"}})
async def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    """A confirmation page. GET changes nothing: link scanners and previews fetch URLs."""
    data = _verify(request, token, Purpose.UNSUBSCRIBE)
    if await _message(request.app.state.db, data.tracking_id) is None:
        raise HTTPException(404, "token: no such link")
    return HTMLResponse(
        _page(
            "Unsubscribe",
            "Stop receiving marketing messages on this channel?",
            button=True,
            preferences=f"{token}/preferences",
        ),
        headers=_NO_CACHE,
    )


@router.post("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "Unknown link"}})
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    """Unsubscribe: the page's button, or RFC 8058 one-click (`List-Unsubscribe=One-Click`)."""
    data = _verify(request, token, Purpose.UNSUBSCRIBE)
    db: Database = request.app.state.db
    client: Client = request.app.state.client
    found = await _message(db, data.tracking_id)
    if found is None:
        raise HTTPException(404, "token: no such link")
    delivery = found[1]
    body = (await request.body())[:1024]
    one_click = b"List-Unsubscribe=One-Click" in body
    result = await unsubscribe_contact(
        client,
        db,
        customer_id=delivery.customer_id,
        channel=delivery.channel,
        contact_point_id=delivery.contact_point_id,
        source="list-unsubscribe" if one_click else "unsubscribe link",
        delivery=delivery,
        reason="list-unsubscribe one-click" if one_click else "unsubscribe link",
    )
    log.info(
        "tracking.unsubscribed",
        workflow_id=delivery.workflow_id,
        delivery_id=delivery.id,
        one_click=one_click,
        changed=result.changed,
        signalled=[s.workflow_id for s in result.signals if s.signalled],
    )
    return HTMLResponse(
        _page("You are unsubscribed", "You will no longer receive marketing messages on this channel."),
        headers=_NO_CACHE,
    )
