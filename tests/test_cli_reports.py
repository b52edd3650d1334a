"""`cascade report funnel|cost|savings` over a real SQLite database filled with hand-made history."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlmodel import SQLModel
from typer.testing import CliRunner

from cascade.cli.reports import app
from cascade.infra.db import Database, migrate
from cascade.infra.settings import get_settings
from tests.analytics_rows import T0, History, add_customer

runner = CliRunner()


async def _fill(url: str) -> None:
    db = Database.from_url(url)
    await migrate(db.engine)
    await add_customer(db, "ann", {"email": True, "telegram": True, "sms": True})
    await add_customer(db, "bob", {"email": True, "sms": True})
    h = History()
    r = h.run("winback", "ann", campaign="autumn", outcome="reacted")
    h.send(
        r, "winback", "ann", 0, "email", cost=0.001, status="clicked", clicked_after=timedelta(hours=1), variant="plain"
    )
    h.event("ann", "purchase", T0 + timedelta(days=1), amount=30.0)
    h.member("ann", "dormant", T0 - timedelta(days=200))
    r = h.run("winback", "bob", campaign="autumn", outcome="reacted")
    h.send(r, "winback", "bob", 0, "email", cost=0.001, variant="personal")
    h.skip(r, "winback", "bob", 1, "telegram", "no telegram contact", campaign="autumn", variant="personal")
    h.send(
        r,
        "winback",
        "bob",
        2,
        "sms",
        cost=0.05,
        at=T0 + timedelta(days=14),
        status="opened",
        opened_after=timedelta(minutes=5),
    )
    await h.save(db)
    # Their experiment arms, as the journey records them (a run's arm for savings --variant).
    assignments = SQLModel.metadata.tables["experiment_assignments"]
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(assignments),
            [
                {
                    "experiment": "subject",
                    "customer_id": run["customer_id"],
                    "variant": "plain" if run["customer_id"] == "ann" else "personal",
                    "journey": "winback",
                    "workflow_id": run["workflow_id"],
                    "run_id": run["run_id"],
                    "assigned_at": T0,
                }
                for run in h.runs
            ],
        )
    await db.dispose()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    asyncio.run(_fill(url))
    monkeypatch.setenv("CASCADE_DATABASE_URL", url)
    monkeypatch.setenv("CASCADE_CURRENCY", "EUR")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps headers in a narrow terminal
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_funnel_as_json_by_channel(database: str) -> None:
    result = runner.invoke(app, ["funnel", "--journey", "winback", "--by", "channel", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["channel"]: r for r in json.loads(result.output)}
    assert (rows["email"]["sent"], rows["email"]["clicked"], rows["email"]["converted"]) == (2, 1, 1)
    assert (rows["sms"]["sent"], rows["sms"]["opened"], rows["sms"]["revenue"]) == (1, 1, 0.0)


def test_funnel_table_shows_the_groups(database: str) -> None:
    result = runner.invoke(app, ["funnel", "--by", "step", "--since", "2026-10-01"])
    assert result.exit_code == 0, result.output
    assert "Funnel" in result.output and "converted" in result.output
    # Step 0 had two messages, step 2 one.
    lines = [line for line in result.output.splitlines() if line.strip().startswith(("│ 0", "│ 2"))]
    assert len(lines) == 2


def test_cost_as_csv_in_the_shops_currency(database: str) -> None:
    result = runner.invoke(app, ["cost", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {r["channel"]: r for r in csv.DictReader(io.StringIO(result.output))}
    assert rows["email"]["currency"] == "EUR"
    assert float(rows["email"]["cost_per_conversion"]) == pytest.approx(0.002)
    assert rows["sms"]["cost_per_conversion"] == ""


def test_savings_table_and_charts_to_files(database: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["savings", "--format", "json"])
    assert result.exit_code == 0, result.output
    total = json.loads(result.output)[-1]
    # ann: 0.001 of 0.051 everywhere; bob: 0.051 of 0.051.
    assert total["journey"] == "TOTAL" and total["actual"] == pytest.approx(0.052)
    assert total["all_usable"] == pytest.approx(0.102)

    png = tmp_path / "savings.png"
    assert runner.invoke(app, ["savings", "--format", "png", "--output", str(png)]).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = tmp_path / "funnel.html"
    assert runner.invoke(app, ["funnel", "--by", "channel", "-f", "html", "-o", str(html)]).exit_code == 0
    page = html.read_text()
    # plotly's JavaScript is inline (offline): no script is loaded from anywhere.
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    assert re.search(r"<script[^>]*\bsrc=", page) is None


def test_funnel_by_variant_with_skips_by_reason(database: str) -> None:
    result = runner.invoke(app, ["funnel", "--journey", "winback", "--by", "variant", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.output)}
    # bob's sms was sent outside the experiment's rows (no variant): a group of its own.
    assert rows["plain"]["converted"] == 1 and rows["personal"]["converted"] == 0
    assert rows["personal"]["skipped_by_reason"] == {"no telegram contact": 1}
    table = runner.invoke(app, ["funnel", "--by", "variant"])
    assert table.exit_code == 0, table.output
    assert "no telegram contact: 1" in table.output


@pytest.mark.parametrize(
    ("args", "actual", "all_usable"),
    [
        # Only ann was dormant when her run started: 0.001 of 0.051 everywhere.
        (["--segment", "dormant"], 0.001, 0.051),
        # Only bob's run is in the "personal" arm: email and sms, everything he could get.
        (["--variant", "personal"], 0.051, 0.051),
        (["--variant", "plain"], 0.001, 0.051),
    ],
)
def test_savings_of_one_segment_or_arm(database: str, args: list[str], actual: float, all_usable: float) -> None:
    result = runner.invoke(app, ["savings", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    total = json.loads(result.output)[-1]
    assert total["journey"] == "TOTAL" and total["runs"] == 1
    assert (total["actual"], total["all_usable"]) == (pytest.approx(actual), pytest.approx(all_usable))


def test_savings_refuses_an_unknown_segment(database: str) -> None:
    result = runner.invoke(app, ["savings", "--segment", "nobody"])
    assert result.exit_code == 2 and "no segment named 'nobody'" in " ".join(result.output.split())


def test_funnel_of_one_segment(database: str) -> None:
    result = runner.invoke(app, ["funnel", "--segment", "dormant", "--by", "channel", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    # Only ann was dormant: her one email, clicked and converted.
    assert [(r["channel"], r["messages"], r["converted"]) for r in rows] == [("email", "1", "1")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["funnel", "--since", "yesterday"], "'yesterday' is not a date"),
        (["funnel", "--since", "2026-10-02", "--until", "2026-10-01"], "is not after --since"),
        (["funnel", "--segment", "nobody"], "no segment named 'nobody'"),
        (["funnel", "--format", "png"], "give --output"),
        (["funnel", "--window", "0"], "more than 0 days"),
    ],
)
def test_bad_options_are_refused_by_name(database: str, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_help_is_readable() -> None:
    result = runner.invoke(app, ["funnel", "--help"])
    assert result.exit_code == 0 and "--journey" in result.output and "--format" in result.output
