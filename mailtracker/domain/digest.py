"""The daily digest as plain data: which cases need what, built from snapshots (pure)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from mailtracker.domain.workflow import (
    STATUSES,
    CaseState,
    DueKind,
    Language,
    Outcome,
    Status,
    due_items,
    local_day,
)

DeadlineLabel = Literal[DueKind, "received"]


class UnitView(Protocol):
    """What the digest needs to know about its unit (``config.UnitSettings`` fits)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def language(self) -> Language: ...


@dataclass(frozen=True, slots=True)
class CaseSnapshot:
    """One case as the digest sees it; timestamps aware, dates local calendar days."""

    ref: str
    status: Status
    outcome: Outcome | None
    owner_unit: str
    full_name: str | None
    phone: str | None
    commune: str | None
    received_at: dt.datetime
    verify_by: dt.datetime | None
    period_end: dt.date | None
    next_followup_due: dt.datetime | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class EventSnapshot:
    """One history entry of a case."""

    ref: str
    at: dt.datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None


@dataclass(frozen=True, slots=True)
class QuarantinedMail:
    """A stored message nobody could read yet; no subject, sender or body (personal data)."""

    received_at: dt.datetime
    mailbox: str
    reason: str


@dataclass(frozen=True, slots=True)
class CaseLine:
    """One case in a section; personal fields are ``None`` in an observer's digest."""

    ref: str
    full_name: str | None
    phone: str | None
    commune: str | None
    status: Status
    deadline: dt.date | dt.datetime | None
    deadline_label: DeadlineLabel


@dataclass(frozen=True, slots=True)
class ChangeLine:
    """One change since the last digest; ``at`` in the tracker's time zone."""

    ref: str
    action: str
    at: dt.datetime
    actor: str
    from_status: str | None
    to_status: str | None


@dataclass(frozen=True, slots=True)
class DigestModel:
    """Everything one unit's digest shows; datetimes are in the tracker's time zone."""

    unit_id: str
    unit_name: str
    language: Language
    date: dt.date
    observer: bool
    counts_by_status: Mapping[str, int]
    new: tuple[CaseLine, ...]
    verification_overdue: tuple[CaseLine, ...]
    followups_due: tuple[CaseLine, ...]
    followups_overdue: tuple[CaseLine, ...]
    release_today: tuple[CaseLine, ...]
    release_tomorrow: tuple[CaseLine, ...]
    quarantined: int
    quarantined_mail: tuple[QuarantinedMail, ...]
    changes: tuple[ChangeLine, ...]

    @property
    def sections(self) -> tuple[tuple[str, tuple[CaseLine, ...]], ...]:
        """The case sections in display order, named as the templates' labels."""
        return (
            ("verification_overdue", self.verification_overdue),
            ("followups_overdue", self.followups_overdue),
            ("release_today", self.release_today),
            ("new", self.new),
            ("followups_due", self.followups_due),
            ("release_tomorrow", self.release_tomorrow),
        )

    @property
    def overdue_count(self) -> int:
        """Cases with an overdue verification or follow-up, or a period over (each once)."""
        lines = self.verification_overdue + self.followups_overdue + self.release_today
        return len({line.ref for line in lines})

    @property
    def new_count(self) -> int:
        return len(self.new)


def digest_subject(model: DigestModel, prefix: str) -> str:
    """``[QN] Bản tin 14/02/2020: 3 quá hạn, 5 mới`` (English: ``Digest ... 3 overdue, 5 new``)."""
    day = model.date.strftime("%d/%m/%Y")
    if model.language == "vi":
        return f"[{prefix}] Bản tin {day}: {model.overdue_count} quá hạn, {model.new_count} mới"
    return f"[{prefix}] Digest {day}: {model.overdue_count} overdue, {model.new_count} new"


def _redact(line: CaseLine) -> CaseLine:
    return replace(line, full_name=None, phone=None, commune=None)


def redact_for_observer(model: DigestModel) -> DigestModel:
    """The same digest with references only: no name, phone or commune on any line."""
    return replace(
        model,
        observer=True,
        new=tuple(map(_redact, model.new)),
        verification_overdue=tuple(map(_redact, model.verification_overdue)),
        followups_due=tuple(map(_redact, model.followups_due)),
        followups_overdue=tuple(map(_redact, model.followups_overdue)),
        release_today=tuple(map(_redact, model.release_today)),
        release_tomorrow=tuple(map(_redact, model.release_tomorrow)),
    )


def _state(case: CaseSnapshot) -> CaseState:
    return CaseState(
        status=case.status,
        outcome=case.outcome,
        received_at=case.received_at,
        verify_by=case.verify_by if case.status == "new" else None,
        owner_unit=case.owner_unit,
        period_end=case.period_end,
        next_followup_due=case.next_followup_due,
    )


def _line(
    case: CaseSnapshot, deadline: dt.date | dt.datetime | None, label: DeadlineLabel, tz: ZoneInfo
) -> CaseLine:
    if isinstance(deadline, dt.datetime):
        deadline = deadline.astimezone(tz)
    return CaseLine(
        ref=case.ref,
        full_name=case.full_name,
        phone=case.phone,
        commune=case.commune,
        status=case.status,
        deadline=deadline,
        deadline_label=label,
    )


def _by_deadline(line: CaseLine) -> tuple[str, str]:
    deadline = line.deadline
    if isinstance(deadline, dt.datetime):
        key = deadline.astimezone(dt.UTC).isoformat()
    elif isinstance(deadline, dt.date):
        key = deadline.isoformat()
    else:
        key = ""
    return key, line.ref


def build_digest(
    unit: UnitView,
    cases: Iterable[CaseSnapshot],
    events: Iterable[EventSnapshot],
    quarantined: Iterable[QuarantinedMail],
    *,
    now: dt.datetime,
    tz: ZoneInfo,
    since: dt.datetime | None,
    quarantined_shown: int = 20,
) -> DigestModel:
    """The digest of ``unit`` at ``now`` from the cases it can see, their history and the
    unreadable mail of its mailboxes. ``since`` is the previous digest (default: a day ago).

    Due rules are the workflow's; an observer unit's lines carry references only.
    """
    since = since if since is not None else now - dt.timedelta(days=1)
    sections: dict[str, list[CaseLine]] = {
        "new": [],
        "verification_overdue": [],
        "followups_due": [],
        "followups_overdue": [],
        "release_today": [],
        "release_tomorrow": [],
    }
    kind_to_section: dict[DueKind, str] = {
        "verification_overdue": "verification_overdue",
        "followup_due": "followups_due",
        "followup_overdue": "followups_overdue",
        "release_due": "release_today",
        "release_tomorrow": "release_tomorrow",
    }
    counts: Counter[str] = Counter()
    for case in cases:
        counts[case.status] += 1
        if since < case.created_at <= now:
            deadline = case.verify_by if case.status == "new" else None
            label: DeadlineLabel = "verification_due" if deadline else "received"
            sections["new"].append(_line(case, deadline or case.received_at, label, tz))
        if case.status == "closed":
            continue
        for item in due_items(_state(case), now, tz):
            section = kind_to_section.get(item.kind)
            if section is None:
                continue
            deadline_value: dt.date | dt.datetime = item.deadline
            if item.kind in {"release_due", "release_tomorrow"} and case.period_end is not None:
                deadline_value = case.period_end
            sections[section].append(_line(case, deadline_value, item.kind, tz))

    changes = sorted(
        (
            ChangeLine(
                ref=event.ref,
                action=event.action,
                at=event.at.astimezone(tz),
                actor=event.actor,
                from_status=event.from_status,
                to_status=event.to_status,
            )
            for event in events
            if since < event.at <= now
        ),
        key=lambda change: (change.at, change.ref),
    )
    unread = sorted(quarantined, key=lambda mail: mail.received_at)
    model = DigestModel(
        unit_id=unit.id,
        unit_name=unit.name,
        language=unit.language,
        date=local_day(now, tz),
        observer=False,
        counts_by_status={status: counts[status] for status in STATUSES},
        new=tuple(sorted(sections["new"], key=lambda line: line.ref)),
        verification_overdue=tuple(sorted(sections["verification_overdue"], key=_by_deadline)),
        followups_due=tuple(sorted(sections["followups_due"], key=_by_deadline)),
        followups_overdue=tuple(sorted(sections["followups_overdue"], key=_by_deadline)),
        release_today=tuple(sorted(sections["release_today"], key=_by_deadline)),
        release_tomorrow=tuple(sorted(sections["release_tomorrow"], key=_by_deadline)),
        quarantined=len(unread),
        quarantined_mail=tuple(
            replace(mail, received_at=mail.received_at.astimezone(tz))
            for mail in unread[:quarantined_shown]
        ),
        changes=tuple(changes),
    )
    return redact_for_observer(model) if unit.role == "observer" else model
