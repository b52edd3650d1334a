"""`cascade segments ...` (typer CliRunner on the group) and GET /v1/segments/{name} over real HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cascade.audiences.membership import refresh_memberships
from cascade.audiences.service import load_segments
from cascade.cli.segments import app
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from tests.helpers import serve_app
from tests.test_segments import _people, _write
from webhooks.app import create_app
from webhooks.keys import create_key

BERLINERS = [{"field": "city", "op": "eq", "value": "Berlin"}]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A seeded SQLite file and a segments folder, named by the environment as in production."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    async def seed() -> None:
        db = Database.from_url(url)
        await migrate(db.engine)
        await _people(db)
        await db.dispose()

    asyncio.run(seed())
    folder = tmp_path / "segments"
    folder.mkdir()
    _write(folder, "berliners", BERLINERS)
    _write(folder, "telegram_fans", [{"reachable": "telegram"}, {"segment": "berliners"}])
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CASCADE_SEGMENTS_DIR", str(folder))
    return folder


def test_cli_lists_counts_samples_and_shows(cli_env: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--counts"])
    assert listed.exit_code == 0, listed.output
    for name in ("berliners", "telegram_fans", "new", "active", "loyal", "dormant", "churned"):
        assert name in listed.output
    counted = runner.invoke(app, ["count", "berliners"])
    assert (counted.exit_code, counted.output.strip()) == (0, "2")
    assert runner.invoke(app, ["count", "telegram_fans"]).output.strip() == "1"
    sampled = runner.invoke(app, ["sample", "berliners", "--limit", "1"])
    assert sampled.exit_code == 0 and "ann" in sampled.output and "dan" not in sampled.output
    shown = runner.invoke(app, ["show", "telegram_fans", "--sql"])
    assert shown.exit_code == 0, shown.output
    assert "members: 1 of 4 customers" in shown.output
    assert "reachable: telegram" in shown.output and "FROM customers" in shown.output


def test_cli_counts_from_the_last_refresh_and_says_so(cli_env: Path) -> None:
    runner = CliRunner()
    moment = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    async def refresh() -> None:
        db = Database.from_url(f"sqlite:///{cli_env.parent / 'cli.db'}")
        await refresh_memberships(db, load_segments(Settings(), cli_env), now=moment)
        await db.dispose()

    asyncio.run(refresh())
    counted = runner.invoke(app, ["count", "berliners"])
    assert counted.exit_code == 0, counted.output
    assert counted.stdout.strip() == "2"
    assert "as of the refresh at 2026-06-01 12:00:00 UTC; --exact to count now" in counted.stderr
    exact = runner.invoke(app, ["count", "berliners", "--exact"])
    assert (exact.exit_code, exact.stdout.strip(), exact.stderr) == (0, "2", "")
    shown = runner.invoke(app, ["show", "berliners"])
    assert "members: 2 of 4 customers (as of the refresh at 2026-06-01 12:00:00 UTC" in shown.output
    listed = runner.invoke(app, ["list", "--counts", "--exact"])
    assert listed.exit_code == 0 and "counted now" in listed.output
    # A refresh of a minute ago: --exact corrects its memberships (nobody changed since).
    moment = datetime.now(UTC)
    asyncio.run(refresh())
    exact = runner.invoke(app, ["count", "berliners", "--exact"])
    assert exact.exit_code == 0 and exact.stdout.strip() == "2"
    assert "counted now: the last refresh's memberships corrected for 0 changed customers" in exact.stderr


def test_cli_validate_and_errors_exit_1_with_file_field_line(cli_env: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate"])
    assert ok.exit_code == 0 and "ok: 2 segment files and 5 built-in segments are valid" in ok.output
    unknown = runner.invoke(app, ["count", "nobody"])
    assert unknown.exit_code == 1 and "unknown segment 'nobody'" in unknown.output
    _write(cli_env, "broken", [{"field": "city", "op": "older_than", "value": "3d"}])
    bad = runner.invoke(app, ["validate"])
    assert bad.exit_code == 1
    assert "broken.yaml: where.0.op (line 4): older_than needs a time field" in bad.output
    assert "Traceback" not in bad.output
    # Every command refuses to answer from an invalid set of files.
    assert runner.invoke(app, ["count", "berliners"]).exit_code == 1


@pytest.mark.postgres
async def test_get_segment_answers_the_count_behind_an_api_key(any_db: Database, client, tmp_path: Path) -> None:
    await _people(any_db)
    folder = tmp_path / "segments"
    folder.mkdir()
    _write(folder, "berliners", BERLINERS)
    settings = Settings(segments_dir=folder)
    key, _ = await create_key(any_db, "shop1")
    before = datetime.now(UTC).replace(microsecond=0)
    async with serve_app(create_app(settings, client=client, db=any_db)) as url, httpx.AsyncClient(base_url=url) as web:
        assert (await web.get("/v1/segments/berliners")).status_code == 401
        assert (await web.get("/v1/segments/berliners", headers={"X-API-Key": "csk_x_y"})).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        got = await web.get("/v1/segments/berliners", headers=auth)
        assert got.status_code == 200
        body = got.json()
        # Never refreshed: counted by the query now.
        assert body.pop("exact") is True and datetime.fromisoformat(body.pop("as_of")) >= before
        assert body == {
            "name": "berliners",
            "description": "",
            "source": "segments/berliners.yaml",
            "members": 2,
            "customers": 4,
            "method": "query",
            "touched": None,
        }
        # After a refresh of everyone: the memberships, as of that refresh; exact=true still counts.
        await refresh_memberships(any_db, load_segments(settings), now=before)
        stored = (await web.get("/v1/segments/berliners", headers=auth)).json()
        assert (stored["members"], stored["exact"], datetime.fromisoformat(stored["as_of"])) == (2, False, before)
        assert stored["method"] == "memberships"
        exact = (await web.get("/v1/segments/berliners?exact=true", headers=auth)).json()
        # The refresh is recent: its memberships corrected for the customers touched since
        # (the four seeded within the change margin before it).
        assert (exact["exact"], exact["members"], exact["method"]) == (True, 2, "corrected")
        assert isinstance(exact["touched"], int)
        loyal = (await web.get("/v1/segments/loyal", headers=auth)).json()
        assert loyal["source"] == "built-in" and loyal["customers"] == 4
        missing = await web.get("/v1/segments/nobody", headers=auth)
        assert missing.status_code == 404 and missing.json() == {"error": "unknown segment 'nobody'"}
        assert (await web.get("/v1/segments/Bad%20Name", headers=auth)).status_code == 422
        _write(folder, "broken", [{"field": "nope.nope", "op": "eq", "value": 1}])
        broken = await web.get("/v1/segments/berliners", headers=auth)
        assert broken.status_code == 500
        assert "broken.yaml: where.0.field (line 3): unknown field" in broken.json()["error"]
        assert "Traceback" not in broken.text
