"""Ingestion: raw messages into the database, then stored messages into cases.

Storing and processing are separate steps. ``store_batch`` commits the raw messages and the
mailbox position in one transaction, so a message is never lost and never fetched twice;
``process_pending`` then parses each stored message in a transaction of its own that also
marks it processed, so a crash at any point neither loses nor duplicates anything.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session

from mailtracker.config import Config, MailboxSettings
from mailtracker.domain.matching import (
    PersonKey,
    merge_updates,
    name_key,
    person_key,
    same_person,
)
from mailtracker.domain.reports import Report
from mailtracker.domain.workflow import new_case
from mailtracker.parsing.message import ParsedMessage, parse_message
from mailtracker.store.db import Database
from mailtracker.store.models import Case, CaseEvent, CaseSource, CaseUnit, MailboxState, Message
from mailtracker.store.queries import (
    REPORT_FIELDS,
    case_key,
    case_report,
    format_ref,
    set_report_fields,
    store_state,
)

log = logging.getLogger(__name__)

IMPORT_UIDVALIDITY = 0
IMPORT_CHUNK = 100
SYSTEM = "system"
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
_MAX_MESSAGE_ID = 998


class ReplyHandler(Protocol):
    """Handles a stored message of kind ``reply`` inside its processing transaction."""

    def __call__(
        self, session: Session, message: Message, parsed: ParsedMessage, now: dt.datetime
    ) -> None: ...


class CaseHandler(Protocol):
    """Called inside the processing transaction for each case a message opened (``created``)
    or joined, e.g. to queue an immediate alert in the outbox."""

    def __call__(
        self, session: Session, case: Case, message: Message, created: bool, now: dt.datetime
    ) -> None: ...


@dataclass
class ProcessResult:
    """What one ``process_pending`` pass did (case references, counts; no personal data)."""

    processed: int = 0
    created: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    replies: int = 0
    ignored: int = 0
    quarantined: int = 0
    failed: int = 0

    def add(self, other: ProcessResult) -> None:
        self.processed += other.processed
        self.created += other.created
        self.merged += other.merged
        self.replies += other.replies
        self.ignored += other.ignored
        self.quarantined += other.quarantined
        self.failed += other.failed


def content_hash(raw: bytes) -> str:
    """SHA-256 of the message with line endings normalised (IMAP CRLF = a file's LF)."""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID without angle brackets, read from the header alone; None when absent."""
    try:
        headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            raw, headersonly=True
        )
        value = headers.get("Message-ID")
    except Exception:  # a header that the standard library cannot read is not an error here
        return None
    if value is None:
        return None
    text = str(value).strip()
    match = _MESSAGE_ID.search(text)
    found = match.group(1) if match else text
    return found[:_MAX_MESSAGE_ID] or None


class Ingestor:
    """Stores polled or imported messages and turns them into cases."""

    def __init__(
        self,
        db: Database,
        config: Config,
        *,
        reply_handler: ReplyHandler | None = None,
        case_handler: CaseHandler | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.reply_handler = reply_handler
        self.case_handler = case_handler
        self.parse: Callable[[bytes], ParsedMessage] = lambda raw: parse_message(
            raw, case_prefix=config.tracker.case_prefix, timezone=config.tracker.timezone
        )

    # -- storing -------------------------------------------------------------------------------

    def position(self, mailbox: str) -> tuple[int | None, int]:
        """``(uidvalidity, last_uid)`` of a mailbox; ``(None, 0)`` when never polled."""
        with self.db.session(read_only=True) as session:
            state = session.get(MailboxState, mailbox)
            if state is None:
                return None, 0
            return state.uidvalidity, state.last_uid

    def store_batch(
        self,
        mailbox: MailboxSettings,
        uidvalidity: int,
        messages: Sequence[tuple[int, bytes]],
        *,
        now: dt.datetime,
    ) -> int:
        """Store a batch of ``(uid, raw)`` and advance the position, in one transaction.

        A UID already stored under this UIDVALIDITY is skipped, and so is a message whose
        Message-ID and content are stored under another UIDVALIDITY of the same mailbox (a
        rescan). Returns how many messages were new.
        """
        name = mailbox.name
        with self.db.session() as session:
            state = self._state(session, name)
            uids = sorted({uid for uid, _ in messages})
            known = set(
                session.scalars(
                    select(Message.uid).where(
                        Message.mailbox == name,
                        Message.uidvalidity == uidvalidity,
                        Message.uid.in_(uids),
                    )
                )
            )
            rescan = session.scalar(
                select(exists().where(Message.mailbox == name, Message.uidvalidity != uidvalidity))
            )
            stored = 0
            for uid, raw in sorted(messages, key=lambda item: item[0]):
                if uid in known:
                    continue
                known.add(uid)
                digest = content_hash(raw)
                message_id = header_message_id(raw)
                if rescan and self._stored_elsewhere(
                    session, name, uidvalidity, message_id, digest
                ):
                    continue
                session.add(
                    self._message(name, uidvalidity, uid, mailbox.unit_id, raw, message_id, now)
                )
                stored += 1
            highest = max(uids, default=0)
            if state.uidvalidity != uidvalidity:
                state.uidvalidity = uidvalidity
                state.last_uid = highest
            else:
                state.last_uid = max(state.last_uid, highest)
        log.info("stored %d new message(s) of %d from %s", stored, len(messages), name)
        return stored

    def record_poll(self, mailbox: str, *, now: dt.datetime, error: str | None) -> None:
        """Remember a successful poll, or the error a poll ended with."""
        with self.db.session() as session:
            state = self._state(session, mailbox)
            if error is None:
                state.last_success_at = now
            else:
                state.last_error = error[:2000]
                state.last_error_at = now

    def import_messages(
        self, unit_id: str, sources: Iterable[tuple[str, bytes]], *, now: dt.datetime
    ) -> int:
        """Store messages from files as received by ``unit_id``; skip content already stored
        for that unit. Commits every few messages; returns how many were new."""
        self.config.unit(unit_id)
        name = f"import:{unit_id}"
        stored = 0
        pending: list[tuple[str, bytes]] = []
        for source in sources:
            pending.append(source)
            if len(pending) >= IMPORT_CHUNK:
                stored += self._import_chunk(name, unit_id, pending, now)
                pending = []
        if pending:
            stored += self._import_chunk(name, unit_id, pending, now)
        log.info("imported %d new message(s) for unit %s", stored, unit_id)
        return stored

    def _import_chunk(
        self, name: str, unit_id: str, chunk: Sequence[tuple[str, bytes]], now: dt.datetime
    ) -> int:
        stored = 0
        with self.db.session() as session:
            state = self._state(session, name)
            state.uidvalidity = IMPORT_UIDVALIDITY
            for label, raw in chunk:
                digest = content_hash(raw)
                duplicate = session.scalar(
                    select(
                        exists().where(Message.unit_id == unit_id, Message.content_hash == digest)
                    )
                )
                if duplicate:
                    log.debug("import: %s is already stored", label)
                    continue
                state.last_uid += 1
                message = self._message(
                    name, IMPORT_UIDVALIDITY, state.last_uid, unit_id, raw, None, now
                )
                message.message_id = header_message_id(raw)
                session.add(message)
                session.flush()
                stored += 1
        return stored

    def _state(self, session: Session, mailbox: str) -> MailboxState:
        state = session.get(MailboxState, mailbox)
        if state is None:
            state = MailboxState(mailbox=mailbox, uidvalidity=None, last_uid=0)
            session.add(state)
        return state

    def _stored_elsewhere(
        self,
        session: Session,
        mailbox: str,
        uidvalidity: int,
        message_id: str | None,
        digest: str,
    ) -> bool:
        same_id = (
            Message.message_id.is_(None) if message_id is None else Message.message_id == message_id
        )
        found = session.scalar(
            select(
                exists().where(
                    Message.mailbox == mailbox,
                    Message.uidvalidity != uidvalidity,
                    Message.content_hash == digest,
                    same_id,
                )
            )
        )
        return bool(found)

    def _message(
        self,
        mailbox: str,
        uidvalidity: int,
        uid: int,
        unit_id: str,
        raw: bytes,
        message_id: str | None,
        now: dt.datetime,
    ) -> Message:
        """A new message row; one over ``max_message_bytes`` keeps only its metadata and is
        quarantined."""
        limit = self.config.tracker.max_message_bytes
        message = Message(
            mailbox=mailbox,
            uidvalidity=uidvalidity,
            uid=uid,
            unit_id=unit_id,
            message_id=message_id,
            content_hash=content_hash(raw),
            raw=raw,
            size=len(raw),
            received_at=now,
            quarantined=False,
        )
        if len(raw) > limit:
            message.raw = None
            message.quarantined = True
            message.processed_at = now
            message.error = f"message of {len(raw)} bytes is over the limit of {limit} bytes"
            log.warning("message %s uid %d quarantined: over the size limit", mailbox, uid)
        return message

    # -- processing ----------------------------------------------------------------------------

    def pending_ids(self, limit: int | None = None) -> list[int]:
        """Stored messages not yet processed, in arrival (and so UID) order."""
        statement = select(Message.id).where(Message.processed_at.is_(None)).order_by(Message.id)
        if limit is not None:
            statement = statement.limit(limit)
        with self.db.session(read_only=True) as session:
            return list(session.scalars(statement))

    def process_pending(self, *, now: dt.datetime, limit: int | None = None) -> ProcessResult:
        """Process every stored message not yet processed, each in a transaction of its own."""
        result = ProcessResult()
        for message_id in self.pending_ids(limit):
            outcome = ProcessResult()
            try:
                with self.db.session() as session:
                    self._process(session, message_id, now, outcome)
                result.add(outcome)  # counted once committed
            except Exception as error:  # one message never stops the others
                # The exception text may quote report data: its type only, above DEBUG.
                log.error("processing message %d failed: %s", message_id, type(error).__name__)
                log.debug("processing message %d failed", message_id, exc_info=True)
                self._quarantine_failed(message_id, now, error)
                result.failed += 1
        if result.processed:
            log.info(
                "processed %d message(s): %d case(s) created, %d merged, %d quarantined",
                result.processed,
                len(result.created),
                len(result.merged),
                result.quarantined,
            )
        return result

    def reset_for_reparse(self, *, quarantined_only: bool) -> int:
        """Mark stored messages unprocessed so that ``process_pending`` parses them again.

        Replies are left alone (their commands must never be applied twice), and so are
        messages stored without their content.
        """
        statement = (
            update(Message)
            .where(Message.raw.is_not(None))
            .where(or_(Message.kind.is_(None), Message.kind != "reply"))
            .values(processed_at=None, quarantined=False, error=None, kind=None)
        )
        if quarantined_only:
            statement = statement.where(Message.quarantined.is_(True))
        with self.db.session() as session:
            count: int = session.execute(statement).rowcount  # type: ignore[attr-defined]
        return count

    def _quarantine_failed(self, message_id: int, now: dt.datetime, error: Exception) -> None:
        with self.db.session() as session:
            session.execute(
                update(Message)
                .where(Message.id == message_id, Message.processed_at.is_(None))
                .values(
                    processed_at=now,
                    quarantined=True,
                    error=f"processing failed: {type(error).__name__}",
                )
            )

    def _process(
        self, session: Session, message_id: int, now: dt.datetime, result: ProcessResult
    ) -> None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(7243507102)))
        claimed = session.execute(
            update(Message)
            .where(Message.id == message_id, Message.processed_at.is_(None))
            .values(processed_at=now)
        )
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            return  # another process got there first
        message = session.get_one(Message, message_id)
        result.processed += 1
        if message.raw is None:
            message.quarantined = True
            message.error = message.error or "the message content was not stored"
            result.quarantined += 1
            return
        parsed = self.parse(message.raw)
        message.kind = parsed.kind
        message.error = parsed.error
        message.date = parsed.date
        if parsed.kind == "notification" and parsed.reports:
            received = min(parsed.date, message.received_at) if parsed.date else None
            for index, report in enumerate(parsed.reports):
                self._attach(
                    session, message, index, report, received or message.received_at, now, result
                )
        elif parsed.kind == "reply":
            result.replies += 1
            if self.reply_handler is not None:
                self.reply_handler(session, message, parsed, now)
        elif parsed.kind in ("auto", "bounce"):
            result.ignored += 1
        else:
            message.quarantined = True
            if parsed.kind == "notification":
                message.error = parsed.error or "a notification without a readable report"
            else:
                message.error = parsed.error or "neither a notification nor a reply"
            result.quarantined += 1
            log.info("message %d quarantined (%s)", message.id, parsed.kind)

    def _attach(
        self,
        session: Session,
        message: Message,
        index: int,
        report: Report,
        received: dt.datetime,
        now: dt.datetime,
        result: ProcessResult,
    ) -> None:
        """Open a case for one report, or join it to the open case of the same person."""
        key = person_key(report)
        for source in session.scalars(
            select(CaseSource).where(CaseSource.message_id == message.id)
        ):
            linked = source.case
            if same_person(case_key(linked), linked.received_at, key, received) or (
                not key.matchable and source.report_index == index
            ):
                return  # this message already gave this report a case: processed before
        case = self._open_case_of(session, key, received) if key.matchable else None
        created = case is None
        if case is None:
            case = self._create(session, message, index, report, received, now)
            result.created.append(case.ref or "")
        else:
            self._merge(session, case, message, index, report, now)
            result.merged.append(case.ref or "")
        if self.case_handler is not None:
            self.case_handler(session, case, message, created, now)

    def _open_case_of(self, session: Session, key: PersonKey, received: dt.datetime) -> Case | None:
        """The open case of the person ``key`` names (by report id first), if there is one."""
        conditions = []
        if key.report_id is not None:
            conditions.append(Case.report_id == key.report_id)
        if key.phone is not None and key.name_key is not None:
            conditions.append((Case.phone == key.phone) & (Case.name_key == key.name_key))
        candidates = session.scalars(
            select(Case).where(Case.status != "closed", or_(*conditions)).order_by(Case.id)
        )
        matches = [c for c in candidates if same_person(case_key(c), c.received_at, key, received)]
        by_id = [c for c in matches if key.report_id is not None and c.report_id == key.report_id]
        preferred = by_id or matches
        return preferred[0] if preferred else None

    def _create(
        self,
        session: Session,
        message: Message,
        index: int,
        report: Report,
        received: dt.datetime,
        now: dt.datetime,
    ) -> Case:
        state = new_case(received, message.unit_id, report.arrival_date, self.config.rules)
        case = Case(created_at=now, updated_at=now, name_key=name_key(report.full_name))
        set_report_fields(case, {name: getattr(report, name) for name in REPORT_FIELDS})
        store_state(case, state)
        session.add(case)
        session.flush()
        case.ref = format_ref(self.config.tracker.case_prefix, case.id)
        session.add(CaseUnit(case_id=case.id, unit_id=message.unit_id, added_at=now))
        session.add(
            CaseSource(case_id=case.id, message_id=message.id, report_index=index, added_at=now)
        )
        session.add(
            CaseEvent(
                case_id=case.id,
                at=now,
                actor=SYSTEM,
                channel=SYSTEM,
                action="created",
                from_status=None,
                to_status=case.status,
                message_id=message.id,
                details={"unit": message.unit_id, "report_index": index},
            )
        )
        return case

    def _merge(
        self,
        session: Session,
        case: Case,
        message: Message,
        index: int,
        report: Report,
        now: dt.datetime,
    ) -> None:
        updates = merge_updates(case_report(case), report)
        set_report_fields(case, updates)
        if "full_name" in updates:
            case.name_key = name_key(report.full_name)
        case.updated_at = now
        visible = session.get(CaseUnit, (case.id, message.unit_id))
        if visible is None:
            session.add(CaseUnit(case_id=case.id, unit_id=message.unit_id, added_at=now))
        session.add(
            CaseSource(case_id=case.id, message_id=message.id, report_index=index, added_at=now)
        )
        session.add(
            CaseEvent(
                case_id=case.id,
                at=now,
                actor=SYSTEM,
                channel=SYSTEM,
                action="merged",
                from_status=case.status,
                to_status=case.status,
                message_id=message.id,
                details={
                    "unit": message.unit_id,
                    "report_index": index,
                    "filled": sorted(updates),
                    "unit_added": visible is None,
                },
            )
        )
