"""Support for the digest, alert and daemon tests: configurations, databases and cases."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from mailtracker.config import Config, config_from_dict
from mailtracker.store.models import Case, CaseUnit
from mailtracker.store.queries import format_ref

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SECRET = "digest-test-secret"
ENVIRON = {"MT_DIGEST_SECRET": SECRET, "MT_DIGEST_IMAP": "imap-password"}
NOW = dt.datetime(2020, 2, 14, 1, 0, tzinfo=dt.UTC)  # 08:00 in Quảng Ngãi
TODAY = dt.date(2020, 2, 14)
HOUR = dt.timedelta(hours=1)


def unit(unit_id: str, role: str, language: str) -> dict[str, Any]:
    return {
        "id": unit_id,
        "name": f"Unit {unit_id}",
        "role": role,
        "language": language,
        "staff": [f"staff@{unit_id}.example.org"],
        "digest_to": [f"staff@{unit_id}.example.org", f"duty@{unit_id}.example.org"],
        "digest_at": "07:00",
        "mailboxes": [
            {
                "host": "127.0.0.1",
                "port": 1143,
                "security": "none",
                "username": f"{unit_id}-inbox@example.org",
                "password": "env:MT_DIGEST_IMAP",
            }
        ],
    }


def make_config(database: str, *, smtp_port: int = 2525, cdc_language: str = "vi") -> Config:
    """Units ``cdc`` (lead), ``med`` (member, English) and ``obs`` (observer, English)."""
    data = {
        "tracker": {
            "database": database,
            "timezone": "Asia/Ho_Chi_Minh",
            "case_prefix": "QN",
            "secret_key": "env:MT_DIGEST_SECRET",
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": "Mailtracker QN <tracker@example.org>",
        },
        "units": [
            unit("cdc", "lead", cdc_language),
            unit("med", "member", "en"),
            unit("obs", "observer", "en"),
        ],
    }
    return config_from_dict(data, environ=ENVIRON)


def add_case(
    session: Session,
    *,
    name: str,
    status: str = "new",
    units: tuple[str, ...] = ("cdc",),
    received_at: dt.datetime = NOW - HOUR,
    verify_by: dt.datetime | None = None,
    period_end: dt.date | None = None,
    next_followup_due: dt.datetime | None = None,
    created_at: dt.datetime | None = None,
    phone: str = "0905000000",
    commune: str = "Tịnh Khê",
    risk: str = "low",
    symptoms: tuple[str, ...] = (),
    came_from: str | None = None,
) -> Case:
    """A case visible to ``units`` (the first owns it), stored with the given deadlines."""
    case = Case(
        owner_unit=units[0],
        status=status,
        outcome="cleared" if status == "closed" else None,
        full_name=name,
        phone=phone,
        commune=commune,
        symptoms=list(symptoms),
        came_from=came_from,
        risk=risk,
        received_at=received_at,
        verify_by=verify_by,
        period_end=period_end,
        next_followup_due=next_followup_due,
        created_at=created_at or received_at,
        updated_at=created_at or received_at,
    )
    session.add(case)
    session.flush()
    case.ref = format_ref("QN", case.id)
    for unit_id in units:
        session.add(CaseUnit(case_id=case.id, unit_id=unit_id, added_at=case.created_at))
    session.flush()
    return case
