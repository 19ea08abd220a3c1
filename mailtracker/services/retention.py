"""Retention: personal data of cases closed longer ago than ``tracker.retention_days`` is purged.

For each such case the report's identifying fields (name, phone, ID number, address, birth
year, report id, contact and travel history) are emptied, the free text of its history and
follow-ups (the command lines and notes staff wrote) is removed, and the raw bytes of the
messages it came from are deleted, unless a message also feeds a case still kept. A case keeps
its reference, status, outcome, dates, risk, symptoms, commune/district/province and its
events (who did what, when, from which status to which): the anonymous history and the counts.

Beyond the cases, the same cut-off applies to mail that names no kept case: raw bytes of
replies, automatic mail and bounces, the text of outgoing mail already sent or given up, and
the lines of the reply log. Quarantined mail is kept until someone looks at it.

A purged case gets one ``purged`` event; running the purge again changes nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from mailtracker.config import Config
from mailtracker.store.db import Database
from mailtracker.store.models import (
    SYSTEM,
    Case,
    CaseEvent,
    CaseSource,
    Followup,
    Message,
    OutboxMessage,
    ReplyLog,
)

log = logging.getLogger(__name__)

PERSONAL_FIELDS: tuple[str, ...] = (
    "full_name",
    "name_key",
    "phone",
    "id_number",
    "address",
    "birth_year",
    "report_id",
    "contact",
    "came_from",
)
"""Case columns emptied by the purge."""
FREE_TEXT_DETAILS: tuple[str, ...] = ("line", "note")
"""Keys of an event's ``details`` holding text a person wrote (it may name people)."""
PURGED = "purged"


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge did (or, in a dry run, would do): counts only."""

    cases: int = 0
    messages: int = 0
    outgoing: int = 0
    reply_log: int = 0

    @property
    def total(self) -> int:
        return self.cases + self.messages + self.outgoing + self.reply_log


def cutoff(now: dt.datetime, days: int) -> dt.datetime:
    """Cases closed, and mail received or sent, before this instant are purged."""
    return now - dt.timedelta(days=days)


def purge(
    db: Database,
    config: Config,
    *,
    now: dt.datetime,
    days: int | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Purge what is older than ``days`` (default: ``tracker.retention_days``) in one
    transaction; with ``dry_run`` count it and change nothing."""
    days = days if days is not None else config.tracker.retention_days
    if days is None:
        raise ValueError("no retention period: set tracker.retention_days")
    before = cutoff(now, days)
    with db.session(read_only=dry_run) as session:
        result = purge_session(session, before, now=now, dry_run=dry_run)
    log.info(
        "retention (%d days)%s: %d case(s), %d message(s), %d outgoing, %d reply log line(s)",
        days,
        " dry run" if dry_run else "",
        result.cases,
        result.messages,
        result.outgoing,
        result.reply_log,
    )
    return result


def purge_session(
    session: Session, before: dt.datetime, *, now: dt.datetime, dry_run: bool = False
) -> PurgeResult:
    """The purge inside the caller's transaction (see the module documentation)."""
    already = exists().where(CaseEvent.case_id == Case.id, CaseEvent.action == PURGED)
    cases = list(
        session.scalars(
            select(Case)
            .where(Case.status == "closed", Case.closed_at < before, ~already)
            .order_by(Case.id)
        )
    )
    kept_case = (Case.status != "closed") | Case.closed_at.is_(None) | (Case.closed_at >= before)
    feeds_kept_case = exists().where(
        CaseSource.message_id == Message.id, CaseSource.case_id == Case.id, kept_case
    )
    commands_kept_case = exists().where(
        CaseEvent.message_id == Message.id, CaseEvent.case_id == Case.id, kept_case
    )
    messages = list(
        session.scalars(
            select(Message.id).where(
                Message.raw.is_not(None),
                Message.received_at < before,
                Message.processed_at.is_not(None),
                Message.quarantined.is_(False),
                ~feeds_kept_case,
                ~commands_kept_case,
            )
        )
    )
    old_mail = (
        OutboxMessage.created_at < before,
        OutboxMessage.raw != b"",
        OutboxMessage.sent_at.is_not(None) | OutboxMessage.next_attempt_at.is_(None),
    )
    outgoing = list(session.scalars(select(OutboxMessage.id).where(*old_mail)))
    lines = list(
        session.scalars(select(ReplyLog.id).where(ReplyLog.at < before, ReplyLog.line.is_not(None)))
    )
    result = PurgeResult(len(cases), len(messages), len(outgoing), len(lines))
    if dry_run:
        return result
    for case in cases:
        _purge_case(session, case, now)
    if messages:
        session.execute(update(Message).where(Message.id.in_(messages)).values(raw=None))
    if outgoing:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(outgoing)).values(raw=b""))
    if lines:
        session.execute(update(ReplyLog).where(ReplyLog.id.in_(lines)).values(line=None))
    return result


def _purge_case(session: Session, case: Case, now: dt.datetime) -> None:
    emptied = [name for name in PERSONAL_FIELDS if getattr(case, name) is not None]
    for name in PERSONAL_FIELDS:
        setattr(case, name, None)
    for event in session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)):
        if any(key in event.details for key in FREE_TEXT_DETAILS):
            event.details = {
                key: value for key, value in event.details.items() if key not in FREE_TEXT_DETAILS
            }
    session.execute(update(Followup).where(Followup.case_id == case.id).values(note=None))
    session.add(
        CaseEvent(
            case_id=case.id,
            at=now,
            actor=SYSTEM,
            channel=SYSTEM,
            action=PURGED,
            from_status=case.status,
            to_status=case.status,
            message_id=None,
            details={"fields": emptied},
        )
    )
