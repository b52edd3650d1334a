"""The marketer's console: server-rendered pages over the analytics, behind a login.

Pages (all under /console, none without an API key or a login made with one):
overview (last N days: messages, cost, savings, conversions), one journey's funnel with
charts, running journeys with Temporal UI links, one customer's timeline, experiments (per
arm: conversion with its interval, P(beat control), the sample-ratio check), the forecast
form; /console/api/forecast answers the same forecast as JSON.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import FileSystemLoader, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from sqlalchemy import select

from analytics import charts
from analytics.forecast_model import ForecastSettings
from analytics.forecast_service import JourneyForecast, forecast_journey
from analytics.funnel import (
    FunnelQuery,
    FunnelRow,
    deliveries,
    entries,
    events,
    funnel,
    reaction_times,
    regroup,
    runs,
)
from analytics.money import customers, savings_report
from analytics.recent import page_snapshot
from cascade.audiences.definition import SegmentCatalog, SegmentDefinitionError
from cascade.audiences.service import load_segments
from cascade.experiments.queries import experiment_names
from cascade.experiments.report import ExperimentReport
from cascade.experiments.results import UnknownExperimentError, experiment_report
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import JourneyDefinitionError, journey_files, load_journey
from models.tables import utcnow
from webhooks.console.auth import COOKIE, NotLoggedIn, Viewer, session_cookie, viewer_of
from webhooks.keys import authenticate

BASE = "/console"
RUNNING_LIMIT = 200
TIMELINE_LIMIT = 500
_templates = SandboxedEnvironment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"], default_for_string=True),
)

router = APIRouter(prefix=BASE, include_in_schema=False)


async def page_viewer(request: Request) -> Viewer:
    """The viewer, or a redirect to the login page that comes back here."""
    try:
        return await viewer_of(request)
    except NotLoggedIn:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = f"{BASE}/login?" + urllib.parse.urlencode({"next": target})
        raise HTTPException(status_code=303, detail="log in first", headers={"Location": location}) from None


async def api_viewer(request: Request) -> Viewer:
    """The viewer, or 401 for the JSON API."""
    try:
        return await viewer_of(request)
    except NotLoggedIn as exc:
        raise HTTPException(status_code=401, detail=str(exc), headers={"WWW-Authenticate": "X-API-Key"}) from None


PageViewer = Annotated[Viewer, Depends(page_viewer)]
Days = Annotated[int | None, Query(ge=1, le=3650, description="Look back this many days")]


def _render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(base=BASE, **context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def _state(request: Request) -> tuple[Database, Settings]:
    return request.app.state.db, request.app.state.settings


def _chart(chart: charts.BarChart, div_id: str) -> Markup:
    # plotly's own HTML: the figure's data is JSON-encoded by plotly, not by us.
    return Markup(charts.html_fragment(chart, div_id))


def _temporal_list(settings: Settings, query: str) -> str:
    ui = settings.temporal_ui_url.rstrip("/")
    namespace = urllib.parse.quote(settings.temporal_namespace, safe="")
    return f"{ui}/namespaces/{namespace}/workflows?" + urllib.parse.urlencode({"query": query})


def _keyword(value: str) -> str:
    # A Temporal visibility query string literal: quotes and backslashes escaped.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _safe_next(value: str | None) -> str:
    if value and value.startswith(BASE) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{BASE}/"


@router.get("/static/plotly.min.js")
async def plotly_js() -> FileResponse:
    """plotly's JavaScript from the installed package: the charts work offline."""
    return FileResponse(charts.plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/login", response_class=HTMLResponse)
async def login_form(next: str | None = None) -> HTMLResponse:
    """The login form (an API key)."""
    return _render("login.html", title="Log in", next=_safe_next(next))


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the key; on success set the session cookie and go where the viewer was going."""
    db, settings = _state(request)
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("api_key") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    row = await authenticate(db, key) if key else None
    if row is None:
        return _render(
            "login.html", 401, title="Log in", next=target, error="That API key is not valid or was revoked."
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        session_cookie(settings, row.prefix),
        max_age=int(settings.console_session_hours * 3600),
        path=BASE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    """Forget the session cookie."""
    response = RedirectResponse(f"{BASE}/login", status_code=303)
    response.delete_cookie(COOKIE, path=BASE)
    return response


def _range(settings: Settings, days: int | None) -> tuple[int, datetime]:
    """The look-back in days and where it starts: midnight (UTC) N days ago, so whole days
    (rolled up) make the range, and not the tail of a day read from the log."""
    days = days or settings.console_days
    start = utcnow() - timedelta(days=days)
    return days, start.replace(hour=0, minute=0, second=0, microsecond=0)


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, viewer: PageViewer, days: Days = None) -> HTMLResponse:
    """Last N days: messages, cost, savings, conversions; funnel per journey; charts."""
    db, settings = _state(request)
    days, since = _range(settings, days)
    # One snapshot for the whole page: "as of" and every figure are read together.
    async with page_snapshot(db, settings.channel_costs) as snap:
        # One funnel by journey and channel gives the total and both groupings (sums).
        rows = await funnel(db, FunnelQuery(since=since, by=["journey", "channel"]), snap=snap)
        savings = await savings_report(
            db, FunnelQuery(since=since), settings.channel_costs, settings.currency, snap=snap
        )
    total = regroup(rows, [])
    journeys = regroup(rows, ["journey"])
    by_channel = regroup(rows, ["channel"])
    return _render(
        "overview.html",
        title="Overview",
        viewer=viewer,
        charts=True,
        days=days,
        since=since,
        as_of=snap.as_of(),
        currency=settings.currency,
        total=total[0] if total else FunnelRow(key={}),
        journeys=journeys,
        savings=savings.total,
        channel_chart=_chart(charts.funnel_chart(by_channel, "Funnel per channel"), "channel-funnel"),
        savings_chart=_chart(charts.savings_chart(savings), "savings"),
    )


@router.get("/journeys/{name}", response_class=HTMLResponse)
async def journey_page(request: Request, name: str, viewer: PageViewer, days: Days = None) -> HTMLResponse:
    """One journey: runs and outcomes, funnel per step, time to react, savings."""
    db, settings = _state(request)
    days, since = _range(settings, days)
    query = FunnelQuery(journey=name, since=since)
    async with page_snapshot(db, settings.channel_costs) as snap:
        steps = await funnel(db, query.model_copy(update={"by": ["step", "channel"]}), snap=snap)
        runs_in_range = await entries(db, query, snap=snap)
        times = await reaction_times(db, query, snap=snap)
        savings = await savings_report(db, query, settings.channel_costs, settings.currency, snap=snap)
    entry = runs_in_range[0] if runs_in_range else None
    return _render(
        "journey.html",
        title=f"Journey {name}",
        viewer=viewer,
        charts=True,
        days=days,
        since=since,
        as_of=snap.as_of(),
        journey=name,
        currency=settings.currency,
        steps=steps,
        entered=entry.entered if entry else 0,
        running=entry.running if entry else 0,
        outcomes=entry.outcomes if entry else {},
        savings=savings.total,
        funnel_chart=_chart(charts.funnel_chart(steps, f"Funnel of {name} per step"), "step-funnel"),
        react_chart=_chart(charts.reaction_chart(times), "react-times"),
        temporal_link=_temporal_list(settings, f"Journey={_keyword(name)}"),
    )


@router.get("/running", response_class=HTMLResponse)
async def running(request: Request, viewer: PageViewer) -> HTMLResponse:
    """Runs not finished yet, newest first, with links into Temporal UI."""
    db, settings = _state(request)
    r = runs.c
    stmt = select(r.workflow_id, r.run_id, r.journey, r.customer_id, r.campaign, r.started_at)
    stmt = stmt.where(r.finished_at.is_(None)).order_by(r.started_at.desc(), r.id.desc()).limit(RUNNING_LIMIT)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    ui = settings.temporal_ui_url.rstrip("/")
    namespace = urllib.parse.quote(settings.temporal_namespace, safe="")
    items = [
        {
            **row,
            "journey_link": _temporal_list(settings, f"Journey={_keyword(row['journey'])}"),
            "customer_link": _temporal_list(settings, f"CustomerId={_keyword(row['customer_id'])}"),
            "workflow_link": f"{ui}/namespaces/{namespace}/workflows/"
            f"{urllib.parse.quote(row['workflow_id'], safe='')}/{urllib.parse.quote(row['run_id'], safe='')}/history",
        }
        for row in rows
    ]
    return _render("running.html", title="Running journeys", viewer=viewer, runs=items, limit=RUNNING_LIMIT)


@router.get("/customers", response_class=HTMLResponse)
async def customer_search(viewer: PageViewer, id: str | None = None) -> Response:
    """The timeline form; with ?id= the customer's timeline."""
    if id:
        return RedirectResponse(f"{BASE}/customers/{urllib.parse.quote(id.strip(), safe='')}", status_code=303)
    return _render("customer.html", title="Customers", viewer=viewer, customer_id=None)


def _item(at: Any, what: str, journey: str | None, channel: str | None, detail: str | None) -> dict[str, Any]:
    return {"at": at, "what": what, "journey": journey, "channel": channel, "detail": detail}


async def timeline(db: Database, customer_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(name, items newest first): messages, events and journey starts and ends of a customer."""
    d, e, r = deliveries.c, events.c, runs.c
    items: list[dict[str, Any]] = []
    async with db.engine.connect() as conn:
        name = (await conn.execute(select(customers.c.name).where(customers.c.id == customer_id))).scalar_one_or_none()
        messages = (
            select(d.journey, d.step, d.channel, d.status, d.created_at, d.sent_at, d.failure_code)
            .where(d.customer_id == customer_id)
            .order_by(d.created_at.desc())
            .limit(TIMELINE_LIMIT)
        )
        for m in await conn.execute(messages):
            detail = f"step {m.step}: {m.status}" + (f" ({m.failure_code})" if m.failure_code else "")
            items.append(_item(m.sent_at or m.created_at, "message", m.journey, m.channel, detail))
        happened = (
            select(e.type, e.channel, e.occurred_at, e.source, e.properties)
            .where(e.customer_id == customer_id)
            .order_by(e.occurred_at.desc())
            .limit(TIMELINE_LIMIT)
        )
        for ev in await conn.execute(happened):
            amount = (ev.properties or {}).get("amount")
            detail = f"from {ev.source}" + (f", amount {amount}" if amount is not None else "")
            items.append(_item(ev.occurred_at, ev.type, None, ev.channel, detail))
        journeys = (
            select(r.journey, r.campaign, r.started_at, r.finished_at, r.outcome)
            .where(r.customer_id == customer_id)
            .order_by(r.started_at.desc())
            .limit(TIMELINE_LIMIT)
        )
        for run in await conn.execute(journeys):
            campaign = f"campaign {run.campaign}" if run.campaign else None
            items.append(_item(run.started_at, "journey started", run.journey, None, campaign))
            if run.finished_at is not None:
                items.append(_item(run.finished_at, "journey ended", run.journey, None, run.outcome))
    # SQLite hands back naive datetimes, PostgreSQL aware ones: order by their UTC text.
    items.sort(key=lambda item: str(item["at"])[:26], reverse=True)
    return name, items


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
async def customer_timeline(request: Request, customer_id: str, viewer: PageViewer) -> HTMLResponse:
    """Every message, reaction, event and journey of one customer, newest first."""
    db, _ = _state(request)
    name, items = await timeline(db, customer_id)
    return _render(
        "customer.html", title=f"Customer {customer_id}", viewer=viewer, customer_id=customer_id, name=name, items=items
    )


@router.get("/experiments", response_class=HTMLResponse)
async def experiments(request: Request, viewer: PageViewer) -> HTMLResponse:
    """Every experiment with an entrant: journey, mode, customers per arm, and whether the split is off."""
    db, _ = _state(request)
    reports: list[ExperimentReport] = [await experiment_report(db, name) for name in await experiment_names(db)]
    return _render("experiments.html", title="Experiments", viewer=viewer, reports=reports)


@router.get("/experiments/{name}", response_class=HTMLResponse)
async def experiment_page(request: Request, name: str, viewer: PageViewer) -> HTMLResponse:
    """One experiment: the funnel per arm, conversion with its interval, lift, P(beat control), SRM."""
    db, settings = _state(request)
    try:
        report = await experiment_report(db, name)
    except UnknownExperimentError as exc:
        return _render("error.html", 404, title="No such experiment", viewer=viewer, message=str(exc))
    stats = {v.name: v for v in report.stats.variants} if report.stats else {}
    return _render(
        "experiment.html",
        title=f"Experiment {name}",
        viewer=viewer,
        report=report,
        stats=stats,
        currency=settings.currency,
        temporal_link=_temporal_list(settings, f"Journey={_keyword(report.journey)}"),
    )


def _journey_names() -> list[str]:
    return sorted(path.stem for path in journey_files())


def _segments(settings: Settings) -> SegmentCatalog:
    """The segment catalog; ValueError when a segment file does not load."""
    try:
        return load_segments(settings)
    except SegmentDefinitionError as exc:
        raise ValueError(f"segment: the segment files do not load: {exc}") from None


async def _forecast(request: Request, journey: str, audience: str | None, segment: str | None) -> JourneyForecast:
    """The forecast the form or the API asks for; ValueError names the bad field."""
    db, settings = _state(request)
    if journey not in _journey_names():
        raise ValueError(f"journey: no journey named {journey!r}")
    count: int | None = None
    if audience not in (None, ""):
        if not audience.strip().isdigit():
            raise ValueError(f"audience: {audience!r} is not a whole number of customers")
        count = int(audience)
    try:
        spec = load_journey(journey)
    except JourneyDefinitionError as exc:
        raise ValueError(f"journey: {exc}") from None
    return await forecast_journey(
        db,
        spec,
        settings.channel_costs,
        audience=count,
        segment=segment or None,
        catalog=_segments(settings) if segment else None,
        settings=ForecastSettings(draws=2000, seed=0),
    )


@router.get("/forecast", response_class=HTMLResponse)
async def forecast_page(
    request: Request,
    viewer: PageViewer,
    journey: str | None = None,
    audience: str | None = None,
    segment: str | None = None,
) -> HTMLResponse:
    """The forecast form; with ?journey= the three scenarios, a chart and the assumptions."""
    _, settings = _state(request)
    try:
        segment_names = _segments(settings).names()
    except ValueError:
        segment_names = []  # the form still works with a number; asking for a segment says why not
    context: dict[str, Any] = {
        "title": "Forecast",
        "viewer": viewer,
        "journeys": _journey_names(),
        "journey": journey,
        "audience_text": audience or "",
        "segments": segment_names,
        "segment": segment or "",
        "currency": settings.currency,
    }
    if journey is None:
        return _render("forecast.html", **context)
    try:
        result = await _forecast(request, journey, audience, segment)
    except ValueError as exc:
        return _render("forecast.html", 422, error=str(exc), **context)
    return _render(
        "forecast.html",
        charts=True,
        result=result,
        chart=_chart(charts.forecast_chart(result.forecast), "forecast"),
        **context,
    )


@router.get("/api/forecast")
async def forecast_api(
    request: Request,
    viewer: Annotated[Viewer, Depends(api_viewer)],
    journey: str,
    audience: Annotated[str | None, Query(description="customers; default: who meets the entry rules")] = None,
    segment: Annotated[str | None, Query(description="send to this segment's members (counted now)")] = None,
) -> dict[str, Any]:
    """The forecast as JSON (X-API-Key)."""
    try:
        result = await _forecast(request, journey, audience, segment)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return result.model_dump(mode="json")
