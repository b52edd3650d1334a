"""Bulk import of customer profiles from CSV or JSON Lines: all rows or none.

Rows are validated as they stream in; every rejected row is reported with its line
number and reason. The whole file is written in one transaction, so a file with a bad
row (or a database error half-way) leaves the database exactly as it was.

New customers whose contacts collide with nobody are written with multi-row INSERTs
(the fast path that makes 100k rows a matter of seconds); a row that updates an
existing customer, or shares an email, phone or external id with another profile,
goes through `apply_profile`, which merges them.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cascade.infra.db import Database
from cascade.profiles.service import IMPLIED_CONSENT, TYPED_FIELDS, ProfileError, apply_profile, identity_keys
from models.journey import ChannelName
from models.profiles import ContactIn, CustomerProfile
from models.tables import Consent, ContactPoint, Customer, ExternalId, Topic, utcnow

CHUNK = 2000
_LIST_FIELDS = {"children_ages", "favourite_categories"}
_CONTACT_COLUMNS = {c.value: c for c in ChannelName} | {"phone": ChannelName.SMS}


class ImportAborted(Exception):
    """The file had rejected rows (nothing was written); the report says which and why."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"{len(report.rejected)} rejected row(s); nothing imported")
        self.report = report


@dataclass(frozen=True)
class RejectedRow:
    """A row that could not be imported: where it is and what was wrong with it."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did (or would have done)."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    merged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    seconds: float = 0.0
    written: bool = False

    @property
    def rate(self) -> float:
        """Rows per second over the whole import."""
        return self.rows / self.seconds if self.seconds else 0.0


def _split(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        parsed = json.loads(value)
        return [str(v) for v in parsed] if isinstance(parsed, list) else [value]
    return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"expected yes/no, got {value!r}")


def profile_from_csv(row: dict[str, str]) -> CustomerProfile:
    """A profile from one flat CSV row.

    Columns: `id` plus the typed fields (lists separated by `;`), one column per channel
    (`email`, `phone`/`sms`, `telegram`, ...), `marketing_consent` (yes/no for every
    contact of the row), `attr.<name>` for custom attributes, `ext.<source>` for ids in
    other systems. Empty cells mean "not given" (the stored value is kept).
    """
    data: dict[str, Any] = {"attributes": {}, "external_ids": {}}
    consent: bool | None = None
    contacts: list[tuple[ChannelName, str]] = []
    for raw_key, raw_value in row.items():
        if raw_key is None:
            raise ValueError("more cells than header columns")
        key, value = raw_key.strip(), (raw_value or "").strip()
        if not value:
            continue
        if key.startswith("attr."):
            try:
                data["attributes"][key[5:]] = json.loads(value)
            except json.JSONDecodeError:
                data["attributes"][key[5:]] = value
        elif key.startswith("ext."):
            data["external_ids"][key[4:]] = value
        elif key == "marketing_consent":
            try:
                consent = _bool(value)
            except ValueError as exc:
                raise ValueError(f"marketing_consent: {exc}") from None
        elif key in _CONTACT_COLUMNS:
            contacts.append((_CONTACT_COLUMNS[key], value))
        elif key in _LIST_FIELDS:
            data[key] = _split(value)
        elif key == "id" or key in TYPED_FIELDS:
            data[key] = value
        else:
            raise ValueError(f"unknown column {key!r} (custom attributes go in attr.<name> columns)")
    validated = []
    for channel, address in contacts:
        try:
            validated.append(ContactIn(channel=channel, address=address, consent=consent, consent_source="import"))
        except ValidationError as exc:
            raise ValueError(f"{channel.value}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    profile = CustomerProfile.model_validate(data)
    # Attached after validation: handing ContactIn objects to the profile's validator
    # would run the (slow) email and phone checks a second time.
    profile.contacts = validated
    return profile


def read_profiles(path: Path) -> Iterator[tuple[int, CustomerProfile | str]]:
    """(line number, profile or the reason the row was rejected) for every row of `path`."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            try:
                if not reader.fieldnames or "id" not in reader.fieldnames:
                    yield 1, "the header has no 'id' column"
                    return
                for row in reader:
                    yield reader.line_num, _parse(lambda r=row: profile_from_csv(r))  # type: ignore[misc]
            except (csv.Error, UnicodeDecodeError) as exc:
                # The file itself is broken here (not UTF-8, an endless quoted cell):
                # report where, and read no further.
                yield reader.line_num + 1, f"unreadable from here on (is it UTF-8 CSV?): {exc}"
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            number = 0
            try:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        yield number, _parse(lambda text=line: CustomerProfile.model_validate_json(text))  # type: ignore[misc]
            except UnicodeDecodeError as exc:
                yield number + 1, f"unreadable from here on: {exc}"
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .jsonl)")


def _parse(build: Callable[[], CustomerProfile]) -> CustomerProfile | str:
    try:
        return build()
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
    except (ValueError, json.JSONDecodeError) as exc:
        return str(exc)


async def import_profiles(
    db: Database,
    path: Path,
    *,
    skip_invalid: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every profile in `path` (CSV or JSON Lines) in one transaction.

    With rejected rows the import writes nothing and raises ImportAborted with the
    report, unless `skip_invalid` (then the valid rows are imported and the rejected
    ones reported). `progress` is called with the number of rows read so far.
    """
    report = ImportReport()
    started = time.perf_counter()
    async with db.session() as session:
        if not db.is_sqlite:
            # The tables grow inside this one transaction while the planner's statistics
            # still describe them as they were: it would pick sequential scans for the
            # per-chunk look-ups and the import would turn quadratic. Index look-ups only.
            await (await session.connection()).execute(text("SET LOCAL enable_seqscan = off"))
        chunk: list[tuple[int, CustomerProfile]] = []
        for line, parsed in read_profiles(path):
            report.rows += 1
            if isinstance(parsed, str):
                report.rejected.append(RejectedRow(line, parsed))
            elif skip_invalid or not report.rejected:
                chunk.append((line, parsed))
                if len(chunk) >= CHUNK:
                    await _write_chunk(db, session, chunk, report)
                    chunk = []
            if progress and report.rows % 500 == 0:
                progress(report.rows)
        if chunk and (skip_invalid or not report.rejected):
            await _write_chunk(db, session, chunk, report)
        if report.rejected and not skip_invalid:
            report.seconds = time.perf_counter() - started
            # Raising inside the session rolls back whatever earlier chunks wrote.
            raise ImportAborted(report)
    if progress:
        progress(report.rows)
    report.written = True
    report.seconds = time.perf_counter() - started
    return report


async def _write_chunk(
    db: Database, session: AsyncSession, batch: list[tuple[int, CustomerProfile]], report: ImportReport
) -> None:
    chunk = [profile for _, profile in batch]
    ids = [p.id for p in chunk]
    known = set((await session.exec(select(Customer.id).where(col(Customer.id).in_(ids)))).all())
    keys = {key for p in chunk for key in identity_keys(p)}
    taken: set[tuple[str, str]] = set()
    # Plain IN lists on indexed columns, filtered here: PostgreSQL plans a row-value IN
    # over a table growing inside this very transaction as a scan, and imports went
    # quadratic; an index look-up per address stays flat.
    if keys:
        rows = await session.exec(
            select(ContactPoint.channel, ContactPoint.address).where(
                col(ContactPoint.address).in_({address for _, address in keys})
            )
        )
        taken = {key for key in rows.all() if key in keys}
    externals = {(s, e) for p in chunk for s, e in p.external_ids.items()}
    if externals:
        rows2 = await session.exec(
            select(ExternalId.source, ExternalId.external_id).where(
                col(ExternalId.source).in_({s for s, _ in externals}),
                col(ExternalId.external_id).in_({e for _, e in externals}),
            )
        )
        taken |= {(f"ext:{s}", e) for s, e in rows2.all() if (s, e) in externals}

    fast: list[CustomerProfile] = []
    slow: list[tuple[int, CustomerProfile]] = []
    seen_ids: set[str] = set()
    for line, profile in batch:
        own = identity_keys(profile) + [(f"ext:{s}", e) for s, e in profile.external_ids.items()]
        if profile.id in known or profile.id in seen_ids or any(k in taken for k in own):
            slow.append((line, profile))
        else:
            fast.append(profile)
            taken.update(own)
        seen_ids.add(profile.id)
    await _insert_new(session, fast)
    report.created += len(fast)
    for line, profile in slow:
        try:
            # A savepoint per row: a row refused here (an erased customer's id) leaves
            # the rest of the import as it was.
            async with session.begin_nested():
                result = await apply_profile(db, session, profile)
        except ProfileError as exc:
            report.rejected.append(RejectedRow(line, str(exc)))
            continue
        report.created += result.created
        report.updated += not result.created
        report.merged += len(result.merged)


async def _insert_new(session: AsyncSession, profiles: list[CustomerProfile]) -> None:
    if not profiles:
        return
    now = utcnow()
    customers, points, consents, externals = [], [], [], []
    for p in profiles:
        row: dict[str, Any] = {
            name: (value.value if name == "preferred_channel" and value is not None else value)
            for name in TYPED_FIELDS
            if (value := getattr(p, name)) is not None
        }
        row.setdefault("timezone", "UTC")
        row.setdefault("children_ages", [])
        row.setdefault("favourite_categories", [])
        row.setdefault("purchase_count", 0)
        row.setdefault("loyalty_points", 0)
        customers.append(
            {
                **{name: None for name in TYPED_FIELDS},
                **row,
                "id": p.id,
                "attributes": p.attributes,
                "created_at": now,
                "updated_at": now,
            }
        )
        granted: dict[tuple[str, str], tuple[bool, str | None]] = {}
        for contact in p.contacts:
            points.append(
                {
                    "customer_id": p.id,
                    "channel": contact.channel.value,
                    "address": contact.address,
                    "status": contact.status or "valid",
                    "status_changed_at": now,
                    "created_at": now,
                }
            )
            key = (contact.channel.value, Topic.MARKETING.value)
            if contact.consent is not None:
                granted[key] = (contact.consent, contact.consent_source)
            else:
                # Implied by adding the contact, and never over a stated decision.
                granted.setdefault(key, (True, IMPLIED_CONSENT))
        for c in p.consents:
            granted[(c.channel.value, c.topic.value)] = (c.granted, c.source)
        consents += [
            {"customer_id": p.id, "channel": ch, "topic": t, "granted": g, "source": s, "changed_at": now}
            for (ch, t), (g, s) in granted.items()
        ]
        externals += [
            {"customer_id": p.id, "source": s, "external_id": e, "created_at": now} for s, e in p.external_ids.items()
        ]
    # Executemany keeps the statement count per chunk constant, whatever the chunk size.
    connection = await session.connection()
    await connection.execute(insert(Customer), customers)
    for table, rows in ((ContactPoint, _dedupe(points)), (Consent, consents), (ExternalId, externals)):
        if rows:
            await connection.execute(insert(table), rows)


def _dedupe(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique = {(p["customer_id"], p["channel"], p["address"]): p for p in points}
    return list(unique.values())
