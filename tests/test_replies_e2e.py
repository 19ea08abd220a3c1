"""Replies end to end: a real Dovecot holds the units' mailboxes, a real SMTP server (aiosmtpd)
receives the digest and the acknowledgements; replies are delivered, polled and applied."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from reply_support import (
    DOC,
    EPI,
    NOW,
    PEOPLE,
    SECRET,
    SENT,
    bare,
    case,
    config_data,
    read,
    reply,
    text_of,
)
from servers import ImapServer
from smtp_capture import SmtpCapture
from store_support import notification

from mailtracker.config import Config, config_from_dict
from mailtracker.mail.imap import MailboxPoller
from mailtracker.mail.outbox import OutboxSender
from mailtracker.services.digest import DigestService
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import Database, open_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD = "imap-pw"


@dataclass
class Site:
    config: Config
    db: Database
    imap: ImapServer
    smtp: SmtpCapture
    ingestor: Ingestor

    def deliver(self, unit_id: str, raw: bytes) -> None:
        self.imap.append(f"{unit_id}-inbox@example.org", raw)

    def poll(self) -> None:
        for settings in self.config.mailboxes:
            MailboxPoller(settings, self.ingestor, clock=lambda: NOW).poll_once()

    def flush(self) -> None:
        assert self.config.smtp is not None
        result = OutboxSender(self.db, self.config.smtp).flush(NOW)
        assert result.error is None and result.failed == 0


@pytest.fixture
def site(database_url: str, dovecot: ImapServer) -> Iterator[Site]:
    smtp = SmtpCapture()
    smtp.start()
    data = config_data(database_url, smtp_port=smtp.port)
    for unit in data["units"]:
        dovecot.add_user(f"{unit['id']}-inbox@example.org", PASSWORD)
        for mailbox in unit["mailboxes"]:
            mailbox.update(host=dovecot.host, port=dovecot.port, idle=False)
    config = config_from_dict(data, environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": PASSWORD})
    db = open_database(config.tracker.database)
    ingestor = Ingestor(db, config, reply_handler=ReplyService(config))
    try:
        yield Site(config, db, dovecot, smtp, ingestor)
    finally:
        db.dispose()
        smtp.stop()


def test_staff_run_cases_by_replying_and_get_accurate_acknowledgements(site: Site) -> None:
    for unit_id, name, phone, report_id in PEOPLE:
        site.deliver(unit_id, notification(name=name, phone=phone, report_id=report_id))
    site.poll()
    assert case(site.db, "QN-0003").owner_unit == "med"

    assert DigestService(site.config, site.db, attach_xlsx=False).send("cdc", SENT.date(), NOW)
    site.flush()
    [digest] = [m for m in site.smtp.messages if m.rcpt_tos == (EPI,)]
    assert "QN-0001" in text_of(digest.message)

    # Gmail (Vietnamese), Outlook and an HTML-only client, each quoting the digest.
    site.deliver("cdc", reply(digest.raw, "QN-0001 cách ly tại nhà 10/02/2020", client="gmail"))
    site.deliver("cdc", reply(digest.raw, "QN-2 theo dõi", client="outlook"))
    site.deliver("cdc", reply(digest.raw, "#3 clear", client="html"))
    # An out-of-office answer, a forged sender without token, staff of another unit.
    site.deliver(
        "cdc",
        reply(
            digest.raw,
            "Tôi nghỉ phép. QN-0002 clear",
            subject="Trả lời tự động: bản tin",
            headers={"Auto-Submitted": "auto-replied"},
        ),
    )
    forged = reply(digest.raw, "QN-0002 clear", sender="mallory@evil.example.net")
    forged = forged.replace(b"cdc-inbox+t.", b"cdc-inbox+x.").replace(b"<t.", b"<x.")
    site.deliver("cdc", forged)
    site.deliver("med", reply(digest.raw, "QN-0003 monitor", sender=DOC))
    site.poll()
    site.flush()

    assert case(site.db, "QN-0001").status == "home_isolation"
    assert case(site.db, "QN-0002").status == "monitoring"
    cleared = case(site.db, "QN-0003")
    assert (cleared.status, cleared.outcome) == ("closed", "cleared")
    refused = [e for e in case(site.db, "QN-0002").events if e.action == "refused"]
    assert [e.details["code"] for e in refused] == ["token_missing"]

    acks = [m for m in site.smtp.messages if m.message["Auto-Submitted"] == "auto-replied"]
    assert sorted(m.rcpt_tos for m in acks) == [(DOC,), (EPI,), (EPI,), (EPI,)]
    assert not any("evil" in recipient for m in site.smtp.messages for recipient in m.rcpt_tos)
    bodies = [text_of(m.message) for m in acks if m.rcpt_tos == (EPI,)]
    assert any("✓ QN-0001 cách ly tại nhà 10/02/2020" in b and "24/02/2020" in b for b in bodies)
    assert any("✓ QN-2 theo dõi" in b for b in bodies)
    assert any("✓ #3 clear" in b for b in bodies)
    [doc_ack] = [m for m in acks if m.rcpt_tos == (DOC,)]
    assert "is not on the staff of unit cdc" in text_of(doc_ack.message)
    for ack in acks:
        assert ack.message["In-Reply-To"]
        assert bare(str(ack.message["To"])) in (EPI, DOC)

    # The acknowledgement carries a token: a reply to it works, and the same reply delivered
    # to two mailboxes applies once.
    first_ack = next(m for m in acks if "QN-0001" in text_of(m.message))
    answer = reply(first_ack.raw, "QN-0001 check 36,8", date=SENT + dt.timedelta(hours=1))
    site.deliver("cdc", answer)
    site.deliver("med", answer)
    site.poll()
    site.flush()
    checks = [e for e in case(site.db, "QN-0001").events if e.action == "check"]
    assert len(checks) == 1
    latest = [
        m for m in site.smtp.messages if m.message["In-Reply-To"] == read(answer)["Message-ID"]
    ]
    assert len(latest) == 1 and "✓ QN-0001 check 36,8" in text_of(latest[0].message)
