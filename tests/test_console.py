"""The console over real HTTP (uvicorn, SQLite and PostgreSQL): never open without a key,
every page shows what the history holds. The browser tests are in test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from temporalio.client import Client

from analytics.recent import refresh_recent_rollups
from cascade.experiments.results import experiment_report
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.tables import Customer, ExperimentAssignment, utcnow
from tests.analytics_rows import History, add_customer
from tests.helpers import serve_app
from tests.test_experiments_results import EXPERIMENT, JOURNEY, populate
from webhooks.app import create_app
from webhooks.console.auth import COOKIE, cookie_prefix, session_cookie
from webhooks.keys import create_key, revoke_key

pytestmark = pytest.mark.postgres

PAGES = [
    "/console/",
    "/console/journeys/winback",
    "/console/running",
    "/console/customers/ann",
    "/console/forecast",
    "/console/experiments",
    "/console/experiments/sale-subject",
]


async def fill_console_history(db: Database) -> None:
    """A few days of winback and welcome runs, ending now (the console looks back 30 days)."""
    now = utcnow()
    start = now - timedelta(days=10)
    await add_customer(db, "ann", {"email": True, "telegram": True, "sms": True})
    await add_customer(db, "bob", {"email": True, "sms": True})
    h = History()
    r = h.run("winback", "ann", campaign="autumn", at=start, outcome="reacted")
    h.send(
        r,
        "winback",
        "ann",
        0,
        "email",
        cost=0.001,
        at=start,
        status="clicked",
        opened_after=timedelta(minutes=2),
        clicked_after=timedelta(minutes=3),
    )
    h.event("ann", "purchase", start + timedelta(hours=2), amount=42.0)
    r = h.run("winback", "bob", campaign="autumn", at=start)  # still running
    h.send(r, "winback", "bob", 0, "email", cost=0.001, at=start)
    h.send(
        r,
        "winback",
        "bob",
        2,
        "sms",
        cost=0.05,
        at=start + timedelta(days=7),
        status="opened",
        opened_after=timedelta(hours=1),
    )
    r = h.run("welcome", "cid", at=now - timedelta(days=1))
    h.send(r, "welcome", "cid", 0, "email", cost=0.001, at=now - timedelta(days=1))
    await h.save(db)


@dataclass
class Console:
    url: str
    key: str
    prefix: str
    db: Database
    settings: Settings


@pytest.fixture
async def console(client: Client, settings: Settings, any_db: Database) -> AsyncIterator[Console]:
    await fill_console_history(any_db)
    key, row = await create_key(any_db, "shop1")
    async with serve_app(create_app(settings, client=client, db=any_db)) as url:
        yield Console(url, key, row.prefix, any_db, settings)


async def _login(web: httpx.AsyncClient, key: str, next: str = "/console/") -> httpx.Response:
    return await web.post("/console/login", data={"api_key": key, "next": next})


async def test_no_page_opens_without_credentials(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as web:
        for page in PAGES:
            reply = await web.get(page)
            assert reply.status_code == 303, page
            location = urlsplit(reply.headers["location"])
            assert location.path == "/console/login" and parse_qs(location.query)["next"] == [page]
            assert "ann" not in reply.text and "winback" not in reply.text
        api = await web.get("/console/api/forecast", params={"journey": "winback"})
        assert api.status_code == 401
        web.cookies.set(COOKIE, f"{console.prefix}.9999999999.deadbeef")
        assert (await web.get("/console/")).status_code == 303
        wrong = await web.get("/console/api/forecast", params={"journey": "winback"}, headers={"X-API-Key": "csk_x_y"})
        assert wrong.status_code == 401


async def test_login_with_a_key_opens_the_pages(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as web:
        bad = await _login(web, "csk_nope_nope")
        assert bad.status_code == 401 and "not valid" in bad.text and COOKIE not in bad.cookies
        good = await _login(web, console.key, next="/console/running")
        assert good.status_code == 303 and good.headers["location"] == "/console/running"
        assert (
            "httponly" in good.headers["set-cookie"].lower() and "samesite=strict" in good.headers["set-cookie"].lower()
        )
        overview = await web.get("/console/")
        assert overview.status_code == 200
        assert 'id="sent">4<' in overview.text and 'id="conversions">1<' in overview.text
        assert '<script src="/console/static/plotly.min.js">' in overview.text
        journey = await web.get("/console/journeys/winback")
        assert 'id="entered">2<' in journey.text and "Funnel of winback per step" in journey.text
        running = await web.get("/console/running")
        assert "bob" in running.text and "cid" in running.text and ">ann<" not in running.text
        # Temporal UI filtered by the search attributes.
        assert "query=Journey%3D%22winback%22" in running.text and "query=CustomerId%3D%22bob%22" in running.text
        timeline = await web.get("/console/customers/ann")
        assert "purchase" in timeline.text and "amount 42.0" in timeline.text and "journey ended" in timeline.text
        js = await web.get("/console/static/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000


async def test_pages_say_how_fresh_the_recent_days_are(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url, headers={"X-API-Key": console.key}) as web:
        live = await web.get("/console/")
        assert "Live: every figure is read from the delivery log" in live.text
        # The background refresh rolls the recent days up as of now: same figures, and the page says so.
        refreshed = await refresh_recent_rollups(console.db, console.settings.channel_costs)
        as_of = f"{refreshed.as_of:%Y-%m-%d %H:%M} UTC"
        for page in ("/console/", "/console/journeys/winback"):
            reply = await web.get(page)
            assert f'from before <time datetime="{refreshed.as_of.isoformat()}">{as_of}</time> are as of then' in (
                reply.text
            )
        overview = await web.get("/console/")
        assert 'id="sent">4<' in overview.text and 'id="conversions">1<' in overview.text
        journey = await web.get("/console/journeys/winback")
        assert 'id="entered">2<' in journey.text
        # A message after the refresh is counted at once (read from the log).
        h = History()
        r = h.run("welcome", "bob", at=utcnow())
        h.send(r, "welcome", "bob", 0, "email", cost=0.001, at=utcnow())
        await h.save(console.db)
        assert 'id="sent">5<' in (await web.get("/console/")).text


async def test_an_open_redirect_is_not_possible_through_next(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as web:
        reply = await _login(web, console.key, next="//evil.example/console")
        assert reply.headers["location"] == "/console/"


async def test_revoking_the_key_ends_its_sessions(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as web:
        await _login(web, console.key)
        assert (await web.get("/console/running")).status_code == 200
        await revoke_key(console.db, console.prefix)
        assert (await web.get("/console/running")).status_code == 303


def test_session_cookies_expire_and_cannot_be_altered(settings: Settings) -> None:
    cookie = session_cookie(settings, "abc", now=1000.0)
    assert cookie_prefix(settings, cookie, now=1001.0) == "abc"
    assert cookie_prefix(settings, cookie, now=1000.0 + settings.console_session_hours * 3600 + 1) is None
    prefix, expires, signature = cookie.split(".")
    assert cookie_prefix(settings, f"{prefix}.{int(expires) + 999999}.{signature}", now=1001.0) is None
    assert cookie_prefix(settings, f"other.{expires}.{signature}", now=1001.0) is None


async def test_forecast_api_and_form_name_bad_fields(console: Console) -> None:
    headers = {"X-API-Key": console.key}
    async with httpx.AsyncClient(base_url=console.url, headers=headers, timeout=60) as web:
        ok = await web.get("/console/api/forecast", params={"journey": "winback", "audience": "500"})
        assert ok.status_code == 200
        data = ok.json()
        assert data["forecast"]["audience"] == 500
        assert [s["name"] for s in data["forecast"]["scenarios"]] == ["pessimistic", "neutral", "optimistic"]
        bad = await web.get("/console/api/forecast", params={"journey": "winback", "audience": "lots"})
        assert bad.status_code == 422 and "audience" in bad.json()["error"]
        nosuch = await web.get("/console/forecast", params={"journey": "nosuch"})
        assert nosuch.status_code == 422 and "journey: no journey named" in nosuch.text
        assert "Traceback" not in nosuch.text


async def test_forecast_of_a_segment_in_the_api_and_the_form(console: Console) -> None:
    async with console.db.session() as session:
        # dormant: last purchase 90-365 days ago (the built-in thresholds).
        session.add(Customer(id="dora", last_purchase_at=utcnow() - timedelta(days=150)))
    headers = {"X-API-Key": console.key}
    async with httpx.AsyncClient(base_url=console.url, headers=headers, timeout=60) as web:
        api = await web.get("/console/api/forecast", params={"journey": "winback", "segment": "dormant"})
        assert api.status_code == 200, api.text
        assert api.json()["forecast"]["audience"] == 1 and api.json()["segment"] == "dormant"
        page = await web.get("/console/forecast", params={"journey": "winback", "segment": "dormant"})
        assert page.status_code == 200 and "1 customers are in segment dormant now" in page.text
        assert '<option value="dormant" selected>' in page.text
        nosuch = await web.get("/console/api/forecast", params={"journey": "winback", "segment": "nobody"})
        assert nosuch.status_code == 422 and "segment: no segment named 'nobody'" in nosuch.json()["error"]
        both = await web.get("/console/forecast", params={"journey": "winback", "segment": "dormant", "audience": "9"})
        assert both.status_code == 422 and "not both" in both.text


async def test_experiments_pages_show_each_arm_with_interval_beat_probability_and_srm(console: Console) -> None:
    await populate(console.db, n=150)
    report = await experiment_report(console.db, EXPERIMENT.name)
    assert report.stats is not None and report.stats.sample_ratio is not None
    headers = {"X-API-Key": console.key}
    async with httpx.AsyncClient(base_url=console.url, headers=headers, timeout=60) as web:
        listing = await web.get("/console/experiments")
        assert listing.status_code == 200
        row = _row(listing.text, EXPERIMENT.name)
        assert JOURNEY.name in row and ">ok<" in row and f"<td>{sum(x.recipients for x in report.funnel)}</td>" in row

        page = await web.get(f"/console/experiments/{EXPERIMENT.name}")
        assert page.status_code == 200
        assert "Sample ratio ok" in page.text
        for arm in report.stats.variants:
            line = _row(page.text, arm.name)
            assert f"<td>{arm.recipients}</td>" in line
            interval = arm.conversion_rate_interval
            assert interval is not None and interval.low is not None and interval.high is not None
            assert f"{100 * interval.low:.2f}-{100 * interval.high:.2f}%" in line
            beat = arm.versus_control.probability_to_beat_control if arm.versus_control else None
            # The same analytics the CLI prints: control has no P(beat), each variant its own.
            assert (f'class="beat">{100 * beat:.1f}%' if beat is not None else 'class="beat">-') in line

        # Every later entrant lands in one arm: the split is off and the pages say so.
        async with console.db.session() as session:
            for i in range(300):
                session.add(
                    ExperimentAssignment(
                        experiment=EXPERIMENT.name,
                        customer_id=f"skew{i}",
                        variant="plain",
                        journey=JOURNEY.name,
                        workflow_id=f"w-skew{i}",
                        run_id="r1",
                        assigned_at=utcnow(),
                    )
                )
        skewed = await web.get(f"/console/experiments/{EXPERIMENT.name}")
        assert "Sample ratio mismatch" in skewed.text and 'role="alert"' in skewed.text
        assert "mismatch" in _row((await web.get("/console/experiments")).text, EXPERIMENT.name)

        missing = await web.get("/console/experiments/nosuch")
        assert missing.status_code == 404 and "no customer has entered it" in missing.text


def _row(html: str, first_cell: str) -> str:
    """The table row whose first cell starts with `first_cell` (a link or text)."""
    rows: list[str] = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    for row in rows:
        cell = re.sub(r"<[^>]+>", "", row.split("</td>", 1)[0]).strip()
        if cell.split(" ")[0] == first_cell:
            return row
    raise AssertionError(f"no row for {first_cell!r}")
