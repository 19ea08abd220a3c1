"""The persistent outbox: every outgoing message is a row first, then sent with retries.

A row is due while ``sent_at`` is empty and ``next_attempt_at`` has passed. A flusher claims a
row (moving ``next_attempt_at`` a lease ahead, so no other flusher takes it), sends it, and
records ``sent_at`` right after the server accepted it; a sent row is never sent again. A
temporary failure (4xx, connection trouble) schedules a retry with exponential backoff and
jitter; a permanent one (5xx for every recipient), or too many attempts, gives up: the row
keeps ``last_error`` and an empty ``next_attempt_at``. When the server accepts a message for
some recipients and defers others (4xx), the row is sent and a new row, for the deferred
recipients alone, is retried like any other.

If the database fails in the middle of a flush, the sender remembers the rows it left
unsettled: a row the server accepted is recorded as sent, and a row it claimed but did not
send is handed back (only while its claim is still this sender's), at the start of the next
flush, so a database outage delays nothing by a whole claim lease and sends nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import smtplib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailtracker.config import ConfigError, SmtpSettings
from mailtracker.mail.smtp import Refused, SmtpTransport
from mailtracker.store.db import Database
from mailtracker.store.models import OutboxMessage

log = logging.getLogger(__name__)

Outcome = Literal["sent", "retrying", "failed", "skipped"]

BACKOFF_BASE = dt.timedelta(minutes=1)
BACKOFF_CAP = dt.timedelta(hours=1)
CLAIM_LEASE = dt.timedelta(minutes=15)
MAX_ATTEMPTS = 40
ERROR_LIMIT = 500


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush did; ``error`` names a connection problem that stopped it."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """A row this sender claimed until ``lease``; ``refused`` (the recipients the server
    refused) once the server accepted it."""

    lease: dt.datetime
    refused: Refused | None = None


class _Temporary(Exception):
    """A failure worth retrying; ``stop`` when the connection itself is unusable."""

    def __init__(self, message: str, *, stop: bool = False) -> None:
        super().__init__(message)
        self.stop = stop


class _Permanent(Exception):
    """A failure that retrying cannot fix."""


def enqueue(
    session: Session,
    *,
    dedup_key: str,
    recipients: Sequence[str],
    raw: bytes,
    now: dt.datetime,
    due: dt.datetime | None = None,
    attempts: int = 0,
) -> bool:
    """Queue a message (to be sent from ``due``, by default ``now``) unless one with
    ``dedup_key`` exists; False when it already did.

    Runs in a savepoint, so a concurrent insert of the same key leaves ``session`` usable.
    """
    if not recipients:
        raise ValueError("an outgoing message needs at least one recipient")
    exists = select(OutboxMessage.id).where(OutboxMessage.dedup_key == dedup_key)
    if session.scalar(exists) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                OutboxMessage(
                    dedup_key=dedup_key,
                    recipients=list(recipients),
                    raw=raw,
                    created_at=now,
                    attempts=attempts,
                    next_attempt_at=due or now,
                )
            )
    except IntegrityError:
        return False
    return True


def retry_delay(attempts: int, jitter: float) -> dt.timedelta:
    """The wait after ``attempts`` failed tries: doubling from a minute, at most an hour,
    scaled into its upper half by ``jitter`` in [0, 1)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (1 << max(0, min(attempts - 1, 20))))
    return ceiling * (0.5 + 0.5 * jitter)


def _short(error: BaseException | str) -> str:
    text = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:ERROR_LIMIT]


def _classify(error: Exception) -> _Temporary | _Permanent:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        detail = _short(f"recipients refused: {error.recipients}")
        if codes and all(code >= 500 for code in codes):
            return _Permanent(detail)
        return _Temporary(detail, stop=False)
    if isinstance(error, smtplib.SMTPResponseException) and not isinstance(
        error, smtplib.SMTPAuthenticationError
    ):
        detail = _short(f"{error.smtp_code} {error.smtp_error!r}")
        return _Permanent(detail) if error.smtp_code >= 500 else _Temporary(detail)
    # smtplib's errors are OSErrors too; only a lost connection or a network error stops a flush
    connection_lost = isinstance(error, smtplib.SMTPServerDisconnected) or (
        isinstance(error, OSError) and not isinstance(error, smtplib.SMTPException)
    )
    if connection_lost:
        return _Temporary(_short(error), stop=True)
    return _Temporary(_short(error), stop=isinstance(error, smtplib.SMTPAuthenticationError))


class OutboxSender:
    """Sends due outbox rows over SMTP; safe to run in several processes at once."""

    def __init__(
        self,
        db: Database,
        smtp: SmtpSettings,
        *,
        timeout: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        batch: int = 100,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.smtp = smtp
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.batch = batch
        self.jitter = jitter
        self._unsettled: dict[int, _Unsettled] = {}

    def due_ids(self, now: dt.datetime) -> list[int]:
        """Ids of the rows due at ``now``, oldest first."""
        query = (
            select(OutboxMessage.id)
            .where(OutboxMessage.sent_at.is_(None), OutboxMessage.next_attempt_at <= now)
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(self.batch)
        )
        with self.db.session(read_only=True) as session:
            return list(session.scalars(query))

    def flush(self, now: dt.datetime) -> FlushResult:
        """Send every due row over one SMTP session; never raises for SMTP trouble (database
        errors propagate, and what they left unsettled is settled by the next flush)."""
        self._settle(now)
        due = self.due_ids(now)
        if not due:
            return FlushResult()
        sent = retrying = failed = 0
        try:
            with SmtpTransport(self.smtp, timeout=self.timeout) as transport:
                for row_id in due:
                    outcome, stop = self._send_one(transport, row_id, now)
                    sent += outcome == "sent"
                    retrying += outcome == "retrying"
                    failed += outcome == "failed"
                    if stop:
                        return FlushResult(sent, retrying, failed, stop)
        except (smtplib.SMTPException, OSError, ConfigError) as error:
            problem = _short(error)
            log.warning("outbox: SMTP server unavailable: %s", problem)
            for row_id in due:
                claimed = self._claim(row_id, now)
                if claimed is not None:
                    state = self._record_failure(row_id, claimed, _Temporary(problem), now)
                    retrying += state == "retrying"
                    failed += state == "failed"
            return FlushResult(sent, retrying, failed, problem)
        return FlushResult(sent, retrying, failed)

    def _settle(self, now: dt.datetime) -> None:
        """Record the sends and hand back the claims an earlier flush's database error left."""
        if not self._unsettled:
            return
        with self.db.session() as session:
            for row_id, left in self._unsettled.items():
                if left.refused is not None:
                    self._record_sent(session, row_id, left.refused, now)
                    continue
                session.execute(  # only while the claim is still this sender's
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id == row_id,
                        OutboxMessage.sent_at.is_(None),
                        OutboxMessage.next_attempt_at == left.lease,
                    )
                    .values(next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
        for row_id, left in self._unsettled.items():
            state = "sent" if left.refused is not None else "claim handed back"
            log.info("outbox: message %d %s", row_id, state)
        self._unsettled.clear()

    def _claim(self, row_id: int, now: dt.datetime) -> int | None:
        """Take the row for this flush; its attempt count after claiming, None if taken.

        A claimed row stays in ``_unsettled`` until its outcome is recorded, so a database error
        at any later step leaves the next flush what it needs to settle it.
        """
        lease = now + CLAIM_LEASE
        self._unsettled[row_id] = _Unsettled(lease)
        with self.db.session() as session:
            result = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == row_id,
                    OutboxMessage.sent_at.is_(None),
                    OutboxMessage.next_attempt_at <= now,
                )
                .values(attempts=OutboxMessage.attempts + 1, next_attempt_at=lease)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                del self._unsettled[row_id]
                return None
            return session.scalar(select(OutboxMessage.attempts).where(OutboxMessage.id == row_id))

    def _send_one(
        self, transport: SmtpTransport, row_id: int, now: dt.datetime
    ) -> tuple[Outcome, str | None]:
        """Claim, send and record one row; the second item names a connection problem."""
        attempts = self._claim(row_id, now)
        if attempts is None:
            return "skipped", None
        with self.db.session(read_only=True) as session:
            row = session.get_one(OutboxMessage, row_id)
            recipients, raw = list(row.recipients), row.raw
        try:
            refused = transport.send(recipients, raw)
        except Exception as error:  # every SMTP failure is recorded on the row, none escapes
            problem = _classify(error)
            state = self._record_failure(row_id, attempts, problem, now)
            stop = isinstance(problem, _Temporary) and problem.stop
            return state, str(problem) if stop else None
        self._unsettled[row_id] = _Unsettled(self._unsettled[row_id].lease, refused)
        with self.db.session() as session:
            self._record_sent(session, row_id, refused, now)
        del self._unsettled[row_id]
        log.info("outbox: message %d sent", row_id)
        return "sent", None

    def _record_sent(
        self, session: Session, row_id: int, refused: Refused, now: dt.datetime
    ) -> None:
        """Mark the row sent (once); the recipients the server deferred get a row of their
        own, retried after the row's backoff."""
        row = session.get_one(OutboxMessage, row_id)
        if row.sent_at is not None:
            return
        row.sent_at = now
        row.next_attempt_at = None
        row.last_error = _short(f"refused recipients: {refused}") if refused else None
        deferred = sorted(address for address, (code, _) in refused.items() if code < 500)
        if deferred:
            enqueue(
                session,
                dedup_key=f"deferred:{row_id}",
                recipients=deferred,
                raw=row.raw,
                now=now,
                due=now + retry_delay(row.attempts, self.jitter()),
                attempts=row.attempts,
            )
            log.warning("outbox: message %d: %d recipient(s) deferred", row_id, len(deferred))

    def _record_failure(
        self, row_id: int, attempts: int, problem: _Temporary | _Permanent, now: dt.datetime
    ) -> Outcome:
        give_up = isinstance(problem, _Permanent) or attempts >= self.max_attempts
        with self.db.session() as session:
            row = session.get_one(OutboxMessage, row_id)
            if give_up:
                reason = "permanent failure" if isinstance(problem, _Permanent) else "gave up"
                row.last_error = _short(f"{reason} after {attempts} attempt(s): {problem}")
                row.next_attempt_at = None
            else:
                row.last_error = _short(str(problem))
                row.next_attempt_at = now + retry_delay(attempts, self.jitter())
        del self._unsettled[row_id]
        log.warning(
            "outbox: message %d %s: %s", row_id, "failed" if give_up else "will be retried", problem
        )
        return "failed" if give_up else "retrying"
