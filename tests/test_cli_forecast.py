"""`cascade forecast` and `cascade forecast backtest` over a real SQLite database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.forecast import app
from cascade.infra.db import Database, migrate
from cascade.infra.settings import get_settings
from models.tables import Customer
from tests.analytics_rows import T0, History

runner = CliRunner()


async def _fill(url: str) -> None:
    db = Database.from_url(url)
    await migrate(db.engine)
    h = History()
    for campaign, start in (("spring", T0), ("autumn", T0 + timedelta(days=60))):
        for i in range(30):
            who = f"{campaign}-{i}"
            r = h.run("winback", who, campaign=campaign, at=start)
            status = "clicked" if i % 3 == 0 else "delivered"
            h.send(
                r,
                "winback",
                who,
                0,
                "email",
                cost=0.001,
                at=start,
                status=status,
                clicked_after=timedelta(minutes=2) if status == "clicked" else None,
            )
            if status == "clicked":
                h.event(who, "purchase", start + timedelta(hours=1), amount=25.0)
    await h.save(db)
    async with db.session() as session:
        for i in range(3):  # dormant: last purchase 90-365 days ago
            session.add(Customer(id=f"dormant-{i}", last_purchase_at=datetime.now(UTC) - timedelta(days=150)))
        session.add(Customer(id="recent", last_purchase_at=datetime.now(UTC) - timedelta(days=1)))
    await db.dispose()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'forecast.db'}"
    asyncio.run(_fill(url))
    monkeypatch.setenv("CASCADE_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_forecast_table_prints_three_scenarios_and_the_assumptions(database: str) -> None:
    result = runner.invoke(app, ["--journey", "winback", "--audience", "5000", "--draws", "500"])
    assert result.exit_code == 0, result.output
    out = result.output
    for word in ("pessimistic", "neutral", "optimistic", "Assumptions", "Thin history", "telegram"):
        assert word in out
    assert "for 5000 customers" in out


def test_forecast_json_is_reproducible_with_a_seed(database: str) -> None:
    args = ["-j", "winback", "--audience", "800", "--draws", "300", "--seed", "3", "--format", "json"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == json.loads(second.output)
    data = json.loads(first.output)
    assert data["forecast"]["audience"] == 800 and len(data["forecast"]["scenarios"]) == 3


def test_backtest_reports_the_error_per_figure(database: str) -> None:
    result = runner.invoke(app, ["backtest", "--journey", "winback", "--campaign", "autumn", "--draws", "300"])
    assert result.exit_code == 0, result.output
    assert "Backtest of winback / autumn" in result.output and "inside band" in result.output
    data = json.loads(
        runner.invoke(app, ["backtest", "-j", "winback", "--campaign", "autumn", "--draws", "300", "-f", "json"]).output
    )
    sent = next(e for e in data["result"]["errors"] if e["metric"] == "sent")
    assert sent["actual"] == 30 and data["audience"] == 30


def test_forecast_of_a_segment_counts_its_members(database: str) -> None:
    result = runner.invoke(app, ["--journey", "winback", "--segment", "dormant", "--draws", "500", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["forecast"]["audience"] == 3 and data["segment"] == "dormant"
    table = runner.invoke(app, ["--journey", "winback", "--segment", "dormant", "--draws", "500"])
    assert table.exit_code == 0 and "3 customers are in segment dormant now" in table.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the journey to forecast"),
        (["--journey", "nosuch"], "nosuch"),
        (["--journey", "winback", "--since", "soon"], "'soon' is not a date"),
        (["backtest", "--journey", "winback", "--campaign", "never"], "has no runs"),
        (["--journey", "winback", "--segment", "nobody"], "no segment named 'nobody'"),
        (["--journey", "winback", "--segment", "dormant", "--audience", "5"], "not both"),
    ],
)
def test_bad_input_is_named(database: str, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
