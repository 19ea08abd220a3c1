"""The case service: commands applied to stored cases, authorization and the audit history.

Cases are opened by the ingest service from generated notification e-mails, in a real
database (each test runs on SQLite and on PostgreSQL: the ``database_url`` fixture).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from store_support import ENVIRON, HO_CHI_MINH, config_data, notification

from mailtracker.config import Config, config_from_dict
from mailtracker.domain.workflow import check_invariants
from mailtracker.services.cases import CaseService, LineOutcome, case_state, is_case_overdue
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseEvent, Followup, ReplyLog

LEAD = "staff@cdc.example.org"
MEMBER = "staff@med.example.org"
OBSERVER = "staff@obs.example.org"
RECEIVED = dt.datetime(2020, 2, 12, 8, 0, tzinfo=HO_CHI_MINH)  # the notification's Date


def at(day: int, hour: int = 10, minute: int = 0, month: int = 2) -> dt.datetime:
    """A moment of 2020 in Quảng Ngãi local time."""
    return dt.datetime(2020, month, day, hour, minute, tzinfo=HO_CHI_MINH)


def make_config(database: str) -> Config:
    """Units ``cdc`` (lead), ``med`` (member) and ``obs`` (observer, no mailbox)."""
    data = config_data(database)
    data["units"].append(
        {
            "id": "obs",
            "name": "Leadership",
            "role": "observer",
            "staff": [OBSERVER],
            "digest_to": [OBSERVER],
        }
    )
    return config_from_dict(data, environ=ENVIRON)


class Tracker:
    """A database with cases in it and the service under test."""

    def __init__(self, database: Database, config: Config) -> None:
        self.database = database
        self.config = config
        self.service = CaseService(config)
        self.ingestor = Ingestor(database, config)
        self.reports = 0

    def report(self, unit: str = "cdc", **fields: Any) -> str:
        """Open a case from a notification received by ``unit``; its reference."""
        self.reports += 1
        number = self.reports
        raw = notification(
            report_id=f"SKVN-2020-{number:07d}",
            phone=f"0905{number:06d}",
            name=f"Nguyễn Văn {chr(ord('A') + number)}",
            **fields,
        )
        self.ingestor.import_messages(unit, [(f"{number}.eml", raw)], now=RECEIVED)
        result = self.ingestor.process_pending(now=RECEIVED)
        (ref,) = result.created
        return ref

    def line(
        self, text: str, actor: str = LEAD, now: dt.datetime | None = None, **options: Any
    ) -> LineOutcome:
        with self.database.session() as session:
            return self.service.apply_line(
                session, text, actor=actor, channel="email", now=now or at(12), **options
            )

    def case(self, ref: str) -> Case:
        with self.database.session(read_only=True) as session:
            case = session.scalars(select(Case).where(Case.ref == ref)).one()
            case.units  # noqa: B018 - loaded before the session closes
            return case

    def events(self, ref: str) -> list[CaseEvent]:
        with self.database.session(read_only=True) as session:
            return list(
                session.scalars(
                    select(CaseEvent)
                    .join(Case)
                    .where(Case.ref == ref)
                    .order_by(CaseEvent.at, CaseEvent.id)
                )
            )

    def followups(self, ref: str) -> list[Followup]:
        with self.database.session(read_only=True) as session:
            return list(
                session.scalars(
                    select(Followup).join(Case).where(Case.ref == ref).order_by(Followup.id)
                )
            )

    def reply_log(self) -> list[ReplyLog]:
        with self.database.session(read_only=True) as session:
            return list(session.scalars(select(ReplyLog).order_by(ReplyLog.id)))


@pytest.fixture
def tracker(database_url: str) -> Iterator[Tracker]:
    database = open_database(database_url)
    try:
        yield Tracker(database, make_config(database_url))
    finally:
        database.dispose()


def refused_events(tracker: Tracker, ref: str) -> list[dict[str, Any]]:
    return [event.details for event in tracker.events(ref) if event.action == "refused"]


# --- a case from new to closed ------------------------------------------------------------


def test_a_case_runs_from_new_to_released(tracker: Tracker) -> None:
    ref = tracker.report()
    assert ref == "QN-0001"
    assert tracker.case(ref).status == "new"

    home = tracker.line(f"{ref} cách ly tại nhà", now=at(12, 10))
    assert home.applied and home.code == "applied"
    assert (home.ref, home.action, home.status) == (ref, "home", "home_isolation")
    # No date given: the period counts from the report's arrival date (08/02/2020).
    assert home.deadline == "22/02/2020"
    assert home.deadline_at == dt.date(2020, 2, 22)
    assert home.message_vi == "QN-0001: cách ly tại nhà đến 22/02/2020"
    assert home.message_en == "QN-0001: home isolation until 22/02/2020"
    assert not home.alert
    case = tracker.case(ref)
    assert case.status == "home_isolation" and case.verify_by is None
    assert (case.period_start, case.period_start_reason) == (dt.date(2020, 2, 8), "arrival_date")
    assert case.period_end == dt.date(2020, 2, 22)
    assert case.next_followup_due == at(13, 10).astimezone(dt.UTC)

    check = tracker.line(f"{ref} check 36,8", now=at(13, 9))
    assert check.applied and check.status == "home_isolation" and not check.alert
    assert (
        check.message_vi == "QN-0001: theo dõi: bình thường, 36,8°C; cách ly tại nhà đến 22/02/2020"
    )
    assert check.message_en == "QN-0001: follow-up: ok, 36.8°C; home isolation until 22/02/2020"

    early = tracker.line(f"{ref} release", now=at(21, 23, 59))
    assert not early.applied and early.code == "not_due"
    assert early.status == "home_isolation" and early.deadline == "22/02/2020"

    # Local midnight has passed in Quảng Ngãi (still 21 February in UTC): the period is over.
    released = tracker.line(f"{ref} kết thúc", now=at(22, 0, 30))
    assert released.applied and released.status == "closed" and released.deadline is None
    assert released.message_vi == "QN-0001: đã đóng (hoàn thành)"
    assert released.message_en == "QN-0001: closed (released)"
    case = tracker.case(ref)
    assert (case.status, case.outcome) == ("closed", "released")
    assert case.closed_at == at(22, 0, 30).astimezone(dt.UTC)
    assert case.period_end is None and case.next_followup_due is None
    assert check_invariants(case_state(case)) == []

    events = tracker.events(ref)
    assert [(e.action, e.from_status, e.to_status) for e in events] == [
        ("created", None, "new"),
        ("home", "new", "home_isolation"),
        ("check", "home_isolation", "home_isolation"),
        ("refused", "home_isolation", "home_isolation"),
        ("release", "home_isolation", "closed"),
    ]
    for event in events[1:]:
        assert (event.actor, event.channel) == (LEAD, "email")
    assert events[1].details["period_start_reason"] == "arrival_date"
    assert events[1].details["line"] == f"{ref} cách ly tại nhà"
    assert events[1].details["unit"] == "cdc"
    assert events[3].details["code"] == "not_due"
    assert events[4].at == at(22, 0, 30).astimezone(dt.UTC)


def test_every_status_name_and_outcome_in_the_messages(tracker: Tracker) -> None:
    ref = tracker.report(arrival=None)
    monitor = tracker.line(f"{ref} monitor 10/02/2020", now=at(12))
    assert monitor.message_vi == f"{ref}: theo dõi y tế đến 24/02/2020"
    assert monitor.message_en == f"{ref}: medical monitoring until 24/02/2020"
    facility = tracker.line(f"{ref} facility", now=at(12))
    assert facility.message_vi == f"{ref}: cách ly tập trung đến 24/02/2020"
    hospital = tracker.line(f"{ref} nhập viện", now=at(13, 9))
    assert hospital.message_vi == f"{ref}: chuyển viện, theo dõi tiếp trước 14/02/2020 09:00"
    assert hospital.message_en == f"{ref}: hospital, next follow-up by 14/02/2020 09:00"
    assert hospital.deadline_at == at(14, 9).astimezone(dt.UTC)
    positive = tracker.line(f"{ref} dương tính", now=at(14))
    assert positive.message_vi == f"{ref}: đã đóng (dương tính)"

    for command, vi, en in [
        ("loại trừ không tiếp xúc", "loại trừ", "cleared"),
        ("mất dấu", "mất dấu", "lost"),
        ("chuyển Đà Nẵng", "chuyển đi: Đà Nẵng", "transferred: Đà Nẵng"),
    ]:
        other = tracker.report()
        outcome = tracker.line(f"{other} {command}")
        assert outcome.applied
        assert outcome.message_vi == f"{other}: đã đóng ({vi})"
        assert outcome.message_en == f"{other}: closed ({en})"

    fresh = tracker.report()
    note = tracker.line(f"{fresh} ghi chú gọi lại chiều nay", now=at(12, 10))
    assert note.applied and note.status == "new"
    assert note.message_vi == f"{fresh}: đã ghi chú; mới, xác minh trước 13/02/2020 08:00"
    assert note.message_en == f"{fresh}: note added; new, verify by 13/02/2020 08:00"


def test_a_line_without_a_reference_goes_to_the_subject_case(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line("home hôm qua", default_ref=ref, now=at(12), today=dt.date(2020, 2, 12))
    assert outcome.applied and outcome.ref == ref
    case = tracker.case(ref)
    assert (case.period_start, case.period_start_reason) == (dt.date(2020, 2, 11), "command")
    chatter = tracker.line("Cảm ơn anh, em sẽ gọi lại.", default_ref=ref)
    assert chatter.applied and chatter.action == "note"
    assert tracker.events(ref)[-1].details["note"] == "Cảm ơn anh, em sẽ gọi lại."


def test_an_empty_line_is_neither_applied_nor_recorded(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line("   -- ", default_ref=ref)
    assert not outcome.applied and outcome.code == "empty"
    assert [e.action for e in tracker.events(ref)] == ["created"]
    assert tracker.reply_log() == []


# --- refusals: each recorded --------------------------------------------------------------


def test_someone_not_on_any_staff_is_refused_and_recorded(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line(f"{ref} clear", actor="Mallory <MALLORY@evil.example>")
    assert not outcome.applied and outcome.code == "not_staff"
    assert outcome.message_en == f"{ref}: mallory@evil.example is not on any unit's staff"
    assert outcome.message_vi.startswith(f"{ref}: mallory@evil.example không thuộc")
    assert outcome.status == "new"
    assert tracker.case(ref).status == "new"
    (event,) = [e for e in tracker.events(ref) if e.action == "refused"]
    assert (event.actor, event.from_status, event.to_status) == (
        "mallory@evil.example",
        "new",
        "new",
    )
    assert event.details["code"] == "not_staff"
    assert event.details["requested"] == "clear"
    assert event.details["line"] == f"{ref} clear"


def test_an_observer_is_refused(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line(f"{ref} home", actor=OBSERVER)
    assert (outcome.applied, outcome.code) == (False, "observer")
    assert tracker.case(ref).status == "new"
    assert refused_events(tracker, ref)[0]["unit"] == "obs"


def test_a_member_changes_its_own_cases_only(tracker: Tracker) -> None:
    theirs = tracker.report(unit="cdc")
    own = tracker.report(unit="med", to="med-inbox@example.org")
    refused = tracker.line(f"{theirs} home", actor=MEMBER)
    assert (refused.applied, refused.code) == (False, "not_owner")
    assert "belongs to cdc" in refused.message_en
    assert tracker.case(theirs).status == "new"
    assert refused_events(tracker, theirs)[0]["code"] == "not_owner"
    applied = tracker.line(f"{own} home", actor=MEMBER)
    assert applied.applied and tracker.case(own).status == "home_isolation"
    assert tracker.events(own)[-1].details["unit"] == "med"


def test_a_reply_token_of_another_unit_is_refused(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line(f"{ref} clear", actor=MEMBER, token_unit="cdc", message_id=None)
    assert (outcome.applied, outcome.code) == (False, "not_staff")
    assert "staff of unit cdc" in outcome.message_en
    assert tracker.line(f"{ref} clear", actor=LEAD, token_unit="cdc").applied


def test_a_closed_case_refuses_everything_but_notes(tracker: Tracker) -> None:
    ref = tracker.report()
    assert tracker.line(f"{ref} clear").applied
    outcome = tracker.line(f"{ref} home 10/02/2020")
    assert (outcome.applied, outcome.code) == (False, "closed")
    assert outcome.status == "closed"
    assert "is closed (cleared)" in outcome.message_en
    assert tracker.line(f"{ref} note đã báo xã").applied
    case = tracker.case(ref)
    assert (case.status, case.outcome) == ("closed", "cleared")
    assert [e.action for e in tracker.events(ref)] == ["created", "clear", "refused", "note"]


def test_a_transition_the_table_forbids_is_refused(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line(f"{ref} check 36.5")
    assert (outcome.applied, outcome.code) == (False, "not_allowed")
    assert tracker.followups(ref) == []
    assert refused_events(tracker, ref)[0]["requested"] == "check"


def test_bad_dates_are_refused_on_the_case_they_name(tracker: Tracker) -> None:
    ref = tracker.report()
    unreadable = tracker.line(f"{ref} home 31/02/2020")
    assert (unreadable.applied, unreadable.code) == (False, "bad_date")
    assert unreadable.ref == ref and unreadable.message_en.startswith(f"{ref}: Cannot read")
    future = tracker.line(f"{ref} home 20/02/2020", now=at(12))
    assert (future.applied, future.code) == (False, "future_date")
    # Written without a reference, in a reply whose subject names the case.
    subject = tracker.line("facility 45/45", default_ref=ref)
    assert (subject.applied, subject.code, subject.ref) == (False, "bad_date", ref)
    assert [d["code"] for d in refused_events(tracker, ref)] == [
        "bad_date",
        "future_date",
        "bad_date",
    ]
    assert tracker.case(ref).status == "new"


def test_an_unknown_reference_goes_to_the_reply_log(tracker: Tracker) -> None:
    tracker.report()
    outcome = tracker.line("QN-0099 clear", actor="Epi <staff@cdc.example.org>")
    assert (outcome.applied, outcome.code, outcome.ref) == (False, "unknown_case", "QN-0099")
    assert outcome.message_en == "QN-0099: no such case"
    assert outcome.message_vi == "QN-0099: không có ca này"
    not_understood = tracker.line("Chào anh, cho em hỏi thăm")
    assert (not_understood.applied, not_understood.code) == (False, "not_understood")
    entries = tracker.reply_log()
    assert [(e.sender, e.line) for e in entries] == [
        (LEAD, "QN-0099 clear"),
        (LEAD, "Chào anh, cho em hỏi thăm"),
    ]
    assert entries[0].reason.startswith("unknown_case: ")
    assert entries[1].reason.startswith("not_understood: ")


def test_a_refusal_decided_before_the_workflow_is_recorded_the_same_way(
    tracker: Tracker,
) -> None:
    ref = tracker.report()
    with tracker.database.session() as session:
        outcome = tracker.service.refuse_line(
            session,
            f"{ref} clear",
            ref=ref,
            action="clear",
            code="token_expired",
            message_vi="mã trả lời đã hết hạn",
            message_en="the reply token has expired",
            actor=LEAD,
            channel="email",
            now=at(12),
        )
    assert outcome.message_en == f"{ref}: the reply token has expired"
    assert refused_events(tracker, ref)[0]["code"] == "token_expired"
    assert tracker.case(ref).status == "new"


# --- follow-ups and transfers -------------------------------------------------------------


def test_follow_ups_are_recorded_and_symptoms_raise_the_alert(tracker: Tracker) -> None:
    ref = tracker.report()
    assert tracker.line(f"{ref} facility", now=at(12, 9)).applied
    ok = tracker.line(f"{ref} check 36,9", now=at(12, 15), actor="Duty <Staff@CDC.example.org>")
    assert ok.applied and not ok.alert
    fever = tracker.line(f"{ref} check 37,8 ho nhẹ", now=at(13, 7))
    assert fever.applied and fever.alert
    assert "(alert)" in fever.message_en and "có triệu chứng" in fever.message_vi
    cough = tracker.line(f"{ref} ok ho khan", now=at(13, 16))
    assert cough.alert
    missed = tracker.line(f"{ref} không liên lạc được máy bận", now=at(14, 8))
    assert missed.applied and not missed.alert
    assert missed.message_en.startswith(f"{ref}: follow-up: missed; facility isolation")

    rows = tracker.followups(ref)
    assert [(r.result, r.temperature, r.note) for r in rows] == [
        ("ok", 36.9, None),
        ("symptoms", 37.8, "ho nhẹ"),
        ("symptoms", None, "ho khan"),
        ("missed", None, "máy bận"),
    ]
    assert {(r.actor, r.channel) for r in rows} == {(LEAD, "email")}
    assert [r.at for r in rows] == [
        moment.astimezone(dt.UTC) for moment in (at(12, 15), at(13, 7), at(13, 16), at(14, 8))
    ]
    case = tracker.case(ref)
    assert case.last_followup_at == at(14, 8).astimezone(dt.UTC)
    # Facility isolation: a follow-up every 12 hours.
    assert case.next_followup_due == at(14, 20).astimezone(dt.UTC)
    results = [e.details.get("result") for e in tracker.events(ref)]
    assert [result for result in results if result is not None] == [
        "ok",
        "symptoms",
        "symptoms",
        "missed",
    ]


def test_transfer_to_a_configured_unit_reassigns_and_shares_the_case(tracker: Tracker) -> None:
    ref = tracker.report()
    assert not tracker.line(f"{ref} home", actor=MEMBER).applied
    outcome = tracker.line(f"{ref} chuyển MED")
    assert outcome.applied and outcome.status == "new"
    assert outcome.message_en.startswith(f"{ref}: transferred to unit med; new, verify by")
    case = tracker.case(ref)
    assert case.owner_unit == "med" and case.status == "new"
    assert [unit.unit_id for unit in case.units] == ["cdc", "med"]
    event = tracker.events(ref)[-1]
    assert event.details["reassigned"] is True and event.details["from_unit"] == "cdc"
    # The new owner, a member unit, may now change it; a second transfer there is refused.
    assert tracker.line(f"{ref} home", actor=MEMBER).applied
    again = tracker.line(f"{ref} transfer med")
    assert (again.applied, again.code) == (False, "same_unit")
    # Back to cdc: cdc already sees the case, so it is not listed twice.
    assert tracker.line(f"{ref} transfer cdc").applied
    assert [unit.unit_id for unit in tracker.case(ref).units] == ["cdc", "med"]


def test_transfer_elsewhere_closes_the_case(tracker: Tracker) -> None:
    ref = tracker.report()
    outcome = tracker.line(f"{ref} transfer BV Đà Nẵng")
    assert outcome.applied and outcome.status == "closed"
    case = tracker.case(ref)
    assert (case.outcome, case.owner_unit) == ("transferred", "cdc")
    assert tracker.events(ref)[-1].details["to"] == "BV Đà Nẵng"


# --- overdue, history, concurrency --------------------------------------------------------


def test_overdue_cases(tracker: Tracker) -> None:
    waiting = tracker.report()
    isolated = tracker.report()
    assert tracker.line(f"{isolated} home 12/02/2020", now=at(12, 10)).applied

    def overdue(now: dt.datetime) -> set[str]:
        with tracker.database.session(read_only=True) as session:
            cases = session.scalars(select(Case)).all()
            return {c.ref or "" for c in cases if is_case_overdue(c, now, tracker.config)}

    assert overdue(at(12, 12)) == set()
    # Verification is due 24 hours after receipt; the first follow-up a day after isolation.
    assert overdue(at(13, 8, 1)) == {waiting}
    assert overdue(at(13, 10, 1)) == {waiting, isolated}
    assert tracker.line(f"{isolated} check 36.6", now=at(13, 11)).applied
    assert tracker.line(f"{waiting} clear", now=at(13, 11)).applied
    assert overdue(at(13, 12)) == set()
    # Followed up daily to the end, the period ends and the case is due for release.
    for day in range(14, 27):
        assert tracker.line(f"{isolated} check", now=at(day, 10, 30)).applied
    assert overdue(at(26, 11)) == {isolated}


def test_the_history_of_a_mixed_sequence_is_complete(tracker: Tracker) -> None:
    ref = tracker.report()
    script = [
        (LEAD, f"{ref} monitor", True),
        ("intruder@example.net", f"{ref} clear", False),
        (LEAD, f"{ref} check 36,7", True),
        (OBSERVER, f"{ref} note hello", False),
        (LEAD, f"{ref} home 11/02/2020", True),
        (LEAD, f"{ref} release", False),
        (LEAD, f"{ref} positive", True),
        (LEAD, f"{ref} monitor", False),
    ]
    for index, (actor, line, applied) in enumerate(script):
        outcome = tracker.line(line, actor=actor, now=at(12, 10, index))
        assert outcome.applied is applied, line
    events = tracker.events(ref)[1:]
    assert len(events) == len(script)
    for index, (event, (actor, line, applied)) in enumerate(zip(events, script, strict=True)):
        assert event.actor == actor
        assert event.at == at(12, 10, index).astimezone(dt.UTC)
        assert event.details["line"] == line
        assert (event.action == "refused") is not applied
    assert [e.to_status for e in events] == [
        "monitoring",
        "monitoring",
        "monitoring",
        "monitoring",
        "home_isolation",
        "home_isolation",
        "closed",
        "closed",
    ]
    assert check_invariants(case_state(tracker.case(ref))) == []


def test_two_concurrent_commands_on_one_case_never_interleave(tracker: Tracker) -> None:
    ref = tracker.report()
    outcomes: list[LineOutcome] = []
    barrier = threading.Barrier(2)

    def close(command: str) -> None:
        barrier.wait()
        outcomes.append(tracker.line(f"{ref} {command}"))

    threads = [threading.Thread(target=close, args=(cmd,)) for cmd in ("clear", "positive")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.applied for o in outcomes) == [False, True]
    (winner,) = [o for o in outcomes if o.applied]
    (loser,) = [o for o in outcomes if not o.applied]
    assert loser.code == "closed"
    case = tracker.case(ref)
    assert case.outcome == {"clear": "cleared", "positive": "positive"}[winner.action or ""]
    assert [e.action for e in tracker.events(ref)][1:] == [winner.action, "refused"]


def test_the_caller_owns_the_transaction(tracker: Tracker) -> None:
    ref = tracker.report()
    session: Session
    with pytest.raises(RuntimeError), tracker.database.session() as session:
        assert tracker.service.apply_line(
            session, f"{ref} clear", actor=LEAD, channel="cli", now=at(12)
        ).applied
        raise RuntimeError("the rest of the reply failed")
    assert tracker.case(ref).status == "new"
    assert [e.action for e in tracker.events(ref)] == ["created"]
