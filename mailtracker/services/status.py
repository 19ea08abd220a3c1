"""Operational health: mailbox positions and polls, the outbox queue, quarantined mail, next
digests (``status``), and login checks of every configured server (``check-config``).

Nothing here reads a message's content: the status holds mailbox names, counts, times and the
error texts the poller stored (which never quote a message).
"""

from __future__ import annotations

import datetime as dt
import imaplib
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailtracker.config import Config, ConfigError, MailboxSettings, SmtpSettings, UnitSettings
from mailtracker.mail import imap
from mailtracker.mail.smtp import SmtpTransport
from mailtracker.store.models import DigestSent, MailboxState, Message, OutboxMessage

STALE_MARGIN = dt.timedelta(minutes=5)
STALE_POLLS = 3
LOGIN_TIMEOUT = 20.0


def stale_after(mailbox: MailboxSettings) -> dt.timedelta:
    """How long a mailbox may go without a successful poll: 3 × poll_every + 5 minutes."""
    return STALE_POLLS * mailbox.poll_every + STALE_MARGIN


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """One configured mailbox: its polling position and health."""

    name: str
    unit_id: str
    uidvalidity: int | None
    last_uid: int
    last_success_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    problem: str | None
    polled_by: str | None = None
    """The daemon instance holding the mailbox's lease (None when no lease is current)."""
    lease_expires_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Unsent outgoing mail: ``due`` now, ``retrying`` after a failure, ``failed`` (given up)."""

    queued: int
    due: int
    retrying: int
    failed: int
    oldest_due_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class DigestStatus:
    """A unit's digest: the last date recorded as sent and when the next one is due
    (``late`` when today's ``digest_at`` has passed without one)."""

    unit_id: str
    last_date: dt.date | None
    next_at: dt.datetime
    late: bool
    recipients: int


@dataclass(frozen=True, slots=True)
class Status:
    """Everything ``mailtracker status`` shows; ``problems`` empty means healthy."""

    now: dt.datetime
    mailboxes: tuple[MailboxStatus, ...]
    outbox: OutboxStatus
    quarantined: int
    digests: tuple[DigestStatus, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


def mailbox_problem(
    mailbox: MailboxSettings, state: MailboxState | None, now: dt.datetime
) -> str | None:
    """Why a mailbox is stale, or None: never polled successfully, no success for longer than
    :func:`stale_after`, or an error newer than the last success."""
    success = state.last_success_at if state is not None else None
    error_at = state.last_error_at if state is not None else None
    if error_at is not None and (success is None or error_at > success):
        return f"mailbox {mailbox.name}: last poll failed: {state.last_error if state else ''}"
    if success is None:
        return f"mailbox {mailbox.name}: never polled successfully"
    if now - success > stale_after(mailbox):
        minutes = int((now - success).total_seconds() // 60)
        return f"mailbox {mailbox.name}: no successful poll for {minutes} min"
    return None


def next_digest(
    unit: UnitSettings, last_date: dt.date | None, now: dt.datetime, tz: ZoneInfo
) -> tuple[dt.datetime, bool]:
    """When the unit's next digest is due (aware, in ``tz``) and whether it is late: today's
    ``digest_at`` when today's digest is not recorded yet, else tomorrow's."""
    local = now.astimezone(tz)
    today = local.date()
    due_today = dt.datetime.combine(today, unit.digest_at, tzinfo=tz)
    if last_date is not None and last_date >= today:
        return dt.datetime.combine(today + dt.timedelta(days=1), unit.digest_at, tzinfo=tz), False
    return due_today, local >= due_today


def outbox_status(session: Session, now: dt.datetime) -> OutboxStatus:
    unsent = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
    rows = session.scalars(unsent).all()
    waiting = [row for row in rows if row.next_attempt_at is not None]
    due = [row for row in waiting if row.next_attempt_at is not None and row.next_attempt_at <= now]
    return OutboxStatus(
        queued=len(waiting),
        due=len(due),
        retrying=sum(1 for row in waiting if row.attempts > 0),
        failed=len(rows) - len(waiting),
        oldest_due_at=min((row.created_at for row in due), default=None),
    )


def collect_status(session: Session, config: Config, now: dt.datetime) -> Status:
    """The health of the configured mailboxes, the outbox and the digests at ``now``."""
    tz = config.tracker.timezone
    states = {state.mailbox: state for state in session.scalars(select(MailboxState))}
    mailboxes = []
    for settings in config.mailboxes:
        state = states.get(settings.name)
        expires = state.lease_expires_at if state else None
        holder = state.lease_owner if state and expires and expires > now else None
        mailboxes.append(
            MailboxStatus(
                name=settings.name,
                unit_id=settings.unit_id,
                uidvalidity=state.uidvalidity if state else None,
                last_uid=state.last_uid if state else 0,
                last_success_at=state.last_success_at if state else None,
                last_error=state.last_error if state else None,
                last_error_at=state.last_error_at if state else None,
                problem=mailbox_problem(settings, state, now),
                polled_by=holder,
                lease_expires_at=expires if holder else None,
            )
        )
    outbox = outbox_status(session, now)
    quarantined = session.scalar(
        select(func.count())
        .select_from(Message)
        .where(Message.quarantined.is_(True), Message.handled_at.is_(None))
    )
    last_dates = dict(
        session.execute(
            select(DigestSent.unit_id, func.max(DigestSent.date)).group_by(DigestSent.unit_id)
        ).all()
    )
    digests = []
    for unit in config.units:
        last = last_dates.get(unit.id)
        next_at, late = next_digest(unit, last, now, tz)
        digests.append(DigestStatus(unit.id, last, next_at, late, len(unit.digest_to)))
    problems = [box.problem for box in mailboxes if box.problem is not None]
    if outbox.failed:
        problems.append(f"outbox: {outbox.failed} message(s) failed permanently")
    return Status(
        now=now,
        mailboxes=tuple(mailboxes),
        outbox=outbox,
        quarantined=int(quarantined or 0),
        digests=tuple(digests),
        problems=tuple(problems),
    )


def _iso(value: dt.datetime | None, tz: ZoneInfo) -> str | None:
    return value.astimezone(tz).isoformat() if value is not None else None


def status_json(status: Status, tz: ZoneInfo) -> dict[str, Any]:
    """``status --json``: timestamps ISO 8601 with offset in ``tz``, dates ISO."""
    return {
        "healthy": status.healthy,
        "now": _iso(status.now, tz),
        "problems": list(status.problems),
        "mailboxes": [
            {
                "name": box.name,
                "unit": box.unit_id,
                "uidvalidity": box.uidvalidity,
                "last_uid": box.last_uid,
                "last_success_at": _iso(box.last_success_at, tz),
                "last_error": box.last_error,
                "last_error_at": _iso(box.last_error_at, tz),
                "stale": box.problem is not None,
                "polled_by": box.polled_by,
                "lease_expires_at": _iso(box.lease_expires_at, tz),
            }
            for box in status.mailboxes
        ],
        "outbox": {
            "queued": status.outbox.queued,
            "due": status.outbox.due,
            "retrying": status.outbox.retrying,
            "failed": status.outbox.failed,
            "oldest_due_at": _iso(status.outbox.oldest_due_at, tz),
        },
        "quarantined": status.quarantined,
        "digests": [
            {
                "unit": digest.unit_id,
                "last_date": digest.last_date.isoformat() if digest.last_date else None,
                "next_at": _iso(digest.next_at, tz),
                "late": digest.late,
                "recipients": digest.recipients,
            }
            for digest in status.digests
        ],
    }


# -- logins ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The outcome of one login attempt: ``server`` names it, ``message`` says what happened."""

    server: str
    ok: bool
    message: str


def explain(error: BaseException, host: str, port: int) -> str:
    """What a connection or login error means, in words an operator can act on."""
    where = f"{host}:{port}"
    if isinstance(error, ConfigError):
        return f"secret: {' '.join(str(error).split())}"
    if isinstance(error, socket.gaierror):
        return f"DNS: cannot resolve {host!r} ({error.strerror or error}); check the host name"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}: no server on that port (check host and port)"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"timed out connecting to {where}: a firewall, or the wrong host or port"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {host} is not trusted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({error.reason or error}): does `security` "
            "match the port (ssl: 993/465, starttls: 143/587)?"
        )
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return (
            f"credentials refused by {where} ({error.smtp_code}): for Gmail use an app "
            "password, not the account password"
        )
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return f"{where} does not offer this: {error} (check `security` and `username`)"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return f"{where} closed the connection: {error} (TLS expected on this port?)"
    if isinstance(error, smtplib.SMTPException | imaplib.IMAP4.error):
        text = " ".join(str(error).split())
        if "login" in text.lower() or "auth" in text.lower() or "credentials" in text.lower():
            return (
                f"credentials refused by {where}: {text} (Gmail: an app password or "
                'auth = "xoauth2")'
            )
        return f"{where}: {text}"
    if isinstance(error, OSError):
        return f"cannot connect to {where}: {error.strerror or error}"
    return f"{where}: {type(error).__name__}"


def check_mailbox(mailbox: MailboxSettings, *, timeout: float = LOGIN_TIMEOUT) -> LoginResult:
    """Log in to one mailbox and check its folder exists; nothing is read or changed."""
    server = f"IMAP {mailbox.name}"
    try:
        client = imap.connect(mailbox, timeout=timeout)
    except Exception as error:
        return LoginResult(server, False, explain(error, mailbox.host, mailbox.port))
    try:
        if not client.folder_exists(mailbox.folder):
            return LoginResult(
                server, False, f"logged in, but folder {mailbox.folder!r} does not exist"
            )
        imap.select_readonly(client, mailbox.folder)
    except Exception as error:
        return LoginResult(server, False, explain(error, mailbox.host, mailbox.port))
    finally:
        imap.close(client)
    return LoginResult(server, True, f"logged in as {mailbox.username}; folder {mailbox.folder} ok")


def check_smtp(settings: SmtpSettings, *, timeout: float = LOGIN_TIMEOUT) -> LoginResult:
    """Connect to the SMTP server (TLS as configured) and log in when a username is set."""
    server = f"SMTP {settings.host}:{settings.port}"
    try:
        with SmtpTransport(settings, timeout=timeout):
            pass
    except Exception as error:
        return LoginResult(server, False, explain(error, settings.host, settings.port))
    who = f"logged in as {settings.username}" if settings.username else "connected (no login)"
    return LoginResult(server, True, f"{who} with security {settings.security}")


def login_results(
    config: Config,
    *,
    imap_check: Callable[[MailboxSettings], LoginResult] = check_mailbox,
    smtp_check: Callable[[SmtpSettings], LoginResult] = check_smtp,
) -> list[LoginResult]:
    """Try every mailbox login and the SMTP login, in configuration order."""
    results = [imap_check(mailbox) for mailbox in config.mailboxes]
    if config.smtp is not None:
        results.append(smtp_check(config.smtp))
    return results
