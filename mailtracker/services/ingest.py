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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session, joinedload

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
PROCESS_BATCH = 200
PROCESS_BATCH_SECONDS = 1.0
PROCESS_BATCH_BYTES = 32 * 1024 * 1024
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

    def _pending(self, limit: int | None) -> list[tuple[int, int]]:
        """``(id, size)`` of the stored messages not yet processed, in arrival (and so UID)
        order."""
        statement = (
            select(Message.id, Message.size)
            .where(Message.processed_at.is_(None))
            .order_by(Message.id)
        )
        if limit is not None:
            statement = statement.limit(limit)
        with self.db.session(read_only=True) as session:
            return [(message_id, size) for message_id, size in session.execute(statement)]

    @staticmethod
    def _batches(pending: Sequence[tuple[int, int]]) -> Iterator[list[int]]:
        """``pending`` cut into batches of at most ``PROCESS_BATCH`` messages and (unless one
        message alone is larger) ``PROCESS_BATCH_BYTES``."""
        batch: list[int] = []
        size = 0
        for message_id, message_size in pending:
            if batch and (len(batch) >= PROCESS_BATCH or size + message_size > PROCESS_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(message_id)
            size += message_size
        if batch:
            yield batch

    def process_pending(self, *, now: dt.datetime, limit: int | None = None) -> ProcessResult:
        """Process every stored message not yet processed.

        Messages are processed in batches, each in one transaction with a savepoint per
        message: a message that fails is rolled back to its savepoint and quarantined while
        the others commit. A batch is capped (``PROCESS_BATCH`` messages, about
        ``PROCESS_BATCH_SECONDS``) so that other writers never wait long, and by the size of
        the messages it holds in memory (``PROCESS_BATCH_BYTES``). When a batch's
        transaction itself fails, its messages are processed again one transaction each.
        """
        result = ProcessResult()
        for batch in self._batches(self._pending(limit)):
            while batch:
                try:
                    done, outcome = self._process_batch(batch, now)
                except Exception as error:  # the transaction failed: message by message
                    log.warning("processing a batch failed (%s): one by one", type(error).__name__)
                    log.debug("processing a batch failed", exc_info=True)
                    done, outcome = len(batch), self._process_each(batch, now)
                result.add(outcome)  # counted once committed
                batch = batch[max(done, 1) :]
        if result.processed:
            log.info(
                "processed %d message(s): %d case(s) created, %d merged, %d quarantined",
                result.processed,
                len(result.created),
                len(result.merged),
                result.quarantined,
            )
        return result

    def _process_batch(self, ids: Sequence[int], now: dt.datetime) -> tuple[int, ProcessResult]:
        """Claim and process ``ids`` in one transaction, a savepoint each; returns how many
        of ``ids`` were handled (fewer when the time cap ends the batch early)."""
        result = ProcessResult()
        deadline = time.monotonic() + PROCESS_BATCH_SECONDS
        with self.db.session() as session:
            claimed = self._claim(session, ids, now)
            messages = {
                message.id: message
                for message in session.scalars(select(Message).where(Message.id.in_(claimed)))
            }
            sources = self._sources_of(session, claimed)
            done = 0
            for message_id in ids:
                if done and time.monotonic() > deadline:
                    break
                done += 1
                message = messages.get(message_id)
                if message is None:
                    continue  # another process got there first
                outcome = ProcessResult()
                try:
                    with session.begin_nested():
                        self._process(session, message, sources.get(message_id, []), now, outcome)
                except Exception as error:  # one message never stops the others
                    self._log_failure(message_id, error)
                    message.quarantined = True
                    message.error = f"processing failed: {type(error).__name__}"
                    outcome = ProcessResult(failed=1)
                result.add(outcome)
            left = [message_id for message_id in ids[done:] if message_id in messages]
            if left:  # claimed but not reached: back to pending, for the next batch
                session.execute(
                    update(Message).where(Message.id.in_(left)).values(processed_at=None)
                )
        return done, result

    def _process_each(self, ids: Sequence[int], now: dt.datetime) -> ProcessResult:
        """Process ``ids`` one transaction each; a failure quarantines that message."""
        result = ProcessResult()
        for message_id in ids:
            outcome = ProcessResult()
            try:
                with self.db.session() as session:
                    claimed = self._claim(session, [message_id], now)
                    if claimed:
                        message = session.get_one(Message, message_id)
                        linked = self._sources_of(session, claimed).get(message_id, [])
                        self._process(session, message, linked, now, outcome)
                result.add(outcome)
            except Exception as error:  # one message never stops the others
                self._log_failure(message_id, error)
                self._quarantine_failed(message_id, now, error)
                result.failed += 1
        return result

    def _claim(self, session: Session, ids: Sequence[int], now: dt.datetime) -> list[int]:
        """Mark the still unprocessed ``ids`` processed (in the caller's transaction, under
        the processing lock on PostgreSQL); returns those this transaction claimed."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(7243507102)))
        claimed = session.scalars(
            update(Message)
            .where(Message.id.in_(ids), Message.processed_at.is_(None))
            .values(processed_at=now)
            .returning(Message.id)
        )
        return list(claimed)

    @staticmethod
    def _sources_of(session: Session, ids: Sequence[int]) -> dict[int, list[tuple[Case, int]]]:
        """The cases (and report indexes) each of the messages ``ids`` already gave a report
        to: not empty only for a message processed before (a reparse)."""
        linked: dict[int, list[tuple[Case, int]]] = {}
        statement = (
            select(CaseSource)
            .where(CaseSource.message_id.in_(ids))
            .options(joinedload(CaseSource.case))
            .order_by(CaseSource.case_id)
        )
        for source in session.scalars(statement):
            linked.setdefault(source.message_id, []).append((source.case, source.report_index))
        return linked

    @staticmethod
    def _log_failure(message_id: int, error: Exception) -> None:
        # The exception text may quote report data: its type only, above DEBUG.
        log.error("processing message %d failed: %s", message_id, type(error).__name__)
        log.debug("processing message %d failed", message_id, exc_info=error)

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
        self,
        session: Session,
        message: Message,
        sources: list[tuple[Case, int]],
        now: dt.datetime,
        result: ProcessResult,
    ) -> None:
        """Parse one claimed message and open or join its cases (``sources``: those it gave a
        report to already), or hand it to the reply handler, or quarantine it."""
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
                    session,
                    message,
                    sources,
                    index,
                    report,
                    received or message.received_at,
                    now,
                    result,
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
        sources: list[tuple[Case, int]],
        index: int,
        report: Report,
        received: dt.datetime,
        now: dt.datetime,
        result: ProcessResult,
    ) -> None:
        """Open a case for one report, or join it to the open case of the same person."""
        key = person_key(report)
        for linked, report_index in sources:
            if same_person(case_key(linked), linked.received_at, key, received) or (
                not key.matchable and report_index == index
            ):
                return  # this message already gave this report a case: processed before
        case = None
        if key.matchable:
            # Before the first report only this message's own columns are pending: the
            # lookup needs no flush. A later one must see the cases written before it.
            with session.no_autoflush if index == 0 else nullcontext():
                case = self._open_case_of(session, key, received)
        created = case is None
        if case is None:
            case = self._create(session, message, index, report, received, now)
            result.created.append(case.ref or "")
        else:
            self._merge(session, case, message, index, report, now)
            result.merged.append(case.ref or "")
        sources.append((case, index))
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
