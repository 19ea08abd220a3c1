"""Urgent alerts and reply acknowledgements as plain data, with their subjects (pure)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from mailtracker.domain.workflow import Language, Status

AlertReason = Literal["high_risk", "symptoms"]


@dataclass(frozen=True, slots=True)
class AlertModel:
    """One urgent case for its owning unit: a high-risk report or a follow-up with symptoms.

    ``at`` is the report's arrival or the follow-up's time, ``deadline`` the verify-by time
    or next follow-up, both in the tracker's time zone.
    """

    unit_name: str
    language: Language
    ref: str
    reason: AlertReason
    status: Status
    at: dt.datetime
    full_name: str | None
    phone: str | None
    commune: str | None
    symptoms: tuple[str, ...] = ()
    came_from: str | None = None
    contact: str | None = None
    temperature: float | None = None
    note: str | None = None
    deadline: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class AckLine:
    """One line of a reply: applied (with the case's new status and deadline) or refused
    (``reason`` already in the unit's language, e.g. ``workflow.Refusal.message``)."""

    line: str
    applied: bool
    ref: str | None = None
    action: str | None = None
    status: Status | None = None
    deadline: dt.date | dt.datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AckModel:
    """The acknowledgement of one reply, in the unit's language."""

    language: Language
    unit_name: str
    lines: tuple[AckLine, ...]

    @property
    def applied_count(self) -> int:
        return sum(line.applied for line in self.lines)

    @property
    def refused_count(self) -> int:
        return len(self.lines) - self.applied_count


def alert_subject(model: AlertModel) -> str:
    """``[QN-0061] Cảnh báo: nguy cơ cao`` / ``[QN-0061] Alert: high risk``; no personal data."""
    if model.language == "vi":
        what = "nguy cơ cao" if model.reason == "high_risk" else "có triệu chứng khi theo dõi"
        return f"[{model.ref}] Cảnh báo: {what}"
    what = "high risk" if model.reason == "high_risk" else "symptoms at follow-up"
    return f"[{model.ref}] Alert: {what}"


def ack_subject(model: AckModel, prefix: str) -> str:
    """``[QN] Đã nhận: 2 áp dụng, 1 từ chối`` / ``[QN] Received: 2 applied, 1 refused``."""
    if model.language == "vi":
        return f"[{prefix}] Đã nhận: {model.applied_count} áp dụng, {model.refused_count} từ chối"
    return f"[{prefix}] Received: {model.applied_count} applied, {model.refused_count} refused"
