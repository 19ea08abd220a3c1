"""The ingest service: storing polled and imported mail, and turning it into cases."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from store_support import NOTIFICATIONS, make_config, notification, personal_mail

from mailtracker.config import Config
from mailtracker.domain.reports import Report
from mailtracker.parsing.message import ParsedMessage
from mailtracker.services.ingest import Ingestor, content_hash, header_message_id
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseEvent, CaseSource, MailboxState, Message
from mailtracker.store.queries import case_report

NOW = dt.datetime(2020, 2, 12, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


@pytest.fixture
def config(url: str) -> Config:
    return make_config(url)


@pytest.fixture
def ingestor(database: Database, config: Config) -> Ingestor:
    return Ingestor(database, config)


def count(db: Database, model: type[object]) -> int:
    with db.session(read_only=True) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def cases(db: Database) -> list[Case]:
    with db.session(read_only=True) as session:
        found = session.scalars(select(Case).order_by(Case.id)).all()
        for case in found:
            _ = case.units, case.sources, case.events
        return list(found)


# -- storing ----------------------------------------------------------------------------------


def test_store_batch_stores_new_uids_and_advances_the_position(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    assert ingestor.position(mailbox.name) == (None, 0)
    batch = [(3, notification(report_id="A")), (5, notification(report_id="B"))]
    assert ingestor.store_batch(mailbox, 77, batch, now=NOW) == 2
    assert ingestor.position(mailbox.name) == (77, 5)
    assert ingestor.store_batch(mailbox, 77, batch, now=NOW) == 0
    assert ingestor.store_batch(mailbox, 77, [(6, notification(report_id="C"))], now=NOW) == 1
    assert ingestor.position(mailbox.name) == (77, 6)
    assert count(ingestor.db, Message) == 3


def test_the_same_uid_twice_in_one_batch_is_stored_once(ingestor: Ingestor, config: Config) -> None:
    mailbox = config.units[0].mailboxes[0]
    raw = notification()
    assert ingestor.store_batch(mailbox, 1, [(4, raw), (4, raw)], now=NOW) == 1


def test_a_changed_uidvalidity_rescans_without_duplicates(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    first, second, third = (notification(report_id=f"R{i}") for i in range(3))
    assert ingestor.store_batch(mailbox, 100, [(10, first), (11, second)], now=NOW) == 2
    # The folder was recreated: the same messages come back under new UIDs, in two batches.
    assert ingestor.store_batch(mailbox, 200, [(1, first)], now=NOW) == 0
    assert ingestor.position(mailbox.name) == (200, 1)
    assert ingestor.store_batch(mailbox, 200, [(2, second), (3, third)], now=NOW) == 1
    assert ingestor.position(mailbox.name) == (200, 3)
    with ingestor.db.session(read_only=True) as session:
        stored = session.execute(select(Message.uidvalidity, Message.uid).order_by(Message.id))
        assert stored.all() == [(100, 10), (100, 11), (200, 3)]


def test_a_copy_under_the_same_uidvalidity_is_kept(ingestor: Ingestor, config: Config) -> None:
    mailbox = config.units[0].mailboxes[0]
    raw = notification()
    assert ingestor.store_batch(mailbox, 1, [(1, raw), (2, raw)], now=NOW) == 2
    result = ingestor.process_pending(now=NOW)
    assert (len(result.created), len(result.merged)) == (1, 1)
    assert count(ingestor.db, Case) == 1


def test_an_empty_batch_under_a_new_uidvalidity_resets_the_position(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    ingestor.store_batch(mailbox, 1, [(40, notification())], now=NOW)
    ingestor.store_batch(mailbox, 2, [], now=NOW)
    assert ingestor.position(mailbox.name) == (2, 0)


def test_an_oversize_message_is_kept_as_metadata_and_quarantined(url: str) -> None:
    config = make_config(url, max_message_bytes=2000)
    db = open_database(url)
    ingestor = Ingestor(db, config)
    big = notification(address="Thôn 1 " * 400)
    assert len(big) > 2000
    assert ingestor.store_batch(config.units[0].mailboxes[0], 1, [(1, big)], now=NOW) == 1
    with db.session(read_only=True) as session:
        message = session.scalars(select(Message)).one()
        assert message.raw is None
        assert message.size == len(big)
        assert message.quarantined
        assert message.processed_at is not None
        assert message.error is not None and "2000" in message.error
        assert message.message_id == header_message_id(big)
        assert message.content_hash == content_hash(big)
    assert ingestor.process_pending(now=NOW).processed == 0
    db.dispose()


def test_record_poll_keeps_the_last_success_and_the_last_error(ingestor: Ingestor) -> None:
    ingestor.record_poll("cdc-box", now=NOW, error=None)
    later = NOW + dt.timedelta(minutes=1)
    ingestor.record_poll("cdc-box", now=later, error="connection reset")
    with ingestor.db.session(read_only=True) as session:
        state = session.get_one(MailboxState, "cdc-box")
        assert (state.last_success_at, state.last_error, state.last_error_at) == (
            NOW,
            "connection reset",
            later,
        )
    assert ingestor.position("cdc-box") == (None, 0)


def test_header_message_id() -> None:
    assert header_message_id(b"Message-ID:  <abc@x.org>\r\n\r\nbody") == "abc@x.org"
    assert header_message_id(b"Subject: none\r\n\r\nbody") is None
    assert header_message_id(b"\xff\xfe\x00") is None


# -- processing -------------------------------------------------------------------------------


def corpus_expectations() -> list[dict[str, object]]:
    if not NOTIFICATIONS.is_dir():
        pytest.skip(f"sample corpus not found at {NOTIFICATIONS}")
    return [json.loads(path.read_text("utf-8")) for path in sorted(NOTIFICATIONS.glob("*.json"))]


def test_the_corpus_notifications_become_the_expected_cases(
    ingestor: Ingestor, config: Config
) -> None:
    expected = corpus_expectations()
    mailbox = config.units[0].mailboxes[0]
    files = sorted(NOTIFICATIONS.glob("*.eml"))
    batch = [(uid, path.read_bytes()) for uid, path in enumerate(files, start=1)]
    assert ingestor.store_batch(mailbox, 1, batch, now=NOW) == len(files)
    result = ingestor.process_pending(now=NOW)

    reports = [report for item in expected for report in item["reports"]]  # type: ignore[attr-defined]
    assert len(result.created) == len(reports)
    assert result.merged == []
    found = {case.phone: case for case in cases(ingestor.db)}
    for report in reports:
        case = found[report["phone"]]
        assert case_report(case).to_json() == report
        assert case.status == "new"
        assert case.owner_unit == "cdc"
        assert [unit.unit_id for unit in case.units] == ["cdc"]
        assert case.verify_by == case.received_at + config.rules.verify_within
    kinds = {item["file"]: item["kind"] for item in expected}
    with ingestor.db.session(read_only=True) as session:
        for message in session.scalars(select(Message).order_by(Message.uid)):
            name = files[message.uid - 1].with_suffix(".eml").name
            assert message.kind == kinds[name], name
            assert message.quarantined == (kinds[name] == "unknown"), name
            assert message.processed_at == NOW
    # Polling and processing again adds nothing.
    assert ingestor.store_batch(mailbox, 1, batch, now=NOW) == 0
    assert ingestor.process_pending(now=NOW).processed == 0
    assert count(ingestor.db, Case) == len(reports)


def test_a_notification_becomes_a_new_case(ingestor: Ingestor, config: Config) -> None:
    sent = dt.datetime(2020, 2, 12, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    raw = notification(date=sent)
    ingestor.store_batch(config.units[0].mailboxes[0], 1, [(1, raw)], now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert result.created == ["QN-0001"]
    (case,) = cases(ingestor.db)
    assert case.ref == "QN-0001"
    assert (case.status, case.outcome, case.owner_unit) == ("new", None, "cdc")
    assert case.received_at == sent
    assert case.verify_by == sent + dt.timedelta(hours=24)
    assert case.name_key == "nguyen thi hoa"
    assert case.arrival_date == dt.date(2020, 2, 8)
    assert case.period_start is None and case.period_end is None
    (event,) = case.events
    assert (event.action, event.channel, event.actor) == ("created", "system", "system")
    assert (event.from_status, event.to_status) == (None, "new")
    assert event.message_id == case.sources[0].message_id


def test_a_date_in_the_future_does_not_postpone_the_deadline(
    ingestor: Ingestor, config: Config
) -> None:
    raw = notification(date=NOW + dt.timedelta(days=3))
    ingestor.store_batch(config.units[0].mailboxes[0], 1, [(1, raw)], now=NOW)
    ingestor.process_pending(now=NOW)
    (case,) = cases(ingestor.db)
    assert case.received_at == NOW


def test_the_same_report_in_two_units_gives_one_case_both_can_see(
    ingestor: Ingestor, config: Config
) -> None:
    cdc, med = (unit.mailboxes[0] for unit in config.units)
    raw = notification()
    ingestor.store_batch(cdc, 1, [(1, raw)], now=NOW)
    ingestor.store_batch(med, 1, [(1, raw)], now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.created, result.merged) == (["QN-0001"], ["QN-0001"])
    (case,) = cases(ingestor.db)
    assert case.owner_unit == "cdc"
    assert sorted(unit.unit_id for unit in case.units) == ["cdc", "med"]
    assert len(case.sources) == 2
    assert [event.action for event in case.events] == ["created", "merged"]
    assert case.events[1].details["unit"] == "med"


def test_a_repeat_report_by_phone_and_name_fills_missing_fields(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    first = notification(report_id=None, address=None)
    later = dt.datetime(2020, 2, 20, 8, 0, tzinfo=dt.UTC)
    second = notification(
        report_id=None, name="NGUYEN THI HOA", address="Thôn 3, xã Tịnh Khê", date=later
    )
    ingestor.store_batch(mailbox, 1, [(1, first), (2, second)], now=later)
    result = ingestor.process_pending(now=later)
    assert len(result.created) == 1 and len(result.merged) == 1
    (case,) = cases(ingestor.db)
    assert case.full_name == "Nguyễn Thị Hoa"
    assert case.address == "Thôn 3, xã Tịnh Khê"
    assert "address" in case.events[1].details["filled"]


def test_a_report_more_than_thirty_days_later_opens_a_new_case(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    first = notification(report_id=None)
    much_later = dt.datetime(2020, 3, 20, 8, 0, tzinfo=dt.UTC)
    second = notification(report_id=None, date=much_later)
    ingestor.store_batch(mailbox, 1, [(1, first), (2, second)], now=much_later)
    assert len(ingestor.process_pending(now=much_later).created) == 2


def test_a_closed_case_is_not_reopened_by_a_repeat_report(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    ingestor.store_batch(mailbox, 1, [(1, notification())], now=NOW)
    ingestor.process_pending(now=NOW)
    with ingestor.db.session() as session:
        session.execute(update(Case).values(status="closed", outcome="cleared", verify_by=None))
    ingestor.store_batch(mailbox, 1, [(2, notification())], now=NOW)
    assert ingestor.process_pending(now=NOW).created == ["QN-0002"]


def test_unreadable_mail_is_quarantined_and_the_rest_is_processed(
    ingestor: Ingestor, config: Config
) -> None:
    mailbox = config.units[0].mailboxes[0]
    batch = [(1, b"\x00\xff\xfe not mail at all"), (2, personal_mail()), (3, notification())]
    ingestor.store_batch(mailbox, 1, batch, now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.processed, result.quarantined, len(result.created)) == (3, 2, 1)
    with ingestor.db.session(read_only=True) as session:
        quarantined = session.scalars(
            select(Message.uid).where(Message.quarantined.is_(True)).order_by(Message.uid)
        ).all()
        assert quarantined == [1, 2]
        kept = session.scalars(select(Message.raw).where(Message.uid == 1)).one()
        assert kept == batch[0][1]


def test_processing_twice_or_reparsing_duplicates_nothing(
    ingestor: Ingestor, config: Config
) -> None:
    cdc, med = (unit.mailboxes[0] for unit in config.units)
    ingestor.store_batch(
        cdc, 1, [(1, notification()), (2, notification(report_id="B", phone="0912345678"))], now=NOW
    )
    ingestor.store_batch(med, 1, [(1, notification())], now=NOW)
    ingestor.process_pending(now=NOW)
    before = (
        count(ingestor.db, Case),
        count(ingestor.db, CaseSource),
        count(ingestor.db, CaseEvent),
    )
    assert before == (2, 3, 3)
    # As after a crash that lost the processed marks, and as `reparse` does.
    with ingestor.db.session() as session:
        session.execute(update(Message).values(processed_at=None))
    assert ingestor.process_pending(now=NOW).processed == 3
    assert ingestor.reset_for_reparse(quarantined_only=False) == 3
    result = ingestor.process_pending(now=NOW)
    assert (result.processed, result.created, result.merged) == (3, [], [])
    after = (
        count(ingestor.db, Case),
        count(ingestor.db, CaseSource),
        count(ingestor.db, CaseEvent),
    )
    assert after == before


def test_a_failure_while_processing_leaves_no_partial_case(
    ingestor: Ingestor, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = config.units[0].mailboxes[0]
    ingestor.store_batch(mailbox, 1, [(1, notification())], now=NOW)
    original = Ingestor._create

    def fail_after_insert(self: Ingestor, session: Session, *args: object) -> Case:
        original(self, session, *args)  # type: ignore[arg-type]
        session.flush()
        raise RuntimeError("disk full")

    monkeypatch.setattr(Ingestor, "_create", fail_after_insert)
    result = ingestor.process_pending(now=NOW)
    assert (result.failed, result.created) == (1, [])
    assert count(ingestor.db, Case) == 0
    with ingestor.db.session(read_only=True) as session:
        message = session.scalars(select(Message)).one()
        assert message.quarantined and message.error == "processing failed: RuntimeError"
    monkeypatch.undo()
    assert ingestor.reset_for_reparse(quarantined_only=True) == 1
    # One case; its number may skip on PostgreSQL, whose sequences ignore rollbacks.
    (ref,) = ingestor.process_pending(now=NOW).created
    assert ref.startswith("QN-")
    assert count(ingestor.db, Case) == 1


def test_replies_are_stored_and_handed_to_the_reply_handler(
    database: Database, config: Config
) -> None:
    if not (NOTIFICATIONS.parent / "replies").is_dir():
        pytest.skip("sample corpus not found")
    raw = (NOTIFICATIONS.parent / "replies" / "01-gmail-vi-digest.eml").read_bytes()
    seen: list[tuple[int, str]] = []

    def handler(
        session: Session, message: Message, parsed: ParsedMessage, now: dt.datetime
    ) -> None:
        seen.append((message.uid, parsed.kind))

    ingestor = Ingestor(database, config, reply_handler=handler)
    ingestor.store_batch(config.units[0].mailboxes[0], 1, [(9, raw)], now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.replies, seen) == (1, [(9, "reply")])
    # Replies are never parsed again: their commands must not be applied twice.
    assert ingestor.reset_for_reparse(quarantined_only=False) == 0


def test_the_case_handler_sees_every_case_in_the_same_transaction(
    database: Database, config: Config
) -> None:
    calls: list[tuple[str | None, str, bool]] = []

    def handler(
        session: Session, case: Case, message: Message, created: bool, now: dt.datetime
    ) -> None:
        calls.append((case.ref, message.unit_id, created))
        if message.unit_id == "med":
            raise RuntimeError("outbox unavailable")

    ingestor = Ingestor(database, config, case_handler=handler)
    cdc, med = (unit.mailboxes[0] for unit in config.units)
    ingestor.store_batch(cdc, 1, [(1, notification())], now=NOW)
    ingestor.store_batch(med, 1, [(1, notification())], now=NOW)
    result = ingestor.process_pending(now=NOW)
    # The handler failed for the second message: the batch was rolled back, then each
    # message processed alone, and the merge of the second was rolled back with it.
    assert (len(result.created), result.merged, result.failed) == (1, [], 1)
    (ref,) = result.created
    assert calls[-2:] == [(ref, "cdc", True), (ref, "med", False)]
    (case,) = cases(database)
    assert [unit.unit_id for unit in case.units] == ["cdc"]


def test_import_dedupes_by_content_whatever_the_line_endings(
    ingestor: Ingestor, config: Config
) -> None:
    raw = notification()
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert ingestor.import_messages("cdc", [("a.eml", raw), ("b.eml", crlf)], now=NOW) == 1
    assert ingestor.import_messages("cdc", [("a.eml", raw)], now=NOW) == 0
    assert ingestor.import_messages("med", [("a.eml", raw)], now=NOW) == 1
    assert ingestor.position("import:cdc") == (0, 1)
    ingestor.process_pending(now=NOW)
    (case,) = cases(ingestor.db)
    assert sorted(unit.unit_id for unit in case.units) == ["cdc", "med"]


def test_import_of_many_messages_commits_in_chunks(ingestor: Ingestor) -> None:
    sources = (
        (f"{i}.eml", notification(report_id=f"SKVN-{i}", phone=f"09{i:08d}")) for i in range(250)
    )
    assert ingestor.import_messages("cdc", sources, now=NOW) == 250
    assert ingestor.position("import:cdc") == (0, 250)


def _process_in_child(url: str) -> None:
    db = open_database(url)
    Ingestor(db, make_config(url)).process_pending(now=NOW)
    db.dispose()


def test_two_processes_processing_at_once_duplicate_nothing(ingestor: Ingestor) -> None:
    sources = [
        (f"{i}.eml", notification(report_id=f"SKVN-{i}", phone=f"09{i:08d}")) for i in range(40)
    ]
    sources += [("again.eml", notification(report_id="SKVN-0", phone="0900000000", name="X"))]
    ingestor.import_messages("cdc", sources, now=NOW)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_process_in_child, args=(str(ingestor.db.url),)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    with ingestor.db.session(read_only=True) as session:
        refs = session.scalars(select(Case.ref)).all()
        assert len(refs) == len(set(refs)) == 40
        assert session.scalar(select(func.count()).select_from(CaseSource)) == 41
        assert session.scalar(select(func.count()).where(Message.processed_at.is_(None))) == 0
        events = session.execute(select(CaseEvent.action, func.count()).group_by(CaseEvent.action))
        assert dict(events.all()) == {"created": 40, "merged": 1}


def test_report_fields_round_trip_through_a_case(ingestor: Ingestor, config: Config) -> None:
    ingestor.store_batch(
        config.units[0].mailboxes[0], 1, [(1, notification(symptoms="Sốt, ho"))], now=NOW
    )
    ingestor.process_pending(now=NOW)
    (case,) = cases(ingestor.db)
    report = case_report(case)
    assert isinstance(report, Report)
    assert report.symptoms == ("fever", "cough")
    assert report.risk == "high"
