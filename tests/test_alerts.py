"""Urgent alerts on a real database: once per case per event, to the owning unit, signed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from outgoing_support import HOUR, NOW, SECRET, add_case, make_config
from sqlalchemy import select
from store_support import notification

from mailtracker.config import Config
from mailtracker.daemon import AlertingIngestor
from mailtracker.domain.tokens import find_token, verify_token
from mailtracker.services.alerts import (
    queue_case_alert,
    queue_followup_alert,
    queue_high_risk_alerts,
)
from mailtracker.services.ingest import ProcessResult
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Followup, OutboxMessage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'tracker.db'}")
    yield database
    database.dispose()


@pytest.fixture
def config(db: Database) -> Config:
    return make_config(str(db.url))


def outbox(db: Database) -> list[OutboxMessage]:
    with db.session(read_only=True) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def parsed(row: OutboxMessage) -> EmailMessage:
    message = message_from_bytes(row.raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_high_risk_alert_goes_once_to_the_owning_unit(db: Database, config: Config) -> None:
    with db.session() as session:
        add_case(session, name="Phạm Văn Dũng", units=("med", "cdc"), risk="high",
                 symptoms=("fever", "cough"), came_from="Vũ Hán", verify_by=NOW + HOUR)  # fmt: skip
    with db.session() as session:
        assert queue_case_alert(session, config, "QN-0001", "high_risk", "high_risk", NOW)
        assert not queue_case_alert(session, config, "QN-0001", "high_risk", "high_risk", NOW)
    (row,) = outbox(db)
    assert row.dedup_key == "alert:QN-0001:high_risk"
    assert row.recipients == ["staff@med.example.org", "duty@med.example.org"]
    message = parsed(row)
    assert message["Subject"] == "[QN-0001] Alert: high risk"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    token = find_token([str(message["Reply-To"])], [str(message["Message-ID"])])
    assert token is not None and str(message["Reply-To"]).startswith("med-inbox+t.a.med.")
    check = verify_token(token, key=SECRET.encode(), now=NOW, max_age=dt.timedelta(days=14))
    assert check.ok and check.unit_id == "med"
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Phạm Văn Dũng" in text and "fever, cough" in text and "Vũ Hán" in text


def test_each_symptoms_follow_up_alerts_once(db: Database, config: Config) -> None:
    with db.session() as session:
        case = add_case(session, name="Lê Thị Hoa", status="home_isolation",
                        next_followup_due=NOW + 20 * HOUR)  # fmt: skip
        session.add(Followup(case_id=case.id, at=NOW - HOUR, result="symptoms",
                             temperature=38.2, note="ho nhẹ", actor="staff@cdc.example.org",
                             channel="email"))  # fmt: skip
        session.flush()
        assert queue_followup_alert(session, config, "QN-0001", NOW)
        assert not queue_followup_alert(session, config, "QN-0001", NOW + HOUR)
        session.add(Followup(case_id=case.id, at=NOW + 2 * HOUR, result="symptoms",
                             temperature=38.9, note=None, actor="staff@cdc.example.org",
                             channel="email"))  # fmt: skip
        session.flush()
        assert queue_followup_alert(session, config, "QN-0001", NOW + 2 * HOUR)
    rows = outbox(db)
    assert [row.dedup_key for row in rows] == [
        "alert:QN-0001:followup-1",
        "alert:QN-0001:followup-2",
    ]
    first = parsed(rows[0])
    assert first["Subject"] == "[QN-0001] Cảnh báo: có triệu chứng khi theo dõi"
    body = first.get_body(("plain",))
    assert body is not None and "38,2" in body.get_content() and "ho nhẹ" in body.get_content()


def test_unknown_case_or_unit_queues_nothing(db: Database, config: Config) -> None:
    with db.session() as session:
        add_case(session, name="Gone Unit", units=("removed",))
        assert not queue_case_alert(session, config, "QN-0001", "high_risk", "high_risk", NOW)
        assert not queue_case_alert(session, config, "QN-0404", "high_risk", "high_risk", NOW)
    assert outbox(db) == []


def test_sweep_alerts_recent_open_high_risk_cases_once(db: Database, config: Config) -> None:
    with db.session() as session:
        add_case(session, name="Recent High", risk="high", received_at=NOW - HOUR)
        add_case(session, name="Old High", risk="high", received_at=NOW - 72 * HOUR,
                 created_at=NOW - HOUR)  # fmt: skip
        add_case(session, name="Recent Low", risk="medium", received_at=NOW - HOUR)
        add_case(session, name="Closed High", risk="high", status="closed", received_at=NOW - HOUR)
    with db.session() as session:
        assert queue_high_risk_alerts(session, config, NOW) == ["QN-0001"]
    with db.session() as session:
        assert queue_high_risk_alerts(session, config, NOW) == []
    assert [row.dedup_key for row in outbox(db)] == ["alert:QN-0001:high_risk"]


def test_ingested_high_risk_report_is_alerted_with_its_fields_escaped(
    db: Database, config: Config
) -> None:
    evil = 'Vũ Hán <img src=x onerror="alert(1)">\r\nBcc: victim@example.net'
    received = dt.datetime(2020, 2, 12, 2, 0, tzinfo=dt.UTC)  # the mail is dated 01:00 UTC
    alerted: list[dt.datetime] = []

    def after(now: dt.datetime, _result: ProcessResult) -> None:
        with db.session() as session:
            queue_high_risk_alerts(session, config, now)
        alerted.append(now)

    ingestor = AlertingIngestor(db, config, after)
    ingestor.import_messages(
        "cdc",
        [
            ("high.eml", notification(symptoms="Sốt, ho", came_from=evil)),
            ("low.eml", notification(name="Trần Văn Bình", phone="0905333444",
                                     report_id="SKVN-2020-0090002", came_from=None)),
        ],
        now=received,
    )  # fmt: skip
    result = ingestor.process_pending(now=received)
    assert len(result.created) == 2 and alerted == [received]
    (row,) = outbox(db)
    assert row.dedup_key == "alert:QN-0001:high_risk"
    assert row.recipients == ["staff@cdc.example.org", "duty@cdc.example.org"]
    message = parsed(row)
    assert message["Bcc"] is None
    assert b"victim" not in row.raw.split(b"\r\n\r\n", 1)[0]
    html = message.get_body(("html",))
    assert html is not None
    soup = BeautifulSoup(html.get_content(), "html.parser")
    assert soup.find("img") is None
    assert 'Vũ Hán <img src=x onerror="alert(1)">' in soup.get_text()


def test_a_failing_after_processing_step_is_logged_and_never_raised(
    db: Database, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(_now: dt.datetime, _result: ProcessResult) -> None:
        raise RuntimeError("outbox unavailable")

    ingestor = AlertingIngestor(db, config, failing)
    ingestor.import_messages("cdc", [("high.eml", notification(symptoms="Sốt, ho"))], now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert result.created == ["QN-0001"]
    assert "after processing: RuntimeError (details at DEBUG level)" in caplog.text
