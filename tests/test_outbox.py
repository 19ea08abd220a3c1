"""The outbox against a real in-process SMTP server (aiosmtpd) and a real SQLite database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from servers import free_port
from sqlalchemy import select

from mailtracker.config import Secret, SmtpSettings
from mailtracker.mail.compose import compose
from mailtracker.mail.outbox import BACKOFF_CAP, OutboxSender, enqueue, retry_delay
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import OutboxMessage

NOW = dt.datetime(2020, 2, 14, 0, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


class Recorder:
    """Accepts every message, or answers with the queued ``replies`` first."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.replies:
            return self.replies.pop(0)
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 OK"


class SmtpServer:
    def __init__(self, handler: Recorder, port: int, **options: Any) -> None:
        self.controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        self.handler = handler

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database("sqlite:///" + str(tmp_path / "mt.db"))
    yield database
    database.dispose()


def settings(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": None,
        "password": None,
        "sender": "Mailtracker QN <tracker@example.org>",
    }
    values.update(overrides)
    return SmtpSettings(**values)


def message(number: int) -> bytes:
    return compose(
        sender="Mailtracker QN <tracker@example.org>",
        to=["epi@example.org"],
        subject=f"[QN] Bản tin {number}",
        text="-- Trả lời phía trên dòng này / Reply above this line --\nxin chào\n",
        html=None,
        reply_to=None,
        message_id=f"<m{number}@example.org>",
        auto_submitted="auto-generated",
        date=NOW,
    )


def queue(db: Database, *numbers: int, recipients: tuple[str, ...] = ("epi@example.org",)) -> None:
    with db.session() as session:
        for number in numbers:
            assert enqueue(
                session,
                dedup_key=f"digest:cdc:{number}",
                recipients=recipients,
                raw=message(number),
                now=NOW,
            )


def rows(db: Database) -> list[OutboxMessage]:
    with db.session(read_only=True) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def sender(db: Database, port: int, **options: Any) -> OutboxSender:
    return OutboxSender(db, settings(port, **options), timeout=5, jitter=lambda: 0.0)


def test_enqueue_is_idempotent_on_the_dedup_key(db: Database) -> None:
    with db.session() as session:
        assert enqueue(
            session, dedup_key="digest:cdc:2020-02-14", recipients=["a@x.org"], raw=b"1", now=NOW
        )
        assert not enqueue(
            session, dedup_key="digest:cdc:2020-02-14", recipients=["a@x.org"], raw=b"2", now=NOW
        )
    with db.session() as session:
        assert not enqueue(
            session, dedup_key="digest:cdc:2020-02-14", recipients=["b@x.org"], raw=b"3", now=NOW
        )
        assert enqueue(
            session, dedup_key="digest:cdc:2020-02-15", recipients=["a@x.org"], raw=b"4", now=NOW
        )
    assert [(row.dedup_key, row.raw) for row in rows(db)] == [
        ("digest:cdc:2020-02-14", b"1"),
        ("digest:cdc:2020-02-15", b"4"),
    ]


def test_enqueue_without_recipients_is_refused(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError):
        enqueue(session, dedup_key="x", recipients=[], raw=b"", now=NOW)


def test_due_messages_are_delivered_once(db: Database) -> None:
    queue(db, 1, 2)
    port = free_port()
    with SmtpServer(Recorder(), port) as server:
        result = sender(db, port).flush(NOW)
        assert (result.sent, result.retrying, result.failed, result.error) == (2, 0, 0, None)
        again = sender(db, port).flush(NOW + dt.timedelta(days=1))
        assert again.sent == 0
    assert len(server.handler.received) == 2
    mail_from, recipients, raw = server.handler.received[0]
    assert mail_from == "tracker@example.org"
    assert recipients == ["epi@example.org"]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "[QN] Bản tin 1"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert all(row.sent_at == NOW and row.next_attempt_at is None for row in rows(db))


def test_messages_not_yet_due_wait(db: Database) -> None:
    with db.session() as session:
        enqueue(
            session, dedup_key="later", recipients=["a@x.org"], raw=message(1), now=NOW + MINUTE
        )
    port = free_port()
    with SmtpServer(Recorder(), port) as server:
        assert sender(db, port).flush(NOW).sent == 0
        assert sender(db, port).flush(NOW + MINUTE).sent == 1
    assert len(server.handler.received) == 1


def test_temporary_refusal_is_retried_with_backoff(db: Database) -> None:
    queue(db, 1)
    port = free_port()
    with SmtpServer(Recorder("451 4.3.0 try later"), port) as server:
        first = sender(db, port).flush(NOW)
        assert (first.sent, first.retrying, first.failed) == (0, 1, 0)
        [row] = rows(db)
        assert row.attempts == 1 and row.sent_at is None
        assert row.last_error is not None and "451" in row.last_error
        assert row.next_attempt_at == NOW + retry_delay(1, 0.0)
        assert sender(db, port).flush(NOW + 10 * dt.timedelta(seconds=1)).sent == 0  # not yet due
        second = sender(db, port).flush(NOW + retry_delay(1, 0.0))
        assert second.sent == 1
    assert len(server.handler.received) == 1
    [row] = rows(db)
    assert row.attempts == 2 and row.sent_at == NOW + retry_delay(1, 0.0)


def test_permanent_refusal_marks_the_message_failed(db: Database) -> None:
    queue(db, 1, 2)
    port = free_port()
    with SmtpServer(Recorder("550 5.7.1 rejected"), port) as server:
        result = sender(db, port).flush(NOW)
        assert (result.sent, result.failed) == (1, 1)
        assert sender(db, port).flush(NOW + dt.timedelta(days=2)).sent == 0
    failed, delivered = rows(db)
    assert failed.sent_at is None and failed.next_attempt_at is None
    assert failed.last_error is not None and failed.last_error.startswith("permanent failure")
    assert delivered.sent_at == NOW
    assert len(server.handler.received) == 1


def test_smtp_down_keeps_messages_queued_then_delivers_each_once(db: Database) -> None:
    queue(db, 1, 2)
    port = free_port()  # nothing listens here yet
    down = sender(db, port).flush(NOW)
    assert (down.sent, down.retrying, down.error is not None) == (0, 2, True)
    assert all(row.attempts == 1 and row.sent_at is None for row in rows(db))
    assert all(row.next_attempt_at == NOW + MINUTE * 0.5 for row in rows(db))
    still_down = sender(db, port).flush(NOW + MINUTE)
    assert still_down.retrying == 2
    assert all(row.attempts == 2 for row in rows(db))
    with SmtpServer(Recorder(), port) as server:
        later = NOW + dt.timedelta(hours=2)
        assert sender(db, port).flush(later).sent == 2
        assert sender(db, port).flush(later + dt.timedelta(hours=2)).sent == 0
    assert sorted(
        message_from_bytes(raw)["Message-ID"] for _, _, raw in server.handler.received
    ) == [
        "<m1@example.org>",
        "<m2@example.org>",
    ]


class Deferring(Recorder):
    """Defers (451) each address of ``busy`` once and refuses (550) those of ``unknown``, at
    RCPT: the server accepts the message for the others."""

    def __init__(self, busy: set[str], unknown: set[str]) -> None:
        super().__init__()
        self.busy = busy
        self.unknown = unknown

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.unknown:
            return "550 5.1.1 no such mailbox"
        if address in self.busy:
            self.busy.discard(address)
            return "451 4.2.1 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_recipients_deferred_by_the_server_are_retried_alone(db: Database) -> None:
    queue(db, 1, recipients=("a@example.org", "b@example.org", "c@example.org"))
    port = free_port()
    handler = Deferring(busy={"b@example.org"}, unknown={"c@example.org"})
    later = NOW + retry_delay(1, 0.0)
    with SmtpServer(handler, port):
        assert sender(db, port).flush(NOW).sent == 1
        sent, deferred = rows(db)
        assert sent.sent_at == NOW and sent.last_error is not None and "451" in sent.last_error
        assert deferred.recipients == ["b@example.org"] and deferred.sent_at is None
        assert (deferred.attempts, deferred.next_attempt_at) == (1, later)
        assert deferred.raw == sent.raw
        assert sender(db, port).flush(NOW + MINUTE / 6).sent == 0  # not yet due
        assert sender(db, port).flush(later).sent == 1
        assert sender(db, port).flush(later + dt.timedelta(days=1)).sent == 0
    assert [recipients for _, recipients, _ in handler.received] == [
        ["a@example.org"],
        ["b@example.org"],
    ]
    assert len(rows(db)) == 2 and all(row.sent_at is not None for row in rows(db))


def test_gives_up_after_max_attempts(db: Database) -> None:
    queue(db, 1)
    port = free_port()
    flusher = OutboxSender(db, settings(port), timeout=2, max_attempts=2, jitter=lambda: 0.0)
    assert flusher.flush(NOW).retrying == 1
    assert flusher.flush(NOW + dt.timedelta(hours=1)).failed == 1
    [row] = rows(db)
    assert row.next_attempt_at is None and row.sent_at is None
    assert row.last_error is not None and row.last_error.startswith("gave up after 2 attempt(s)")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_logs_in_with_the_configured_credentials(db: Database) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)

    queue(db, 1)
    port = free_port()
    options = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True}
    with SmtpServer(Recorder(), port, **options) as server:
        password = Secret(key="smtp.password", source="literal", value="s3cret")
        result = sender(db, port, username="tracker@example.org", password=password).flush(NOW)
        assert result.sent == 1
    assert logins == [(b"tracker@example.org", b"s3cret")]
    assert len(server.handler.received) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_password_keeps_the_message_queued(db: Database) -> None:
    queue(db, 1)
    port = free_port()
    options = {
        "authenticator": lambda *args: AuthResult(success=False, handled=False),
        "auth_require_tls": False,
        "auth_required": True,
    }
    with SmtpServer(Recorder(), port, **options) as server:
        password = Secret(key="smtp.password", source="literal", value="wrong")
        result = sender(db, port, username="tracker@example.org", password=password).flush(NOW)
    assert (result.sent, result.retrying) == (0, 1)
    assert result.error is not None and "535" in result.error
    [row] = rows(db)
    assert row.sent_at is None and row.next_attempt_at is not None
    assert server.handler.received == []


@pytest.mark.parametrize("attempts", [1, 2, 5, 7, 30])
def test_backoff_doubles_with_jitter_and_is_capped(attempts: int) -> None:
    ceiling = min(BACKOFF_CAP, MINUTE * 2 ** (attempts - 1))
    assert retry_delay(attempts, 0.0) == ceiling / 2
    assert ceiling / 2 < retry_delay(attempts, 0.7) < ceiling
    assert retry_delay(attempts, 0.999) <= BACKOFF_CAP
