"""Reading and writing cases: references, workflow state, and the JSON of ``cases``/``case``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailtracker.domain.matching import PersonKey
from mailtracker.domain.reports import Report
from mailtracker.domain.workflow import CaseState
from mailtracker.store.models import Case, CaseEvent, CaseSource, CaseUnit

_REF = re.compile(r"#?\s*(?:([A-Za-z]{1,6})\s*-?\s*)?0*(\d{1,9})")
REPORT_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Report))
STATE_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(CaseState))


def format_ref(prefix: str, case_id: int) -> str:
    """``QN-0042`` for case 42 under prefix ``QN``."""
    return f"{prefix}-{case_id:04d}"


def normalise_ref(text: str, prefix: str) -> str | None:
    """``QN-42``, ``qn42``, ``#42`` or ``42`` as ``QN-0042``; None when it is not a reference
    (or names another prefix)."""
    match = _REF.fullmatch(text.strip())
    if match is None or int(match.group(2)) == 0:
        return None
    if match.group(1) is not None and match.group(1).upper() != prefix.upper():
        return None
    return format_ref(prefix, int(match.group(2)))


def case_report(case: Case) -> Report:
    """The report fields of a case as a :class:`Report`."""
    values: dict[str, Any] = {name: getattr(case, name) for name in REPORT_FIELDS}
    values["symptoms"] = tuple(case.symptoms or ())
    return Report(**values)


def set_report_fields(case: Case, values: dict[str, object]) -> None:
    """Write report field values (as :class:`Report` holds them) onto ``case``."""
    for name, value in values.items():
        setattr(case, name, list(value) if name == "symptoms" else value)  # type: ignore[call-overload]


def case_key(case: Case) -> PersonKey:
    return PersonKey(report_id=case.report_id, phone=case.phone, name_key=case.name_key)


def case_state(case: Case) -> CaseState:
    """The workflow state of a case."""
    return CaseState(**{name: getattr(case, name) for name in STATE_FIELDS})


def store_state(case: Case, state: CaseState) -> None:
    """Copy a workflow state onto a case (the report's arrival date is left alone)."""
    for name in STATE_FIELDS:
        if name != "arrival_date":
            setattr(case, name, getattr(state, name))


def _with_details(statement: Any) -> Any:
    return statement.options(
        selectinload(Case.units),
        selectinload(Case.sources).selectinload(CaseSource.message),
    )


def list_cases(
    session: Session, *, unit: str | None = None, status: str | None = None
) -> Sequence[Case]:
    """Cases in reference order, optionally only those ``unit`` can see or in ``status``."""
    statement = select(Case).order_by(Case.id)
    if unit is not None:
        statement = statement.where(
            Case.id.in_(select(CaseUnit.case_id).where(CaseUnit.unit_id == unit))
        )
    if status is not None:
        statement = statement.where(Case.status == status)
    return session.scalars(_with_details(statement)).all()


def find_case(session: Session, ref: str) -> Case | None:
    """The case with this (normalised) reference, with its history and follow-ups loaded."""
    statement = _with_details(select(Case).where(Case.ref == ref)).options(
        selectinload(Case.events).selectinload(CaseEvent.message),
        selectinload(Case.followups),
    )
    case: Case | None = session.scalars(statement).first()
    return case


def _timestamp(value: dt.datetime | None, tz: ZoneInfo) -> str | None:
    return value.astimezone(tz).isoformat(timespec="seconds") if value is not None else None


def _date(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def case_json(case: Case, tz: ZoneInfo) -> dict[str, Any]:
    """A case object of ``cases --json`` (timestamps in ``tz`` with their offset)."""
    return {
        "ref": case.ref,
        "status": case.status,
        "outcome": case.outcome,
        "owner_unit": case.owner_unit,
        "units": [unit.unit_id for unit in case.units],
        "risk": case.risk,
        "received_at": _timestamp(case.received_at, tz),
        "verify_by": _timestamp(case.verify_by, tz),
        "period_start": _date(case.period_start),
        "period_start_reason": case.period_start_reason,
        "period_end": _date(case.period_end),
        "last_followup_at": _timestamp(case.last_followup_at, tz),
        "next_followup_due": _timestamp(case.next_followup_due, tz),
        "created_at": _timestamp(case.created_at, tz),
        "updated_at": _timestamp(case.updated_at, tz),
        "closed_at": _timestamp(case.closed_at, tz),
        "report": case_report(case).to_json(),
        "sources": [
            {
                "message_id": source.message.message_id,
                "mailbox": source.message.mailbox,
                "received_at": _timestamp(source.message.received_at, tz),
            }
            for source in case.sources
        ],
    }


def case_detail_json(case: Case, tz: ZoneInfo) -> dict[str, Any]:
    """The object of ``case REF --json``: the case, its history and its follow-ups."""
    detail = case_json(case, tz)
    detail["history"] = [
        {
            "at": _timestamp(event.at, tz),
            "actor": event.actor,
            "channel": event.channel,
            "action": event.action,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "message_id": event.message.message_id if event.message is not None else None,
            "details": event.details,
        }
        for event in case.events
    ]
    detail["followups"] = [
        {
            "at": _timestamp(followup.at, tz),
            "result": followup.result,
            "temperature": followup.temperature,
            "note": followup.note,
            "actor": followup.actor,
            "channel": followup.channel,
        }
        for followup in case.followups
    ]
    return detail
