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
import logging
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_support import RunningDaemon
from fault_support import (
    INBOX,
    Expected,
    check_invariants,
    outgoing_id,
    wait_until,
    write_config,
)
from mailgen import notification, person_name, phone, report_id
from reply_support import make_config as make_reply_config
from reply_support import reply
from servers import ImapServer, PostgresCluster, ServerUnavailable
from smtp_capture import Captured, SmtpCapture
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from store_support import notification as low_risk_notification

from mailtracker.config import SmtpSettings, load_config
from mailtracker.daemon import Daemon as DaemonService
from mailtracker.mail.outbox import OutboxSender, enqueue
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Message, OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("MAILTRACKER_FAULT_KILLS", "6"))
SEED = int(os.environ.get("MAILTRACKER_FAULT_SEED", "7"))


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
    tmp_path: Path,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    daemons: list[RunningDaemon],
    database_url: str,
) -> None:
    """On SQLite and on PostgreSQL: each round starts the daemon, delivers notifications and
    replies to the alerts so far at a random moment, and kills it at another."""
    rng = random.Random(SEED)
    per_round = 6
    numbers = list(range(per_round * (KILLS + 1)))
    # one reply per report: enough senders to stay under the acknowledgement rate limit
    senders = [f"staff{number}@cdc.example.org" for number in range(len(numbers) // 8 + 1)]
    url = database_url
    config, env = write_config(tmp_path, dovecot, smtp_server.port, staff=senders, database=url)
    open_database(url).dispose()  # the schema, so that the checks below can read it
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
        daemon = RunningDaemon(
            config, env, tmp_path / f"run-{round_number}.log", started_within=None
        )
        daemons.append(daemon)
        time.sleep(rng.uniform(0.0, 1.5))
        deliver(chunks[round_number])
        time.sleep(rng.uniform(0.0, 1.2))
        assert daemon.alive(), daemon.text()[-3000:]
        daemon.kill()
    last = RunningDaemon(config, env, tmp_path / "last.log", started_within=None)
    daemons.append(last)
    deliver(chunks[-1])
    db = open_database(url, upgrade=False)
    try:
        # Alerts of the last cases arrive now; answer them too, then let everything settle.
        # An alert a killed daemon had claimed waits for its claim to lapse (minutes): queued,
        # neither lost nor sent twice, and left unanswered here.
        assert wait_until(lambda: _alerts_settled(db, len(numbers), smtp_server), 60), (
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
    last.stop()
    expected = Expected(
        delivered=delivered, report_ids=[report_id(n) for n in numbers], replies=replies
    )
    assert check_invariants(url, smtp_server.messages, expected) == []
    assert len(numbers) - KILLS <= len(replies) <= len(numbers)


def _alerts_settled(db: Database, expected: int, smtp: SmtpCapture) -> bool:
    """Every alert queued, and each either received by the server or claimed by a killed
    daemon (its next attempt at the end of the claim, minutes away)."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    with db.session(read_only=True) as session:
        rows = list(
            session.scalars(
                select(OutboxMessage).where(OutboxMessage.dedup_key.startswith("alert:"))
            )
        )
    received = {outgoing_id(m.raw) for m in alerts(smtp.messages)}
    return len(rows) == expected and all(
        outgoing_id(row.raw) in received
        or (row.sent_at is None and row.next_attempt_at is not None and row.next_attempt_at > soon)
        for row in rows
    )


def _acks_queued(db: Database) -> int:
    with db.session(read_only=True) as session:
        statement = select(func.count()).select_from(OutboxMessage)
        return session.scalar(statement.where(OutboxMessage.dedup_key.startswith("ack:"))) or 0


# -- the IMAP server going away mid-fetch ------------------------------------------------------


@pytest.mark.timeout(180)
def test_imap_server_stopped_and_restarted_mid_fetch(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture, daemons: list[RunningDaemon]
) -> None:
    if dovecot.name != "dovecot":
        pytest.skip("pymap keeps its mail in memory: a restart empties it")
    total = 1200  # the daemon fetches 500 a batch: the outage comes during a later one
    config, env = write_config(tmp_path, dovecot, smtp_server.port)
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    mail = [
        low_risk_notification(
            name=person_name(n), phone=phone(n), report_id=report_id(n), symptoms="Không"
        )
        for n in range(total)
    ]
    dovecot.deliver_maildir(INBOX, mail)
    daemon = RunningDaemon(config, env, tmp_path / "run.log", started_within=None)
    daemons.append(daemon)
    assert wait_until(lambda: (tmp_path / "tracker.db").exists(), 30)
    db = open_database(url)
    try:
        deadline = time.monotonic() + 60
        while count(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        dovecot.stop()  # the next batch's FETCH is under way
        at_outage = count(db)
        assert 0 < at_outage < total, at_outage
        assert wait_until(lambda: "reconnecting in" in daemon.text(), 20), daemon.text()[-2000:]
        time.sleep(2)  # a few failed reconnections
        assert daemon.alive()
        dovecot.start()
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == total, 90), (
            count(db),
            daemon.text()[-2000:],
        )
        late = fresh(notification(total, to=INBOX))
        dovecot.append(INBOX, late)
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == total + 1, 30)
        assert wait_until(lambda: len(alerts(smtp_server.messages)) == 1, 30)
        time.sleep(1)
    finally:
        db.dispose()
    daemon.stop()
    delivered = [outgoing_id(raw) or "" for raw in [*mail, late]]
    expected = Expected(
        delivered=delivered, report_ids=[report_id(n) for n in range(total + 1)], replies={}
    )
    assert check_invariants(url, smtp_server.messages, expected) == []


# -- the SMTP server refusing and disappearing -------------------------------------------------


class RefusingSmtp(SmtpCapture):
    """The capture server answering ``answer`` to the DATA of messages containing ``only``
    (every message when ``only`` is empty) instead of accepting them."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: str | None = None
        self.only = b""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answer is not None and self.only in bytes(envelope.content):
            return self.answer
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def refusing_smtp() -> Iterator[RefusingSmtp]:
    server = RefusingSmtp()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_smtp_refusing_4xx_5xx_and_disappearing(
    tmp_path: Path,
    dovecot: ImapServer,
    refusing_smtp: RefusingSmtp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_path, env = write_config(tmp_path, dovecot, refusing_smtp.port)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(config_path)
    url = str(config.tracker.database)
    db = open_database(url)
    now = [dt.datetime.now(dt.UTC)]
    daemon = DaemonService(config, db, clock=lambda: now[0], reply_handler=ReplyService(config))
    try:
        first = [fresh(notification(n, to=INBOX)) for n in range(3)]
        daemon.ingestor.import_messages(
            "cdc", [(str(n), r) for n, r in enumerate(first)], now=now[0]
        )
        daemon.ingestor.process_pending(now=now[0])
        assert daemon.catch_up() == ["cdc"]

        refusing_smtp.answer = "451 4.3.0 Try again later"
        daemon.flush_outbox()
        assert refusing_smtp.messages == []
        rows = outbox_rows(db)
        assert len(rows) == 4
        assert all(
            r.sent_at is None and r.next_attempt_at and "451" in (r.last_error or "") for r in rows
        )
        assert check_invariants(url, refusing_smtp.messages) == []

        # The digest is refused for good; the alerts go through once.
        refusing_smtp.answer, refusing_smtp.only = "554 5.7.1 Refused", b"Message-ID: <t.d."
        now[0] += dt.timedelta(hours=2)
        daemon.flush_outbox()
        assert len(alerts(refusing_smtp.messages)) == 3
        digest = next(r for r in outbox_rows(db) if r.dedup_key.startswith("digest:"))
        assert digest.sent_at is None and digest.next_attempt_at is None
        assert "permanent failure" in (digest.last_error or "") and "554" in (
            digest.last_error or ""
        )

        # The server disappears: the new alert waits, and goes once the server is back.
        refusing_smtp.answer = None
        later = fresh(notification(3, to=INBOX))
        daemon.ingestor.import_messages("cdc", [("3", later)], now=now[0])
        daemon.ingestor.process_pending(now=now[0])
        refusing_smtp.stop()
        daemon.flush_outbox()
        waiting = [r for r in outbox_rows(db) if r.sent_at is None and r.next_attempt_at]
        assert len(waiting) == 1 and waiting[0].last_error
        refusing_smtp.start()
        now[0] += dt.timedelta(hours=2)
        daemon.flush_outbox()
        daemon.flush_outbox()
        assert len(alerts(refusing_smtp.messages)) == 4
    finally:
        db.dispose()
    expected = Expected(
        delivered=[outgoing_id(raw) or "" for raw in [*first, later]],
        report_ids=[report_id(n) for n in range(4)],
    )
    assert check_invariants(url, refusing_smtp.messages, expected, allow_failed_sends=True) == []
    assert check_invariants(url, refusing_smtp.messages, expected) == [
        f"digest:cdc:{now[0].date().isoformat()} given up: {digest.last_error}"
    ]


def outbox_rows(db: Database) -> list[OutboxMessage]:
    with db.session(read_only=True) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# -- the database locked, or unreachable for a while ------------------------------------------


@pytest.mark.timeout(120)
def test_sqlite_write_lock_held_by_another_process_for_seconds(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture, daemons: list[RunningDaemon]
) -> None:
    config, env = write_config(tmp_path, dovecot, smtp_server.port)
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    daemon = RunningDaemon(config, env, tmp_path / "run.log", started_within=None)
    daemons.append(daemon)
    assert wait_until(lambda: "connected; waiting" in daemon.text(), 30), daemon.text()
    mail = [fresh(notification(n, to=INBOX)) for n in range(5)]
    db = open_database(url, upgrade=False)
    locker = sqlite3.connect(tmp_path / "tracker.db", isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another program holding the write lock
        for raw in mail:
            dovecot.append(INBOX, raw)
        time.sleep(5)
        assert count(db) == 0  # nothing written meanwhile, readers still served
        assert daemon.alive()
        locker.execute("COMMIT")
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == 5, 45)
        assert wait_until(lambda: len(alerts(smtp_server.messages)) == 5, 30)
    finally:
        locker.close()
        db.dispose()
    daemon.stop()
    expected = Expected(
        delivered=[outgoing_id(raw) or "" for raw in mail],
        report_ids=[report_id(n) for n in range(5)],
    )
    assert check_invariants(url, smtp_server.messages, expected) == []


@pytest.mark.timeout(90)
def test_database_unreachable_for_longer_than_the_busy_timeout(
    tmp_path: Path,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every write fails for a while (the lock outlasts a short busy timeout): the pollers
    and jobs fail, log, back off, and catch up once the database answers again."""
    monkeypatch.setattr("mailtracker.store.db.SQLITE_BUSY_TIMEOUT_MS", 200)
    config_path, env = write_config(tmp_path, dovecot, smtp_server.port)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(config_path)
    url = str(config.tracker.database)
    db = open_database(url)
    caplog.set_level(logging.INFO, logger="mailtracker")
    daemon = DaemonService(
        config, db, reply_handler=ReplyService(config), flush_every=dt.timedelta(seconds=1)
    )
    mail = [fresh(notification(n, to=INBOX)) for n in range(5)]
    locker = sqlite3.connect(tmp_path / "tracker.db", isolation_level=None, timeout=10)
    try:
        daemon.start()
        assert wait_until(lambda: "connected; waiting" in caplog.text, 30)
        locker.execute("BEGIN EXCLUSIVE")
        for raw in mail:
            dovecot.append(INBOX, raw)
        assert wait_until(lambda: "reconnecting in" in caplog.text, 20), caplog.text[-2000:]
        time.sleep(2)
        locker.execute("COMMIT")
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == 5, 45)
        assert wait_until(lambda: len(alerts(smtp_server.messages)) == 5, 30)
    finally:
        locker.close()
        daemon.stop()
        db.dispose()
    failures = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert failures and all("OperationalError" in r.getMessage() for r in failures)
    expected = Expected(
        delivered=[outgoing_id(raw) or "" for raw in mail],
        report_ids=[report_id(n) for n in range(5)],
    )
    assert check_invariants(url, smtp_server.messages, expected) == []


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own, which it may crash (the session's stays up);
    commits are synchronous, as in production, so a crash loses no committed transaction."""
    try:
        with PostgresCluster.running(durable=True) as cluster:
            yield cluster
    except ServerUnavailable as error:
        pytest.fail(f"PostgreSQL test cluster unavailable: {error}", pytrace=False)


@pytest.mark.postgresql
@pytest.mark.timeout(150)
def test_postgresql_down_and_back_while_mail_arrives(
    tmp_path: Path,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    private_postgres: PostgresCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The PostgreSQL server stops (a crash: ``-m immediate``) while mail arrives and starts
    again: the daemon logs, retries on fresh connections and catches up; nothing lost or
    repeated."""
    url = private_postgres.url(private_postgres.create_database())
    config_path, env = write_config(tmp_path, dovecot, smtp_server.port, database=url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(config_path)
    db = open_database(url)
    caplog.set_level(logging.INFO, logger="mailtracker")
    daemon = DaemonService(
        config, db, reply_handler=ReplyService(config), flush_every=dt.timedelta(seconds=1)
    )
    first = [fresh(notification(n, to=INBOX)) for n in range(3)]
    during = [fresh(notification(n, to=INBOX)) for n in range(3, 8)]
    try:
        daemon.start()
        for raw in first:
            dovecot.append(INBOX, raw)
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == 3, 30)
        private_postgres.stop()
        for raw in during:
            dovecot.append(INBOX, raw)
        assert wait_until(lambda: "reconnecting in" in caplog.text, 30), caplog.text[-2000:]
        time.sleep(2)
        private_postgres.start()
        assert wait_until(lambda: count(db, Message.processed_at.is_not(None)) == 8, 60)
        assert wait_until(lambda: len(alerts(smtp_server.messages)) == 8, 30)
    finally:
        daemon.stop()
        db.dispose()
    expected = Expected(
        delivered=[outgoing_id(raw) or "" for raw in first + during],
        report_ids=[report_id(n) for n in range(8)],
    )
    assert check_invariants(url, smtp_server.messages, expected) == []


class CrashingSmtp(RefusingSmtp):
    """Stops ``cluster`` (a crash) while receiving a message containing ``crash_on``, then
    answers it as ``RefusingSmtp`` would: the sender's next database step fails."""

    def __init__(self, cluster: PostgresCluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.crash_on = b""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.crash_on and self.crash_on in bytes(envelope.content):
            self.crash_on = b""
            self.cluster.stop()
        return await super().handle_DATA(server, session, envelope)


def received_ids(smtp: SmtpCapture) -> list[str]:
    return sorted(outgoing_id(m.raw) or "" for m in smtp.messages)


@pytest.mark.postgresql
@pytest.mark.timeout(120)
def test_outbox_settles_what_a_database_crash_left_in_the_middle_of_a_flush(
    private_postgres: PostgresCluster,
) -> None:
    """The database crashes while a message is at the SMTP server. Once it is back, the next
    flush records an accepted message as sent (never sending it again) and hands back a refused
    one's claim at once (not a claim lease later)."""
    db = open_database(private_postgres.url(private_postgres.create_database()))
    smtp = CrashingSmtp(private_postgres)
    smtp.start()
    now = dt.datetime.now(dt.UTC)
    with db.session() as session:
        for n in range(1, 4):
            raw = f"Message-ID: <m{n}@example.org>\r\nSubject: m{n}\r\n\r\nbody {n}\r\n"
            enqueue(
                session, dedup_key=f"m{n}", recipients=["a@example.org"], raw=raw.encode(), now=now
            )
    settings = SmtpSettings(
        host=smtp.host,
        port=smtp.port,
        security="none",
        username=None,
        password=None,
        sender="tracker@example.org",
    )
    sender = OutboxSender(db, settings, timeout=30, jitter=lambda: 0.0)
    try:
        smtp.crash_on = b"body 1"  # accepted, then the database is gone
        with pytest.raises(OperationalError):
            sender.flush(now)
        private_postgres.start()
        assert sender.flush(now).sent == 2
        assert all(row.sent_at is not None for row in outbox_rows(db))
        assert received_ids(smtp) == ["m1@example.org", "m2@example.org", "m3@example.org"]

        with db.session() as session:
            raw = b"Message-ID: <m4@example.org>\r\nSubject: m4\r\n\r\nbody 4\r\n"
            enqueue(session, dedup_key="m4", recipients=["a@example.org"], raw=raw, now=now)
        smtp.answer, smtp.only = "451 4.3.0 try later", b"body 4"
        smtp.crash_on = b"body 4"  # refused, then the database is gone
        with pytest.raises(OperationalError):
            sender.flush(now)
        private_postgres.start()
        smtp.answer = None
        assert sender.flush(now).sent == 1
        assert sender.flush(now + dt.timedelta(hours=1)).sent == 0
    finally:
        smtp.stop()
        db.dispose()
    assert received_ids(smtp) == [f"m{n}@example.org" for n in range(1, 5)]
    rows = outbox_rows(db)
    assert all(row.sent_at is not None and row.next_attempt_at is None for row in rows)
    assert [row.attempts for row in rows] == [1, 1, 1, 2]


def test_the_checker_reports_each_violation_it_knows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    db = open_database(url)
    ingestor = Ingestor(db, make_reply_config(url))
    now = dt.datetime.now(dt.UTC)
    raw = notification(1)
    ingestor.import_messages("cdc", [("1", raw)], now=now)
    sent = b"Message-ID: <sent-twice@example.org>\r\nSubject: x\r\n\r\nbody\r\n"
    with db.session() as session:
        enqueue(
            session, dedup_key="alert:QN-0001:x", recipients=["a@example.org"], raw=sent, now=now
        )
        enqueue(session, dedup_key="ack:99", recipients=["a@example.org"], raw=b"\r\n", now=now)
        for row in session.scalars(select(OutboxMessage)):
            row.next_attempt_at = None
            row.sent_at = now if row.dedup_key.startswith("alert") else None
    db.dispose()
    twice = [Captured("t@example.org", ("a@example.org",), sent)] * 2
    twice.append(Captured("t@example.org", ("b@example.org",), sent))  # deferred, then sent: fine
    expected = Expected(delivered=["report-1@suckhoe.example.vn", "lost@example.org"],
                        report_ids=[report_id(1)])  # fmt: skip
    violations = check_invariants(url, twice, expected)
    assert violations == [
        "delivered message 'lost@example.org' stored 0x",
        "message 1 never processed",
        f"report {report_id(1)!r} gave 0 case(s)",
        "alert:QN-0001:x sent 2 times to a@example.org",
        "ack:99 given up: None",
        "ack:99 given up without an error recorded",
    ]
    assert check_invariants(url, [], Expected(), settled=False) == [
        "alert:QN-0001:x marked sent but never reached the server",
        "ack:99 given up: None",
        "ack:99 given up without an error recorded",
    ]
