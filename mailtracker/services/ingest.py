"""Ingestion: raw messages into the database, then stored messages into cases.

Storing and processing are separate steps. ``store_batch`` commits the raw messages and the
mailbox position in one transaction, so a message is never lost and never fetched twice;
``process_pending`` then parses the stored messages and writes their cases in batches, each in
a transaction that also marks its messages processed, so a crash at any point neither loses
nor duplicates anything. A backlog is parsed by worker processes ahead of the batch being
written: from the moment each fetched batch is stored, when a poll brings the backlog.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, defer, joinedload

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
from mailtracker.parsing.pool import Parsed, ParsePool
from mailtracker.store.db import Database
from mailtracker.store.models import (
    SYSTEM,
    Base,
    Case,
    CaseEvent,
    CaseSource,
    CaseUnit,
    MailboxState,
    Message,
)
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
PARSE_AHEAD_MIN = 2 * PROCESS_BATCH
"""A backlog of at least this many messages is parsed by worker processes."""
PARSE_AHEAD_MAX = 10 * PROCESS_BATCH
"""At most this many stored messages are handed to the workers before processing asks for
them (a bound on the contents and results held in memory)."""
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
        after_processing: Callable[[dt.datetime, ProcessResult], None] | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.reply_handler = reply_handler
        self.case_handler = case_handler
        self.after_processing = after_processing
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
        parsers: ParsePool | None = None,
    ) -> int:
        """Store a batch of ``(uid, raw)`` and advance the position, in one transaction.

        A UID already stored under this UIDVALIDITY is skipped, and so is a message whose
        Message-ID and content are stored under another UIDVALIDITY of the same mailbox (a
        rescan). The new messages are handed to ``parsers`` once committed (up to
        ``PARSE_AHEAD_MAX`` waiting). Returns how many messages were new.
        """
        name = mailbox.name
        new: list[Message] = []
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
                message = self._message(
                    name, uidvalidity, uid, mailbox.unit_id, raw, message_id, now
                )
                session.add(message)
                new.append(message)
            highest = max(uids, default=0)
            if state.uidvalidity != uidvalidity:
                state.uidvalidity = uidvalidity
                state.last_uid = highest
            else:
                state.last_uid = max(state.last_uid, highest)
        log.info("stored %d new message(s) of %d from %s", len(new), len(messages), name)
        if parsers is not None and len(parsers) < PARSE_AHEAD_MAX:
            room = PARSE_AHEAD_MAX - len(parsers)
            parsers.submit([(m.id, m.raw) for m in new if m.raw is not None][:room])
        return len(new)

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

    def process_pending(
        self,
        *,
        now: dt.datetime,
        limit: int | None = None,
        parsers: ParsePool | None = None,
        stop: threading.Event | None = None,
    ) -> ProcessResult:
        """Process every stored message not yet processed.

        Messages are processed in batches, each in one transaction (see ``_process_batch``):
        a message the parser fails on is quarantined while the others commit. A batch is
        capped (``PROCESS_BATCH`` messages, about
        ``PROCESS_BATCH_SECONDS``) so that other writers never wait long, and by the size of
        the messages it holds in memory (``PROCESS_BATCH_BYTES``). When a batch's
        transaction itself fails, its messages are processed again one transaction each. The
        messages are parsed by ``parsers`` (those not yet handed to them, a batch ahead), or by
        worker processes of its own for a backlog of ``PARSE_AHEAD_MIN`` messages or more.
        Once ``stop`` is set, the batches not started are left pending (for the next pass).
        ``after_processing`` is called at the end, once everything processed is committed.
        """
        result = ProcessResult()
        batches = list(self._batches(self._pending(limit)))
        own = self.parsing(sum(map(len, batches))) if parsers is None else nullcontext(parsers)
        with own as pool:
            for position, batch in enumerate(batches):
                if stop is not None and stop.is_set():
                    left = sum(map(len, batches[position:]))
                    log.info("stopping: %d message(s) left pending for the next start", left)
                    break
                if pool is not None:  # this batch and the next, as far as the workers lack them
                    self._parse_ahead(pool, batches[position : position + 2])
                parsed = pool.results(batch) if pool is not None else {}
                while batch:
                    try:
                        done, outcome = self._process_batch(batch, now, parsed)
                    except Exception as error:  # the transaction failed: message by message
                        log.warning(
                            "processing a batch failed (%s): one by one", type(error).__name__
                        )
                        log.debug("processing a batch failed", exc_info=True)
                        done, outcome = len(batch), self._process_each(batch, now, parsed)
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
        if self.after_processing is not None:
            self.after_processing(now, result)
        return result

    def parsing(self, backlog: int) -> AbstractContextManager[ParsePool | None]:
        """Worker processes for a backlog of ``backlog`` messages (None when it is smaller than
        ``PARSE_AHEAD_MIN`` or ``tracker.parse_workers`` is 0), stopped at the end."""
        workers = self.config.tracker.parse_workers
        if not workers or backlog < PARSE_AHEAD_MIN:
            return nullcontext(None)
        log.info("parsing %d message(s) in %d worker process(es)", backlog, workers)
        tracker = self.config.tracker
        return ParsePool(workers, case_prefix=tracker.case_prefix, timezone=tracker.timezone)

    def _parse_ahead(self, pool: ParsePool, batches: Iterable[Sequence[int]]) -> None:
        """Hand the stored messages of ``batches`` that ``pool`` does not have yet to it."""
        ids = [message_id for batch in batches for message_id in batch if message_id not in pool]
        if ids:
            pool.submit(self._contents(ids))

    def _contents(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """The stored content of the messages ``ids`` (those that have it)."""
        with self.db.session(read_only=True) as session:
            rows = session.execute(
                select(Message.id, Message.raw).where(Message.id.in_(ids), Message.raw.is_not(None))
            )
            return [(message_id, raw) for message_id, raw in rows if raw is not None]

    def _process_batch(
        self, ids: Sequence[int], now: dt.datetime, parsed: Mapping[int, Parsed]
    ) -> tuple[int, ProcessResult]:
        """Claim and process ``ids`` in one transaction (``parsed``: those the workers parsed
        already); returns how many of ``ids`` were handled (fewer when the time cap ends the
        batch early).

        The messages are parsed first (a message the parser fails on is quarantined alone),
        then their reports are matched against the open cases of the whole batch, loaded in
        one query, and the cases written in one flush. Replies are applied in order, each
        under a savepoint. Any other failure rolls the whole batch back (the caller then
        processes its messages one transaction each).
        """
        result = ProcessResult()
        deadline = time.monotonic() + PROCESS_BATCH_SECONDS
        with self.db.session() as session:
            claimed = self._claim(session, ids, now)
            # Contents the workers parsed are not read again (only if one must be parsed here).
            load = select(Message).where(Message.id.in_(claimed))
            if parsed:
                load = load.options(defer(Message.raw))
            messages = {message.id: message for message in session.scalars(load)}
            sources = self._sources_of(session, claimed)
            work: list[tuple[Message, Parsed | None]] = []
            done = 0
            for message_id in ids:
                if done and time.monotonic() > deadline:
                    break
                done += 1
                message = messages.get(message_id)
                if message is not None:  # else another process got there first
                    work.append(
                        (
                            message,
                            parsed[message_id]
                            if message_id in parsed
                            else self._parse_stored(message),
                        )
                    )
            left = [message_id for message_id in ids[done:] if message_id in messages]
            if left:  # claimed but not reached: back to pending, for the next batch
                session.execute(
                    update(Message).where(Message.id.in_(left)).values(processed_at=None)
                )
            self._apply(session, work, sources, now, result)
        return done, result

    def _process_each(
        self, ids: Sequence[int], now: dt.datetime, parsed: Mapping[int, Parsed]
    ) -> ProcessResult:
        """Process ``ids`` one transaction each; a failure quarantines that message."""
        result = ProcessResult()
        for message_id in ids:
            try:
                _, outcome = self._process_batch([message_id], now, parsed)
                result.add(outcome)
            except Exception as error:  # one message never stops the others
                self._log_failure(message_id, error)
                self._quarantine_failed(message_id, now, error)
                result.failed += 1
        return result

    def _parse_stored(self, message: Message) -> Parsed | None:
        """The parsed message, the exception the parser raised, or None without content."""
        if message.raw is None:
            return None
        try:
            return self.parse(message.raw)
        except Exception as error:  # quarantined by _apply, the others go on
            return error

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

    def _apply(
        self,
        session: Session,
        work: Sequence[tuple[Message, Parsed | None]],
        sources: dict[int, list[tuple[Case, int]]],
        now: dt.datetime,
        result: ProcessResult,
    ) -> None:
        """Record what each parsed message is and open or join its cases (``sources``: those
        a message gave a report to already), or hand it to the reply handler, or quarantine
        it; in the order of ``work``."""
        writes = _Writes()
        open_cases: _OpenCases | None = None
        for position, (message, parsed) in enumerate(work):
            if isinstance(parsed, Exception):
                self._log_failure(message.id, parsed)
                message.quarantined = True
                message.error = f"processing failed: {type(parsed).__name__}"
                result.failed += 1
                continue
            result.processed += 1
            if parsed is None:
                message.quarantined = True
                message.error = message.error or "the message content was not stored"
                result.quarantined += 1
                continue
            message.kind = parsed.kind
            message.error = parsed.error
            message.date = parsed.date
            if parsed.kind == "notification" and parsed.reports:
                if open_cases is None:
                    open_cases = _OpenCases.load(session, _person_keys(work[position:]))
                received = min(parsed.date, message.received_at) if parsed.date else None
                linked = sources.setdefault(message.id, [])
                for index, report in enumerate(parsed.reports):
                    self._attach(
                        session,
                        open_cases,
                        writes,
                        message,
                        linked,
                        index,
                        report,
                        received or message.received_at,
                        now,
                    )
            elif parsed.kind == "reply":
                if self.reply_handler is not None:
                    self._settle(session, writes, now, result)
                    open_cases = None  # a reply may change cases: look them up again
                    if not self._reply(session, message, parsed, now):
                        result.processed -= 1
                        result.failed += 1
                        continue
                result.replies += 1
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
        self._settle(session, writes, now, result)

    def _reply(
        self,
        session: Session,
        message: Message,
        parsed: ParsedMessage,
        now: dt.datetime,
    ) -> bool:
        """Hand a reply to the reply handler under a savepoint; False when it failed (the
        reply is then quarantined)."""
        assert self.reply_handler is not None
        try:
            with session.begin_nested():
                self.reply_handler(session, message, parsed, now)
        except Exception as error:  # one message never stops the others
            self._log_failure(message.id, error)
            message.quarantined = True
            message.error = f"processing failed: {type(error).__name__}"
            return False
        return True

    def _settle(
        self,
        session: Session,
        writes: _Writes,
        now: dt.datetime,
        result: ProcessResult,
    ) -> None:
        """Write the cases opened or joined so far (numbering the new ones) with their units,
        sources and events, then call the case hook on each."""
        if not writes.touched:
            return
        session.flush()
        prefix = self.config.tracker.case_prefix
        for case, _, created in writes.touched:
            if created and case.ref is None:
                case.ref = format_ref(prefix, case.id)
        session.flush()
        for model in (CaseUnit, CaseSource, CaseEvent):
            rows = [values | {"case_id": case.id} for case, values in writes.rows[model]]
            if rows:
                session.execute(insert(model), rows)
        for case, message, created in writes.touched:
            session.expire(case, ["units", "sources", "events"])  # as now stored
            (result.created if created else result.merged).append(case.ref or "")
            if self.case_handler is not None:
                self.case_handler(session, case, message, created, now)
        writes.clear()

    def _attach(
        self,
        session: Session,
        open_cases: _OpenCases,
        writes: _Writes,
        message: Message,
        linked: list[tuple[Case, int]],
        index: int,
        report: Report,
        received: dt.datetime,
        now: dt.datetime,
    ) -> None:
        """Open a case for one report, or join it to the open case of the same person (unless
        this message gave the report a case before)."""
        key = person_key(report)
        for case, report_index in linked:
            if same_person(case_key(case), case.received_at, key, received) or (
                not key.matchable and report_index == index
            ):
                return  # this message already gave this report a case: processed before
        found = open_cases.find(key, received) if key.matchable else None
        if found is None:
            case = self._create(session, writes, message, index, report, received, now)
            open_cases.add(case, {message.unit_id})
        else:
            case = found
            self._merge(open_cases, writes, case, message, index, report, now)
        linked.append((case, index))
        writes.touched.append((case, message, found is None))

    def _create(
        self,
        session: Session,
        writes: _Writes,
        message: Message,
        index: int,
        report: Report,
        received: dt.datetime,
        now: dt.datetime,
    ) -> Case:
        """A new case for ``report`` with its unit, source and event, numbered at the flush."""
        state = new_case(received, message.unit_id, report.arrival_date, self.config.rules)
        case = Case(created_at=now, updated_at=now, name_key=name_key(report.full_name))
        set_report_fields(case, {name: getattr(report, name) for name in REPORT_FIELDS})
        store_state(case, state)
        session.add(case)
        writes.add(CaseUnit, case, unit_id=message.unit_id, added_at=now)
        writes.add(CaseSource, case, message_id=message.id, report_index=index, added_at=now)
        writes.event(case, message, now, "created", from_status=None, index=index)
        return case

    def _merge(
        self,
        open_cases: _OpenCases,
        writes: _Writes,
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
        units = open_cases.units[case]
        unit_added = message.unit_id not in units
        if unit_added:
            units.add(message.unit_id)
            writes.add(CaseUnit, case, unit_id=message.unit_id, added_at=now)
        open_cases.add(case, units)  # under its keys as merged
        writes.add(CaseSource, case, message_id=message.id, report_index=index, added_at=now)
        writes.event(
            case,
            message,
            now,
            "merged",
            from_status=case.status,
            index=index,
            filled=sorted(updates),
            unit_added=unit_added,
        )


class _Writes:
    """What a run of notifications does, written at once by ``Ingestor._settle``: the cases
    opened or joined (ORM objects) and the rows of their units, sources and events."""

    def __init__(self) -> None:
        self.touched: list[tuple[Case, Message, bool]] = []
        """Each case opened (True) or joined (False), with the message that did it."""
        self.rows: dict[type[Base], list[tuple[Case, dict[str, Any]]]] = {
            CaseUnit: [],
            CaseSource: [],
            CaseEvent: [],
        }

    def add(self, model: type[Base], case: Case, **values: Any) -> None:
        """A row of ``model`` for ``case`` (its ``case_id`` filled in once the case has one)."""
        self.rows[model].append((case, values))

    def event(
        self,
        case: Case,
        message: Message,
        now: dt.datetime,
        action: str,
        *,
        from_status: str | None,
        index: int,
        **details: Any,
    ) -> None:
        """The ``created`` or ``merged`` event of ``case`` for report ``index`` of ``message``."""
        self.add(
            CaseEvent,
            case,
            at=now,
            actor=SYSTEM,
            channel=SYSTEM,
            action=action,
            from_status=from_status,
            to_status=case.status,
            message_id=message.id,
            details={"unit": message.unit_id, "report_index": index, **details},
        )

    def clear(self) -> None:
        self.touched.clear()
        for rows in self.rows.values():
            rows.clear()


def _person_keys(
    work: Iterable[tuple[Message, Parsed | None]],
) -> set[PersonKey]:
    """The person keys of every report of the notifications in ``work``."""
    return {
        person_key(report)
        for _, parsed in work
        if isinstance(parsed, ParsedMessage) and parsed.kind == "notification"
        for report in parsed.reports
    }


class _OpenCases:
    """The open cases a batch's reports may join: those stored that match a key of the
    batch (one query), then those the batch opens, in the order of their ids."""

    def __init__(self) -> None:
        self._order: dict[Case, int] = {}
        self._by_report_id: dict[str, list[Case]] = {}
        self._by_person: dict[tuple[str, str], list[Case]] = {}
        self.units: dict[Case, set[str]] = {}
        """The units that can see each case."""

    @classmethod
    def load(cls, session: Session, keys: Iterable[PersonKey]) -> _OpenCases:
        found = cls()
        report_ids = sorted({key.report_id for key in keys if key.report_id is not None})
        phones = sorted(
            {key.phone for key in keys if key.phone is not None and key.name_key is not None}
        )
        conditions = []
        if report_ids:
            conditions.append(Case.report_id.in_(report_ids))
        if phones:
            conditions.append(Case.phone.in_(phones))
        if not conditions:
            return found
        cases = session.scalars(
            select(Case).where(Case.status != "closed", or_(*conditions)).order_by(Case.id)
        ).all()
        units: dict[int, set[str]] = {case.id: set() for case in cases}
        if units:
            rows = session.execute(
                select(CaseUnit.case_id, CaseUnit.unit_id).where(CaseUnit.case_id.in_(units))
            )
            for case_id, unit_id in rows:
                units[case_id].add(unit_id)
        for case in cases:
            found.add(case, units[case.id])
        return found

    def add(self, case: Case, units: set[str]) -> None:
        """Index ``case`` under its current keys (again after a merge changed them)."""
        self._order.setdefault(case, len(self._order))
        self.units[case] = units
        if case.report_id is not None:
            _add_once(self._by_report_id.setdefault(case.report_id, []), case)
        if case.phone is not None and case.name_key is not None:
            _add_once(self._by_person.setdefault((case.phone, case.name_key), []), case)

    def find(self, key: PersonKey, received: dt.datetime) -> Case | None:
        """The open case of the person ``key`` names (by report id first), if there is one."""
        candidates: list[Case] = []
        if key.report_id is not None:
            candidates += self._by_report_id.get(key.report_id, [])
        if key.phone is not None and key.name_key is not None:
            candidates += self._by_person.get((key.phone, key.name_key), [])
        matches = sorted(
            {
                case
                for case in candidates
                if case.status != "closed"
                and same_person(case_key(case), case.received_at, key, received)
            },
            key=self._order.__getitem__,
        )
        by_id = [
            case
            for case in matches
            if key.report_id is not None and case.report_id == key.report_id
        ]
        preferred = by_id or matches
        return preferred[0] if preferred else None


def _add_once(cases: list[Case], case: Case) -> None:
    if case not in cases:
        cases.append(case)
