"""Stored cases in bulk (SQLAlchemy core ``executemany``), as a database holds them after
weeks of service: each case with its unit, its source message (content dropped, processed)
and its creation event; a realistic mix of statuses and deadlines."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, insert, select

from bench.mailgen import COMMUNES, person_name, phone, report_id
from mailtracker.domain.matching import name_key
from mailtracker.store.db import Database
from mailtracker.store.models import Case, CaseEvent, CaseSource, CaseUnit, Message

CHUNK = 5_000
SEED_PERSON_BASE = 60_000_000
"""Seeded people are numbered from here: they never collide with generated mail."""
STATUS_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("new", 5),
    ("monitoring", 9),
    ("home_isolation", 9),
    ("facility_isolation", 4),
    ("hospital", 3),
    ("closed", 70),
)
OUTCOMES = ("cleared", "released", "released", "released", "positive", "transferred", "lost")


def _case_row(
    case_id: int,
    unit: str,
    status: str,
    now: dt.datetime,
    rng: random.Random,
    age_days: tuple[int, int],
) -> dict[str, Any]:
    number = SEED_PERSON_BASE + case_id
    received = now - dt.timedelta(minutes=rng.randrange(age_days[0] * 1440, age_days[1] * 1440))
    start = (received + dt.timedelta(hours=rng.randrange(1, 30))).date()
    open_period = status in ("monitoring", "home_isolation", "facility_isolation")
    last_followup = now - dt.timedelta(hours=rng.randrange(1, 40)) if open_period else None
    commune = COMMUNES[case_id % len(COMMUNES)][0].split(" ", 1)[1]
    name = person_name(number)
    return {
        "id": case_id,
        "ref": f"QN-{case_id:04d}",
        "owner_unit": unit,
        "status": status,
        "outcome": rng.choice(OUTCOMES) if status == "closed" else None,
        "full_name": name,
        "name_key": name_key(name),
        "phone": phone(number),
        "birth_year": 1950 + case_id % 55,
        "gender": "male" if case_id % 2 else "female",
        "address": f"Thôn {case_id % 9 + 1}, xã {commune}",
        "commune": commune,
        "district": "Sơn Tịnh",
        "province": "Quảng Ngãi",
        "symptoms": ["fever"] if case_id % 3 == 0 else [],
        "came_from": "Vũ Hán, Trung Quốc",
        "arrival_date": start - dt.timedelta(days=1),
        "report_date": received.date(),
        "report_id": report_id(number),
        "risk": ("high", "medium", "low")[case_id % 3],
        "received_at": received,
        "verify_by": received + dt.timedelta(hours=24),
        "period_start": start if open_period else None,
        "period_start_reason": "command" if open_period else None,
        "period_end": start + dt.timedelta(days=14) if open_period else None,
        "last_followup_at": last_followup,
        "next_followup_due": last_followup + dt.timedelta(days=1) if last_followup else None,
        "created_at": received,
        "updated_at": received,
        "closed_at": received + dt.timedelta(days=10) if status == "closed" else None,
    }


def _chunks(first: int, count: int) -> Iterator[range]:
    for start in range(first, first + count, CHUNK):
        yield range(start, min(start + CHUNK, first + count))


def seed_cases(
    db: Database,
    count: int,
    *,
    units: Sequence[str],
    now: dt.datetime,
    seed: int = 8,
    statuses: Sequence[str] | None = None,
    age_days: tuple[int, int] = (0, 40),
) -> None:
    """Add ``count`` cases spread round-robin over ``units`` (status drawn from
    :data:`STATUS_WEIGHTS`, or always from ``statuses`` when given), received between
    ``age_days`` days before ``now``."""
    rng = random.Random(seed)
    names, weights = zip(*STATUS_WEIGHTS, strict=True)
    with db.engine.begin() as connection:
        first = (connection.scalar(select(func.max(Case.id))) or 0) + 1
        first_message = (connection.scalar(select(func.max(Message.id))) or 0) + 1
    for ids in _chunks(first, count):
        cases, units_rows, messages, sources, events = [], [], [], [], []
        for case_id in ids:
            unit = units[case_id % len(units)]
            status = rng.choice(statuses) if statuses else rng.choices(names, weights)[0]
            row = _case_row(case_id, unit, status, now, rng, age_days)
            message_id = first_message + case_id - first
            cases.append(row)
            units_rows.append({"case_id": case_id, "unit_id": unit, "added_at": row["received_at"]})
            messages.append(
                {
                    "id": message_id,
                    "mailbox": f"seed:{unit}",
                    "uidvalidity": 1,
                    "uid": message_id,
                    "unit_id": unit,
                    "message_id": f"seed-{case_id}@suckhoetoandan.vn",
                    "content_hash": f"{case_id:064x}",
                    "raw": None,
                    "size": 2_000,
                    "received_at": row["received_at"],
                    "kind": "notification",
                    "quarantined": False,
                    "processed_at": row["received_at"],
                }
            )
            sources.append(
                {
                    "case_id": case_id,
                    "message_id": message_id,
                    "report_index": 0,
                    "added_at": row["received_at"],
                }
            )
            events.append(
                {
                    "case_id": case_id,
                    "at": row["received_at"],
                    "actor": "system",
                    "channel": "system",
                    "action": "created",
                    "from_status": None,
                    "to_status": "new",
                    "message_id": message_id,
                    "details": {"unit": unit, "report_index": 0},
                }
            )
        with db.engine.begin() as connection:
            connection.execute(insert(Message), messages)
            connection.execute(insert(Case), cases)
            connection.execute(insert(CaseUnit), units_rows)
            connection.execute(insert(CaseSource), sources)
            connection.execute(insert(CaseEvent), events)
