"""Whether two reports are about the same person (pure).

The rule of the brief: the same ``report_id``, or the same phone and folded name when the
earlier report was received at most 30 days before the later one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from mailtracker.domain.reports import Report
from mailtracker.domain.text import fold

SAME_PERSON_WINDOW = dt.timedelta(days=30)
RISK_ORDER: tuple[str, ...] = ("low", "medium", "high")


@dataclass(frozen=True, slots=True)
class PersonKey:
    """What identifies a person across reports; ``None`` fields take no part in matching."""

    report_id: str | None
    phone: str | None
    name_key: str | None

    @property
    def matchable(self) -> bool:
        return self.report_id is not None or (self.phone is not None and self.name_key is not None)


def name_key(full_name: str | None) -> str | None:
    """The folded name used for matching, ``None`` when there is no name."""
    if full_name is None:
        return None
    folded = fold(full_name)
    return folded or None


def person_key(report: Report) -> PersonKey:
    return PersonKey(
        report_id=report.report_id or None,
        phone=report.phone or None,
        name_key=name_key(report.full_name),
    )


def same_person(
    earlier: PersonKey,
    earlier_received_at: dt.datetime,
    later: PersonKey,
    later_received_at: dt.datetime,
) -> bool:
    """True when ``later`` is a repeat report of the person of ``earlier``."""
    if earlier.report_id is not None and earlier.report_id == later.report_id:
        return True
    if earlier.phone is None or earlier.name_key is None:
        return False
    if (earlier.phone, earlier.name_key) != (later.phone, later.name_key):
        return False
    return abs(later_received_at - earlier_received_at) <= SAME_PERSON_WINDOW


def merge_updates(current: Report, new: Report) -> dict[str, object]:
    """What a repeat report changes: the fields ``current`` lacks, and a higher risk."""
    updates: dict[str, object] = {}
    for field in fields(Report):
        if field.name == "risk":
            continue
        value = getattr(current, field.name)
        supplied = getattr(new, field.name)
        if value in (None, ()) and supplied not in (None, ()):
            updates[field.name] = supplied
    if RISK_ORDER.index(new.risk) > RISK_ORDER.index(current.risk):
        updates["risk"] = new.risk
    return updates
