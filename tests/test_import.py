"""Importing customers from CSV and JSON Lines: all rows or none, rejected rows reported by line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import func, select

from cascade.infra.db import Database
from cascade.profiles.importer import ImportAborted, import_profiles
from cascade.profiles.privacy import erase_customer
from cascade.profiles.service import upsert_customer
from models.profiles import ContactIn, CustomerProfile
from models.tables import Consent, ContactPoint, Customer, CustomerMerge, ExternalId

CSV = """id,name,email,phone,telegram,marketing_consent,children_ages,birth_date,timezone,attr.shoe_size,ext.crm
c1,Ann,ann@example.com,+14155552671,,yes,3;7,1990-05-17,Europe/Moscow,38,A-1
c2,Bob,bob@example.com,,12345,no,,,,,A-2
c3,Cid,,+442071838750,,,,,,,
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def _count(db: Database, table: type) -> int:
    async with db.session() as session:
        return int((await session.exec(select(func.count()).select_from(table))).one())


async def test_csv_import_writes_profiles_contacts_consents_and_external_ids(any_db: Database, tmp_path: Path) -> None:
    report = await import_profiles(any_db, _write(tmp_path, "c.csv", CSV))
    assert (report.rows, report.created, report.rejected, report.written) == (3, 3, [], True)
    async with any_db.session() as session:
        ann = await session.get(Customer, "c1")
        points = (await session.exec(select(ContactPoint.customer_id, ContactPoint.channel))).all()
        consents = {(c.customer_id, c.channel): c.granted for c in (await session.exec(select(Consent))).all()}
        crm = (await session.exec(select(ExternalId).where(ExternalId.external_id == "A-2"))).one()
    assert ann is not None and ann.children_ages == [3, 7] and ann.timezone == "Europe/Moscow"
    assert ann.attributes == {"shoe_size": 38}
    assert sorted(points) == [("c1", "email"), ("c1", "sms"), ("c2", "email"), ("c2", "telegram"), ("c3", "sms")]
    assert consents[("c1", "email")] is True and consents[("c2", "telegram")] is False
    assert crm.customer_id == "c2"


async def test_a_file_with_bad_rows_imports_nothing_and_names_every_line(any_db: Database, tmp_path: Path) -> None:
    bad = CSV + "c4,Dan,not-an-email,,,,,,,,\nc5,Eve,,12345,,,,,,,\nc6,Fay,,,,,,,Mars/Base,,\n"
    with pytest.raises(ImportAborted) as info:
        await import_profiles(any_db, _write(tmp_path, "bad.csv", bad))
    rejected = {r.line: r.reason for r in info.value.report.rejected}
    assert set(rejected) == {5, 6, 7}
    assert "email" in rejected[5] and "phone number '12345'" in rejected[6] and "time zone" in rejected[7]
    # The good rows before the bad ones were not kept either.
    assert await _count(any_db, Customer) == 0 and await _count(any_db, ContactPoint) == 0


async def test_skip_invalid_imports_the_good_rows_and_reports_the_rest(any_db: Database, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "j1", "name": "Ann", "contacts": [{"channel": "email", "address": "j1@example.com"}]}),
        "{not json",
        json.dumps({"id": "j2", "loyalty_points": -5}),
        "",
        json.dumps({"id": "j3", "consents": [{"channel": "sms", "topic": "marketing", "granted": True}]}),
    ]
    report = await import_profiles(any_db, _write(tmp_path, "p.jsonl", "\n".join(lines)), skip_invalid=True)
    assert report.created == 2 and [r.line for r in report.rejected] == [2, 3]
    assert "loyalty_points" in report.rejected[1].reason
    assert await _count(any_db, Customer) == 2


async def test_import_updates_existing_and_merges_shared_contacts(any_db: Database, tmp_path: Path) -> None:
    await upsert_customer(
        any_db,
        CustomerProfile(id="old", name="Ann", contacts=[ContactIn(channel="email", address="ann@example.com")]),
    )
    text = "id,name,email,city\nold,,,Kazan\nnew1,Annie,ann@example.com,\nnew2,Zed,zed@example.com,\n"
    report = await import_profiles(any_db, _write(tmp_path, "u.csv", text))
    assert (report.created, report.updated, report.merged) == (2, 1, 1)
    async with any_db.session() as session:
        old = await session.get(Customer, "old")
        merge = (await session.exec(select(CustomerMerge))).one()
    assert old is not None and (old.name, old.city) == ("Ann", "Kazan")
    assert (merge.survivor_id, merge.merged_id) == ("old", "new1")


async def test_duplicate_rows_in_one_file_do_not_duplicate_the_customer(any_db: Database, tmp_path: Path) -> None:
    text = "id,name,email\nd1,Ann,d1@example.com\nd1,Ann B,d1@example.com\n"
    await import_profiles(any_db, _write(tmp_path, "d.csv", text))
    assert await _count(any_db, Customer) == 1 and await _count(any_db, ContactPoint) == 1


def test_cli_imports_exports_and_erases(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "customers.py", *args], env=env, capture_output=True, text=True, timeout=60
        )

    bad = run("import", str(_write(tmp_path, "bad.csv", CSV + "c9,,nope,,,,,,,,\n")))
    assert bad.returncode == 1 and "nothing imported" in bad.stderr and "5" in bad.stderr
    ok = run("import", str(_write(tmp_path, "ok.csv", CSV)))
    assert ok.returncode == 0, ok.stderr
    assert "imported 3 new" in ok.stderr
    exported = run("export", "c1")
    assert json.loads(exported.stdout)["profile"]["name"] == "Ann"
    # No Temporal server here; history erasure is tested in tests/test_codec.py.
    assert run("erase", "c1", "--yes", "--no-histories").returncode == 0
    # Running it again is how an operator finishes an erasure: it says so and succeeds.
    again = run("erase", "c1", "--yes", "--no-histories")
    assert again.returncode == 0 and "already erased" in again.stderr, again.stderr
    assert json.loads(run("export", "c1").stdout)["contact_points"] == []
    unknown = run("export", "nobody")
    assert unknown.returncode == 2 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr


async def test_the_same_phone_on_two_channels_is_one_customer(any_db: Database, tmp_path: Path) -> None:
    text = "id,sms,whatsapp\nx1,+14155552671,\nx2,,+14155552671\n"
    report = await import_profiles(any_db, _write(tmp_path, "p.csv", text))
    assert report.merged == 1
    async with any_db.session() as session:
        x2 = await session.get(Customer, "x2")
    assert x2 is not None and x2.merged_into == "x1"


async def test_an_erased_id_or_a_broken_file_is_a_rejected_row_not_a_crash(any_db: Database, tmp_path: Path) -> None:
    await upsert_customer(any_db, CustomerProfile(id="gone", name="Eve"))
    await erase_customer(any_db, "gone")
    with pytest.raises(ImportAborted) as info:
        await import_profiles(any_db, _write(tmp_path, "e.csv", "id,name\nok1,Ann\ngone,Eve\n"))
    assert [(r.line, "erased" in r.reason) for r in info.value.report.rejected] == [(3, True)]
    assert await _count(any_db, Customer) == 1  # only the erased row from before

    broken = tmp_path / "b.csv"
    broken.write_bytes(b"id,name\nb1,Ann\nb2,\xff\xfe\xfa\n")
    with pytest.raises(ImportAborted) as info:
        await import_profiles(any_db, broken)
    assert "unreadable" in info.value.report.rejected[0].reason
