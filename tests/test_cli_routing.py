"""`cascade routing preview|explain` on a real SQLite file (typer's CliRunner on the group's app)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from cascade.cli.routing import app
from cascade.infra.db import Database, migrate
from cascade.infra.settings import get_settings
from cascade.profiles.service import upsert_customer
from models.profiles import CustomerProfile
from models.tables import Delivery

AT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CASCADE_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


async def _seed(url: str) -> None:
    db = Database.from_url(url)
    await migrate(db.engine)
    zone = ZoneInfo("Europe/Berlin")
    # cat has a long morning habit of her own; ann and bob read in the evening.
    for i, (cid, hour, days) in enumerate((("ann", 19, 14), ("bob", 19, 14), ("cat", 10, 40))):
        await upsert_customer(
            db,
            CustomerProfile.model_validate(
                {
                    "id": cid,
                    "timezone": "Europe/Berlin",
                    "attributes": {"segment": "eve"},
                    "contacts": [
                        {"channel": "email", "address": f"{cid}@x.org"},
                        {"channel": "sms", "address": f"+1415555267{i}"},
                    ],
                }
            ),
        )
        async with db.session() as session:
            for d in range(1, days + 1):
                opened = (AT - timedelta(days=d)).astimezone(zone).replace(hour=hour, minute=5).astimezone(UTC)
                session.add(
                    Delivery(
                        idempotency_key=f"{cid}/{d}",
                        workflow_id=f"w-{cid}",
                        run_id="r",
                        journey="past",
                        step=0,
                        customer_id=cid,
                        channel="email",
                        status="opened",
                        sent_at=opened - timedelta(minutes=5),
                        opened_at=opened,
                    )
                )
    await db.dispose()


def test_preview_counts_the_send_hours_of_a_segment(database_url: str) -> None:
    asyncio.run(_seed(database_url))
    result = CliRunner().invoke(app, ["preview", "--segment", "eve", "--at", AT.isoformat(), "--quiet", "21:00-08:00"])
    assert result.exit_code == 0, result.output
    # 06:00 UTC is 07:00 in Berlin, inside quiet hours: 19:00 for the evening readers, 10:00 for
    # the morning one (her own habit outweighs the segment's evening).
    assert re.search(r"Tue 19:00\s*│\s*2 ", result.output) and re.search(r"Tue 10:00\s*│\s*1 ", result.output)
    assert "ann" in result.output and "from 14 own reactions" in result.output


def test_explain_shows_the_ranking_and_reasons(database_url: str) -> None:
    asyncio.run(_seed(database_url))
    result = CliRunner().invoke(app, ["explain", "ann", "--channels", "email,sms,telegram"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "chosen: email"
    assert lines[1].startswith("email: ") and "own 14/14" in lines[1]
    assert "telegram: unusable (no telegram contact)" in result.output
    # With a ceiling below email's cost per reaction (0.001 / ~0.93): email, judged on her 14
    # emails, is not sent; sms, never tried on her, is not judged and is chosen.
    capped = CliRunner().invoke(app, ["explain", "ann", "--channels", "email,sms", "--max-cost-per-reaction", "0.0005"])
    assert capped.exit_code == 0, capped.output
    assert capped.output.splitlines()[0] == "chosen: sms"
    flat = " ".join(capped.output.split())  # the console wraps long lines
    assert re.search(r"email: [^)]*own 14/14[^)]*above the ceiling 0\.0005: not sent\)", flat)


def test_bad_options_are_named(database_url: str) -> None:
    runner = CliRunner()
    assert "--window" in runner.invoke(app, ["preview", "--segment", "x", "--window", "soon"]).output
    assert "--quiet" in runner.invoke(app, ["preview", "--segment", "x", "--quiet", "late"]).output
    assert "--channels" in runner.invoke(app, ["explain", "ann", "--channels", "pigeon"]).output
    assert "--max-cost-per-reaction" in runner.invoke(app, ["explain", "ann", "--max-cost-per-reaction", "0"]).output
    nobody = runner.invoke(app, ["preview", "--segment", "nobody"])
    assert nobody.exit_code == 1 and "no customers matched" in nobody.output
