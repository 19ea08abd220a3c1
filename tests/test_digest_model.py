"""The digest model: sections, counts, subjects and observer redaction (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

from mailtracker.domain.digest import (
    CaseLine,
    CaseSnapshot,
    DigestModel,
    EventSnapshot,
    QuarantinedMail,
    build_digest,
    digest_subject,
    redact_for_observer,
)

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
# 07:00 local on 14 February 2020
NOW = dt.datetime(2020, 2, 14, 0, 0, tzinfo=dt.UTC)
SINCE = NOW - dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Unit:
    id: str
    name: str
    role: str
    language: str


CDC = Unit("cdc", "CDC Quảng Ngãi", "lead", "vi")


def case(ref: str, status: str = "new", **fields: object) -> CaseSnapshot:
    values: dict[str, object] = {
        "ref": ref,
        "status": status,
        "outcome": None,
        "owner_unit": "cdc",
        "full_name": f"Người {ref}",
        "phone": "0905123456",
        "commune": "Tịnh Khê",
        "received_at": NOW - 48 * HOUR,
        "verify_by": None,
        "period_end": None,
        "next_followup_due": None,
        "created_at": NOW - 48 * HOUR,
    }
    values.update(fields)
    return CaseSnapshot(**values)  # type: ignore[arg-type]


def sample_cases() -> list[CaseSnapshot]:
    return [
        case("QN-0001", verify_by=NOW - HOUR),  # verification overdue
        case("QN-0002", verify_by=NOW + 5 * HOUR, created_at=NOW - 3 * HOUR),  # new, not late
        case("QN-0003", "home_isolation", next_followup_due=NOW - 2 * HOUR),  # follow-up late
        case("QN-0004", "monitoring", next_followup_due=NOW + 4 * HOUR),  # due today
        case("QN-0005", "home_isolation", period_end=dt.date(2020, 2, 14)),  # release today
        case("QN-0006", "facility_isolation", period_end=dt.date(2020, 2, 13)),  # overdue release
        case("QN-0007", "monitoring", period_end=dt.date(2020, 2, 15)),  # release tomorrow
        case("QN-0008", "closed", outcome="cleared", created_at=NOW - 2 * HOUR),  # new, closed
        case("QN-0009", "monitoring", next_followup_due=NOW + 30 * HOUR),  # nothing due
    ]


def refs(lines: tuple[CaseLine, ...]) -> list[str]:
    return [line.ref for line in lines]


def build(unit: Unit = CDC) -> DigestModel:
    events = [
        EventSnapshot(
            "QN-0003", NOW - 5 * HOUR, "epi@example.org", "home", "new", "home_isolation"
        ),
        EventSnapshot(
            "QN-0009", NOW - 30 * HOUR, "epi@example.org", "check", "monitoring", "monitoring"
        ),
    ]
    quarantined = [QuarantinedMail(NOW - 2 * HOUR, "cdc-inbox@example.org", "no report found")]
    return build_digest(unit, sample_cases(), events, quarantined, now=NOW, tz=TZ, since=SINCE)


def test_sections_follow_the_due_rules() -> None:
    model = build()
    assert refs(model.verification_overdue) == ["QN-0001"]
    assert refs(model.new) == ["QN-0002", "QN-0008"]
    assert refs(model.followups_overdue) == ["QN-0003"]
    assert refs(model.followups_due) == ["QN-0004"]
    assert refs(model.release_today) == ["QN-0006", "QN-0005"]
    assert refs(model.release_tomorrow) == ["QN-0007"]


def test_counts_and_summary_numbers() -> None:
    model = build()
    assert model.counts_by_status == {
        "new": 2,
        "monitoring": 3,
        "home_isolation": 2,
        "facility_isolation": 1,
        "hospital": 0,
        "closed": 1,
    }
    assert model.overdue_count == 4
    assert model.new_count == 2
    assert model.date == dt.date(2020, 2, 14)


def test_deadlines_are_local_and_labelled() -> None:
    model = build()
    overdue = model.verification_overdue[0]
    assert overdue.deadline == dt.datetime(2020, 2, 14, 6, 0, tzinfo=TZ)
    assert overdue.deadline_label == "verification_overdue"
    assert model.release_tomorrow[0].deadline == dt.date(2020, 2, 15)
    assert model.new[0].deadline_label == "verification_due"
    assert model.new[1].deadline_label == "received"


def test_changes_and_quarantine_since_last_digest() -> None:
    model = build()
    assert [(c.ref, c.action) for c in model.changes] == [("QN-0003", "home")]
    assert model.changes[0].at.utcoffset() == dt.timedelta(hours=7)
    assert model.quarantined == 1
    assert model.quarantined_mail[0].mailbox == "cdc-inbox@example.org"


def test_quarantine_list_is_capped_but_counted() -> None:
    mails = [QuarantinedMail(NOW - i * HOUR, "box", "unreadable") for i in range(30)]
    model = build_digest(CDC, [], [], mails, now=NOW, tz=TZ, since=None, quarantined_shown=5)
    assert model.quarantined == 30
    assert len(model.quarantined_mail) == 5


def test_subjects_in_both_languages() -> None:
    model = build()
    assert digest_subject(model, "QN") == "[QN] Bản tin 14/02/2020: 4 quá hạn, 2 mới"
    english = dataclasses.replace(model, language="en")
    assert digest_subject(english, "QN") == "[QN] Digest 14/02/2020: 4 overdue, 2 new"


def test_observer_unit_gets_references_only() -> None:
    model = build(Unit("so-yte", "Sở Y tế", "observer", "vi"))
    assert model.observer
    lines = [line for _, section in model.sections for line in section]
    assert len(lines) == 8
    assert all(
        line.full_name is None and line.phone is None and line.commune is None for line in lines
    )
    assert refs(model.verification_overdue) == ["QN-0001"]
    assert model.counts_by_status["monitoring"] == 3


def test_redact_for_observer_strips_every_section() -> None:
    full = build()
    assert any(line.full_name for _, section in full.sections for line in section)
    redacted = redact_for_observer(full)
    assert redacted.observer
    for _, section in redacted.sections:
        assert all(
            (line.full_name, line.phone, line.commune) == (None, None, None) for line in section
        )
    assert [refs(s) for _, s in redacted.sections] == [refs(s) for _, s in full.sections]
