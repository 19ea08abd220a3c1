"""The digest service on a real database, delivered through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from openpyxl import load_workbook
from outgoing_support import ENVIRON, HOUR, NOW, SECRET, TODAY, add_case, make_config
from smtp_capture import SmtpCapture
from sqlalchemy import select

from mailtracker.config import Config
from mailtracker.domain.tokens import find_token, verify_token
from mailtracker.mail.outbox import OutboxSender
from mailtracker.parsing.reply import MARKER
from mailtracker.services.digest import DigestService, digest_key
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import CaseEvent, DigestSent, Message, OutboxMessage

pytestmark = pytest.mark.timeout(60)

EVIL_NAME = 'Eve <script>alert("x")</script> & "Bé"\r\nBcc: victim@example.net'
EVIL_COMMUNE = "Tịnh Khê\r\nSubject: forged\r\n\r\n-- Reply above this line --"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'tracker.db'}")
    yield database
    database.dispose()


def known_cases(db: Database) -> None:
    """One case per digest section for ``cdc``, a closed one, one only ``med`` sees, mail."""
    with db.session() as session:
        add_case(
            session,
            name="Nguyễn Văn An",
            phone="0905000001",
            received_at=NOW - 30 * HOUR,
            verify_by=NOW - 6 * HOUR,
        )
        add_case(
            session,
            name="Trần Thị Bình",
            phone="0905000002",
            status="home_isolation",
            received_at=NOW - 300 * HOUR,
            period_end=TODAY,
            next_followup_due=NOW + 20 * HOUR,
            units=("cdc", "obs"),
        )
        monitored = add_case(
            session,
            name="Lê Văn Cường",
            phone="0905000003",
            status="monitoring",
            received_at=NOW - 100 * HOUR,
            period_end=TODAY + dt.timedelta(days=5),
            next_followup_due=NOW - 2 * HOUR,
        )
        add_case(
            session,
            name="Phạm Thị Dung",
            phone="0905000004",
            received_at=NOW - 2 * HOUR,
            verify_by=NOW + 22 * HOUR,
            units=("cdc", "obs"),
        )
        add_case(
            session,
            name="Hoàng Văn Em",
            phone="0905000005",
            status="facility_isolation",
            received_at=NOW - 200 * HOUR,
            period_end=TODAY + dt.timedelta(days=1),
            next_followup_due=NOW + 5 * HOUR,
        )
        add_case(
            session,
            name="Đỗ Thị Phương",
            phone="0905000006",
            status="closed",
            received_at=NOW - 400 * HOUR,
        )
        other = add_case(
            session,
            name="Vũ Văn Giang",
            phone="0905000007",
            units=("med",),
            received_at=NOW - 3 * HOUR,
            verify_by=NOW - HOUR,
        )
        session.add(
            DigestSent(unit_id="cdc", date=TODAY - dt.timedelta(days=1), sent_at=NOW - 24 * HOUR)
        )
        session.add_all(
            [
                CaseEvent(
                    case_id=monitored.id,
                    at=NOW - HOUR,
                    actor="staff@cdc.example.org",
                    channel="email",
                    action="monitor",
                    from_status="new",
                    to_status="monitoring",
                    details={},
                ),
                CaseEvent(
                    case_id=monitored.id,
                    at=NOW - 25 * HOUR,
                    actor="staff@cdc.example.org",
                    channel="email",
                    action="note",
                    from_status="new",
                    to_status="new",
                    details={},
                ),
                CaseEvent(
                    case_id=other.id,
                    at=NOW - HOUR,
                    actor="staff@med.example.org",
                    channel="email",
                    action="note",
                    from_status="new",
                    to_status="new",
                    details={},
                ),
            ]
        )
        for unit_id, handled in (("cdc", None), ("cdc", NOW - HOUR), ("med", None)):
            uid = session.scalar(select(Message.id).order_by(Message.id.desc()).limit(1)) or 0
            session.add(
                Message(
                    mailbox=f"{unit_id}:inbox",
                    uidvalidity=1,
                    uid=uid + 1,
                    unit_id=unit_id,
                    content_hash=f"h{uid}",
                    raw=b"x",
                    size=1,
                    received_at=NOW - 2 * HOUR,
                    quarantined=True,
                    error="neither a notification nor a reply",
                    processed_at=NOW - 2 * HOUR,
                    handled_at=handled,
                )
            )


def refs(lines: object) -> list[str]:
    return [line.ref for line in lines]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("language", "subject", "section_title"),
    [
        ("vi", "[QN] Bản tin 14/02/2020: 3 quá hạn, 1 mới", "Quá hạn xác minh"),
        ("en", "[QN] Digest 14/02/2020: 3 overdue, 1 new", "Verification overdue"),
    ],
)
def test_sections_of_a_known_set_of_cases(
    tmp_path: Path, db: Database, language: str, subject: str, section_title: str
) -> None:
    config = make_config(str(db.url), cdc_language=language)
    known_cases(db)
    with db.session(read_only=True) as session:
        built = DigestService(config, db).build(session, "cdc", TODAY, NOW)
    model = built.model
    assert refs(model.verification_overdue) == ["QN-0001"]
    assert refs(model.release_today) == ["QN-0002"]
    assert refs(model.followups_overdue) == ["QN-0003"]
    assert refs(model.new) == ["QN-0004"]
    assert refs(model.followups_due) == ["QN-0005"]
    assert refs(model.release_tomorrow) == ["QN-0005"]
    assert dict(model.counts_by_status) == {
        "new": 2, "monitoring": 1, "home_isolation": 1, "facility_isolation": 1,
        "hospital": 0, "closed": 1,
    }  # fmt: skip
    assert [(c.ref, c.action) for c in model.changes] == [("QN-0003", "monitor")]
    assert model.quarantined == 1
    assert built.subject == subject
    assert built.text.startswith(MARKER)
    assert section_title in built.text and section_title in built.html
    assert "Nguyễn Văn An | 0905000001 | Tịnh Khê" in built.text
    assert "QN-0007" not in built.text and "Vũ Văn Giang" not in built.html


def test_observer_gets_counts_and_references_only(db: Database) -> None:
    config = make_config(str(db.url))
    known_cases(db)
    with db.session(read_only=True) as session:
        built = DigestService(config, db).build(session, "obs", TODAY, NOW)
    assert refs(built.model.release_today) == ["QN-0002"]
    assert refs(built.model.new) == ["QN-0004"]
    assert built.model.counts_by_status["new"] == 1
    html_text = BeautifulSoup(built.html, "html.parser").get_text()
    for personal in ("Trần Thị Bình", "0905000002", "Phạm Thị Dung", "0905000004", "Tịnh Khê"):
        assert personal not in built.text
        assert personal not in html_text
    assert "QN-0002" in built.text and "QN-0004" in html_text
    assert built.xlsx is None


def test_send_records_and_queues_once_with_a_signed_reply_token(db: Database) -> None:
    config = make_config(str(db.url))
    known_cases(db)
    service = DigestService(config, db)
    assert service.send("cdc", TODAY, NOW) is True
    assert service.send("cdc", TODAY, NOW + HOUR) is False
    with db.session(read_only=True) as session:
        rows = session.scalars(select(OutboxMessage)).all()
        sent = session.scalars(select(DigestSent).where(DigestSent.date == TODAY)).all()
    assert (
        [row.dedup_key for row in rows] == [digest_key("cdc", TODAY)] == ["digest:cdc:2020-02-14"]
    )
    assert [(s.unit_id, s.outbox_id) for s in sent] == [("cdc", rows[0].id)]
    assert rows[0].recipients == ["staff@cdc.example.org", "duty@cdc.example.org"]
    message = message_from_bytes(rows[0].raw, policy=policy.default)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["X-Mailtracker-Loop"]
    reply_to = str(message["Reply-To"])
    assert reply_to.startswith("cdc-inbox+t.d.cdc.") and reply_to.endswith("@example.org")
    token = find_token([reply_to], [])
    assert token is not None and token in str(message["Message-ID"])
    check = verify_token(token, key=SECRET.encode(), now=NOW, max_age=dt.timedelta(days=14))
    assert check.ok and check.unit_id == "cdc"


def test_xlsx_of_open_cases_holds_text_as_text(db: Database) -> None:
    config = make_config(str(db.url))
    with db.session() as session:
        add_case(
            session,
            name='=HYPERLINK("http://evil.example","x")\x07',
            phone="0905111222",
            verify_by=NOW + HOUR,
        )
        add_case(session, name="Closed Person", status="closed")
    DigestService(config, db).send("cdc", TODAY, NOW)
    with db.session(read_only=True) as session:
        raw = session.scalars(select(OutboxMessage.raw)).one()
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "QN-cdc-2020-02-14.xlsx"
    sheet = load_workbook(io.BytesIO(attachment.get_content())).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:5] == ("Mã", "Họ tên", "Điện thoại", "Xã/Phường", "Trạng thái")
    assert len(rows) == 2  # the closed case is left out
    assert rows[1][0] == "QN-0001"
    assert rows[1][1] == '=HYPERLINK("http://evil.example","x") '
    assert sheet["B2"].data_type == "s"
    assert rows[1][2] == "0905111222"


def test_html_escaping_and_header_injection_in_a_delivered_digest(
    db: Database, smtp_server: SmtpCapture
) -> None:
    config = make_config(str(db.url), smtp_port=smtp_server.port, cdc_language="en")
    with db.session() as session:
        add_case(session, name=EVIL_NAME, commune=EVIL_COMMUNE, verify_by=NOW + HOUR)
    assert DigestService(config, db).send("cdc", TODAY, NOW)
    assert config.smtp is not None
    result = OutboxSender(db, config.smtp).flush(NOW)
    assert result.sent == 1
    (captured,) = smtp_server.messages
    assert sorted(captured.rcpt_tos) == ["duty@cdc.example.org", "staff@cdc.example.org"]
    message = captured.message
    assert message["Bcc"] is None
    assert message["Subject"] == "[QN] Digest 14/02/2020: 0 overdue, 1 new"
    header_block = captured.raw.split(b"\r\n\r\n", 1)[0]
    assert b"victim" not in header_block and b"forged" not in header_block
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    html_source = html.get_content()
    assert "<script>" not in html_source
    assert "&lt;script&gt;" in html_source
    soup = BeautifulSoup(html_source, "html.parser")
    assert soup.find("script") is None
    assert 'Eve <script>alert("x")</script> & "Bé"  Bcc: victim@example.net' in soup.get_text()
    lines = text.get_content().splitlines()
    assert lines[0] == MARKER
    forged = [line for line in lines if "forged" in line or "Reply above" in line]
    assert forged[0] == MARKER
    assert forged[1:] and all(line.startswith("- QN-0001 | Eve") for line in forged[1:])


def _cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENVIRON}
    return subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _write_config(tmp_path: Path, config: Config, smtp_port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[tracker]
database = "{config.tracker.database}"
case_prefix = "QN"
secret_key = "env:MT_DIGEST_SECRET"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "tracker@example.org"

[[units]]
id = "cdc"
name = "Unit cdc"
role = "lead"
staff = ["staff@cdc.example.org"]
digest_to = ["staff@cdc.example.org"]
language = "en"

  [[units.mailboxes]]
  host = "127.0.0.1"
  port = 1143
  security = "none"
  username = "cdc-inbox@example.org"
  password = "env:MT_DIGEST_IMAP"
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.timeout(120)
def test_digest_and_outbox_commands(tmp_path: Path, db: Database, smtp_server: SmtpCapture) -> None:
    config = make_config(str(db.url))
    now = dt.datetime.now(dt.UTC)
    with db.session() as session:
        add_case(session, name="Nguyễn Văn An", phone="0905000001", received_at=now - HOUR,
                 verify_by=now + HOUR)  # fmt: skip
    path = _write_config(tmp_path, config, smtp_server.port)
    html_file = tmp_path / "digest.html"

    dry = _cli(path, "digest", "--unit", "cdc", "--dry-run", "--html", str(html_file))
    assert dry.returncode == 0, dry.stderr
    assert "Subject: [QN] Digest" in dry.stdout and "Nguyễn Văn An" in dry.stdout
    assert "QN-0001" in html_file.read_text(encoding="utf-8")
    with db.session(read_only=True) as session:
        assert session.scalars(select(OutboxMessage)).all() == []
        assert session.scalars(select(DigestSent)).all() == []
    assert "Nguyễn Văn An" not in dry.stderr

    queued = _cli(path, "digest", "--unit", "cdc")
    assert queued.returncode == 0, queued.stderr
    again = _cli(path, "digest", "--unit", "cdc")
    assert again.returncode == 1

    listing = _cli(path, "outbox")
    assert listing.returncode == 0
    assert "queued" in listing.stdout and "digest:cdc:" in listing.stdout

    smtp_server.stop()
    down = _cli(path, "outbox", "--flush")
    assert down.returncode == 1
    assert "to retry 1" in down.stdout
    assert smtp_server.messages == []

    smtp_server.start()
    with db.session() as session:  # the retry falls due now rather than in a minute
        row = session.scalars(select(OutboxMessage)).one()
        assert row.attempts == 1 and row.last_error
        row.next_attempt_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    flushed = _cli(path, "outbox", "--flush")
    assert flushed.returncode == 0, flushed.stderr
    assert "sent 1" in flushed.stdout
    assert len(smtp_server.messages) == 1
    assert _cli(path, "outbox", "--flush").returncode == 0
    assert len(smtp_server.messages) == 1
    assert "sent" in _cli(path, "outbox").stdout


def test_unknown_unit_is_a_clear_error(tmp_path: Path, db: Database) -> None:
    path = _write_config(tmp_path, make_config(str(db.url)), 2525)
    result = _cli(path, "digest", "--unit", "nope", "--dry-run")
    assert result.returncode == 2
    assert "unknown unit id 'nope'" in result.stderr
