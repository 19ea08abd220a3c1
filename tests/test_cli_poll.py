"""``mailtracker poll --once`` as an operator runs it: a real Dovecot, the installed command,
notifications and a staff reply in the same inbox."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reply_support import reply
from servers import ImapServer, MakeConfig
from sqlalchemy import func, select
from store_support import notification

from mailtracker.config import load_config
from mailtracker.mail.lease import MailboxLease
from mailtracker.store.db import open_database
from mailtracker.store.models import Case, CaseEvent, Message, OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STAFF = "staff-cdc@example.org"


def poll_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config), "poll", "--once"],
        cwd=config.parent,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=90,
    )


def with_smtp(config: Path) -> Path:
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text + '\n[smtp]\nhost = "127.0.0.1"\nport = 2525\nsecurity = "none"\n'
        'from = "Mailtracker <tracker@example.org>"\n',
        encoding="utf-8",
    )
    return config


def test_poll_once_alerts_high_risk_cases_and_applies_replies(
    make_config: MakeConfig, dovecot: ImapServer
) -> None:
    config = with_smtp(make_config({"cdc": ["cdc@example.org"]}, idle=False))
    now = dt.datetime.now(dt.UTC)
    dovecot.append(
        "cdc@example.org",
        notification(symptoms="Sốt, ho", date=now, to="cdc@example.org"),
    )
    dovecot.append(
        "cdc@example.org",
        notification(
            name="Trần Văn Bình",
            phone="0905333444",
            report_id="SKVN-2020-0090002",
            came_from=None,
            date=now,
            to="cdc@example.org",
        ),
    )
    first = poll_once(config)
    assert first.returncode == 0, first.stderr
    db = open_database(f"sqlite:///{config.parent / 'mailtracker.db'}")
    try:
        with db.session() as session:
            risks = {ref: risk for ref, risk in session.execute(select(Case.ref, Case.risk))}
            alerts = session.scalars(
                select(OutboxMessage).where(OutboxMessage.dedup_key.like("alert:%"))
            ).all()
            assert risks == {"QN-0001": "high", "QN-0002": "low"}
            assert [alert.dedup_key for alert in alerts] == ["alert:QN-0001:high_risk"]
            alert_raw = alerts[0].raw

        dovecot.append("cdc@example.org", reply(alert_raw, "QN-0001 theo dõi", sender=STAFF))
        second = poll_once(config)
        assert second.returncode == 0, second.stderr
        with db.session() as session:
            case = session.scalars(select(Case).where(Case.ref == "QN-0001")).one()
            assert case.status == "monitoring"
            [change] = session.scalars(
                select(CaseEvent).where(
                    CaseEvent.case_id == case.id, CaseEvent.to_status == "monitoring"
                )
            ).all()
            assert (change.actor, change.channel) == (STAFF, "email")
            acks = session.scalars(
                select(OutboxMessage).where(OutboxMessage.dedup_key.like("ack:%"))
            ).all()
            assert [ack.recipients for ack in acks] == [[STAFF]]
    finally:
        db.dispose()


def test_poll_once_leaves_a_mailbox_to_the_instance_that_holds_it(
    make_config: MakeConfig, dovecot: ImapServer
) -> None:
    config = make_config({"cdc": ["cdc@example.org"]}, idle=False)
    dovecot.append("cdc@example.org", notification(to="cdc@example.org"))
    db = open_database(f"sqlite:///{config.parent / 'mailtracker.db'}")
    try:
        [mailbox] = load_config(config).mailboxes
        other = MailboxLease(
            db, mailbox.name, "other-host:1:daemon", duration=dt.timedelta(minutes=5)
        )
        assert other.acquire()
        held = poll_once(config)
        assert held.returncode == 0, held.stderr
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Message)) == 0
        other.release()
        free = poll_once(config)
        assert free.returncode == 0, free.stderr
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Message)) == 1
    finally:
        db.dispose()
