"""Fault tests against real servers (Dovecot, aiosmtpd, SQLite): ``kill -9`` of the daemon at
random points, the IMAP server going away mid-fetch, the SMTP server refusing and
disappearing, the database locked or unreachable. Every test ends with the one invariant
checker of ``fault_support``; each is bounded in time.

``MAILTRACKER_FAULT_KILLS`` (default 6) sets how many times the daemon is killed,
``MAILTRACKER_FAULT_SEED`` the seed of the kill points.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import random
import time
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path

import pytest
from fault_support import (
    INBOX,
    Daemon,
    Expected,
    check_invariants,
    outgoing_id,
    wait_until,
    write_config,
)
from mailgen import notification, report_id
from reply_support import reply
from servers import ImapServer
from smtp_capture import Captured, SmtpCapture
from sqlalchemy import func, select

from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Message, OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("MAILTRACKER_FAULT_KILLS", "6"))
SEED = int(os.environ.get("MAILTRACKER_FAULT_SEED", "7"))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def count(db: Database, *where: object) -> int:
    with db.session(read_only=True) as session:
        statement = select(func.count()).select_from(Message)
        return session.scalar(statement.where(*where)) or 0  # type: ignore[arg-type]


def fresh(raw: bytes) -> bytes:
    """``raw`` dated now: only reports received within the alert window raise an alert."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    del message["Date"]
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    return message.as_bytes()


def alerts(messages: list[Captured]) -> list[Captured]:
    return [m for m in messages if "Cảnh báo" in m.subject]


def staff_reply(alert: Captured, sender: str) -> tuple[bytes, str]:
    """A Gmail reply to ``alert`` by ``sender``: two command lines for the case it names."""
    ref = alert.subject.split("]")[0].lstrip("[")
    raw = reply(
        alert.raw,
        f"home\n{ref} check 36,8",
        sender=sender,
        date=dt.datetime.now(dt.UTC),
    )
    reply_id = outgoing_id(raw)
    assert reply_id is not None
    return raw, reply_id


@pytest.mark.timeout(240)
def test_kill_9_at_random_points_loses_and_repeats_nothing(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture, daemons: list[Daemon]
) -> None:
    rng = random.Random(SEED)
    senders = [f"staff{number}@cdc.example.org" for number in range(4)]
    config, env = write_config(tmp_path, dovecot, smtp_server.port, staff=senders)
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    numbers = list(range(4 * (KILLS + 1)))
    chunks = [numbers[i :: KILLS + 1] for i in range(KILLS + 1)]
    delivered: list[str] = []
    replies: dict[str, int] = {}
    answered: set[str] = set()

    def deliver(chunk: list[int]) -> None:
        for number in chunk:
            dovecot.append(INBOX, fresh(notification(number, to=INBOX)))
            delivered.append(f"report-{number}@suckhoe.example.vn")
        for alert in alerts(smtp_server.messages):
            if alert.subject in answered:
                continue
            answered.add(alert.subject)
            raw, reply_id = staff_reply(alert, senders[len(replies) % len(senders)])
            dovecot.append(INBOX, raw)
            delivered.append(reply_id)
            replies[reply_id] = 2

    for round_number in range(KILLS):
        daemon = Daemon(config, env, tmp_path / f"run-{round_number}.log")
        daemons.append(daemon)
        deliver(chunks[round_number])
        time.sleep(rng.uniform(0.3, 2.5))
        assert daemon.alive(), daemon.text()[-3000:]
        daemon.kill()
    last = Daemon(config, env, tmp_path / "last.log")
    daemons.append(last)
    deliver(chunks[-1])
    db = open_database(url, upgrade=False)
    try:
        # Alerts of the last cases arrive now; answer them too, then let everything settle.
        assert wait_until(lambda: len(alerts(smtp_server.messages)) == len(numbers), 60), (
            len(alerts(smtp_server.messages)),
            last.text()[-3000:],
        )
        deliver([])
        assert wait_until(
            lambda: count(db) == len(delivered) and count(db, Message.processed_at.is_(None)) == 0,
            60,
        ), last.text()[-3000:]
        assert wait_until(lambda: _acks_queued(db) == len(replies), 30)
        time.sleep(2)  # the flusher's last pass
    finally:
        db.dispose()
    assert last.stop() == 0
    expected = Expected(
        delivered=delivered, report_ids=[report_id(n) for n in numbers], replies=replies
    )
    assert check_invariants(url, smtp_server.messages, expected) == []
    assert len(replies) >= len(numbers) - 4  # replies took part in (nearly) every round


def _acks_queued(db: Database) -> int:
    with db.session(read_only=True) as session:
        statement = select(func.count()).select_from(OutboxMessage)
        return session.scalar(statement.where(OutboxMessage.dedup_key.startswith("ack:"))) or 0
