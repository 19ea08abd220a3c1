"""A unit's daily digest: read from the database, built by the pure core, queued once a day.

``DigestService.send`` records the digest (``DigestSent``, unique per unit and local date) and
queues the message in the same transaction, so a digest goes out once per unit per day however
many daemons run, and a late one is still sent once.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from openpyxl import Workbook
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailtracker.config import Config, UnitSettings
from mailtracker.domain.digest import (
    CaseSnapshot,
    DigestModel,
    EventSnapshot,
    QuarantinedMail,
    build_digest,
)
from mailtracker.domain.workflow import STATUSES, local_day
from mailtracker.mail.outbox import enqueue
from mailtracker.render import RenderedMail, render_digest
from mailtracker.services.outgoing import DIGEST_TOKEN, compose_for_unit
from mailtracker.services.sheets import text_cell
from mailtracker.store.db import Database
from mailtracker.store.models import Case, CaseEvent, CaseUnit, DigestSent, Message, OutboxMessage

log = logging.getLogger(__name__)

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSX_COLUMNS: dict[str, tuple[str, ...]] = {
    "vi": (
        "Mã", "Họ tên", "Điện thoại", "Xã/Phường", "Trạng thái",
        "Xác minh trước", "Theo dõi tiếp trước", "Kết thúc", "Nhận lúc",
    ),
    "en": (
        "Ref", "Name", "Phone", "Commune", "Status",
        "Verify by", "Next follow-up", "Period ends", "Received",
    ),
}  # fmt: skip


class BuiltDigest(NamedTuple):
    """A rendered digest: the model, subject, text and HTML parts, and the optional .xlsx."""

    model: DigestModel
    subject: str
    text: str
    html: str
    xlsx: bytes | None


def digest_key(unit_id: str, day: dt.date) -> str:
    """The outbox dedup key of a unit's digest for one local date."""
    return f"digest:{unit_id}:{day.isoformat()}"


def digest_recorded(session: Session, unit_id: str, day: dt.date) -> bool:
    """Whether the digest of ``unit_id`` for ``day`` has been recorded as sent."""
    found = session.scalar(
        select(exists().where(DigestSent.unit_id == unit_id, DigestSent.date == day))
    )
    return bool(found)


_SNAPSHOT_COLUMNS = (
    Case.id,
    Case.ref,
    Case.status,
    Case.outcome,
    Case.owner_unit,
    Case.full_name,
    Case.phone,
    Case.commune,
    Case.received_at,
    Case.verify_by,
    Case.period_end,
    Case.next_followup_due,
    Case.created_at,
)
"""The columns a ``CaseSnapshot`` is made of, read as plain tuples rather than ORM objects."""


def _snapshot(row: Any) -> CaseSnapshot:
    return CaseSnapshot(
        ref=row.ref or f"#{row.id}",
        status=row.status,
        outcome=row.outcome,
        owner_unit=row.owner_unit,
        full_name=row.full_name,
        phone=row.phone,
        commune=row.commune,
        received_at=row.received_at,
        verify_by=row.verify_by,
        period_end=row.period_end,
        next_followup_due=row.next_followup_due,
        created_at=row.created_at,
    )


def _cell(sheet: WriteOnlyWorksheet, value: Any) -> Any:
    """A value openpyxl writes as itself: text as a text cell (``text_cell``), anything else,
    such as local naive timestamps, unchanged."""
    return text_cell(sheet, value) if isinstance(value, str) else value


class DigestService:
    """Builds and queues the daily digest of each unit."""

    def __init__(self, config: Config, db: Database, *, attach_xlsx: bool = True) -> None:
        self.config = config
        self.db = db
        self.attach_xlsx = attach_xlsx
        self.tz = config.tracker.timezone

    def as_of(self, unit: UnitSettings, day: dt.date, now: dt.datetime) -> dt.datetime:
        """The moment a digest for ``day`` describes: ``now`` for today, else the unit's
        ``digest_at`` on that day."""
        if day == local_day(now, self.tz):
            return now
        return dt.datetime.combine(day, unit.digest_at, tzinfo=self.tz).astimezone(dt.UTC)

    def build(self, session: Session, unit_id: str, day: dt.date, now: dt.datetime) -> BuiltDigest:
        """The digest of ``unit_id`` for ``day`` from the cases it can see, their changes
        since its previous digest and the unreadable mail of its mailboxes."""
        model, xlsx = self._model_and_sheet(session, self.config.unit(unit_id), day, now)
        mail = render_digest(model, prefix=self.config.tracker.case_prefix)
        return BuiltDigest(model, mail.subject, mail.text, mail.html or "", xlsx)

    def _model_and_sheet(
        self, session: Session, unit: UnitSettings, day: dt.date, now: dt.datetime
    ) -> tuple[DigestModel, bytes | None]:
        """The digest's model and its sheet of open cases (none for an observer); the cases
        are read once and let go before the digest is rendered."""
        moment = self.as_of(unit, day, now)
        visible = select(CaseUnit.case_id).where(CaseUnit.unit_id == unit.id)
        since = session.scalar(
            select(DigestSent.sent_at)
            .where(DigestSent.unit_id == unit.id, DigestSent.date < day)
            .order_by(DigestSent.date.desc())
            .limit(1)
        )
        window_start = since if since is not None else moment - dt.timedelta(days=1)
        counts = dict(
            session.execute(
                select(Case.status, func.count()).where(Case.id.in_(visible)).group_by(Case.status)
            ).all()
        )
        # Closed cases only matter to the "new" section: the memory used stays flat however
        # many cases the unit has closed.
        cases = [
            _snapshot(row)
            for row in session.execute(
                select(*_SNAPSHOT_COLUMNS)
                .where(
                    Case.id.in_(visible),
                    or_(
                        Case.status != "closed",
                        and_(Case.created_at > window_start, Case.created_at <= moment),
                    ),
                )
                .order_by(Case.id)
            )
        ]
        quarantined = session.execute(
            select(Message.received_at, Message.mailbox, Message.error)
            .where(
                Message.unit_id == unit.id,
                Message.quarantined.is_(True),
                Message.handled_at.is_(None),
            )
            .order_by(Message.received_at)
        ).all()
        events = session.execute(  # streamed into the core, not kept
            select(
                CaseEvent.case_id,
                Case.ref,
                CaseEvent.at,
                CaseEvent.actor,
                CaseEvent.action,
                CaseEvent.from_status,
                CaseEvent.to_status,
            )
            .join(Case, Case.id == CaseEvent.case_id)
            .where(
                CaseEvent.case_id.in_(visible),
                CaseEvent.at > window_start,
                CaseEvent.at <= moment,
            )
            .order_by(CaseEvent.at, CaseEvent.id)
        )
        built = build_digest(
            unit,
            cases,
            (
                EventSnapshot(
                    ref=event.ref or f"#{event.case_id}",
                    at=event.at,
                    actor=event.actor,
                    action=event.action,
                    from_status=event.from_status,
                    to_status=event.to_status,
                )
                for event in events
            ),
            [
                QuarantinedMail(
                    received_at=message.received_at,
                    mailbox=message.mailbox,
                    reason=message.error or "?",
                )
                for message in quarantined
            ],
            now=moment,
            tz=self.tz,
            since=window_start,
        )
        # The core counted only the cases it was given; the counts cover every visible case.
        model = replace(
            built, counts_by_status={status: counts.get(status, 0) for status in STATUSES}
        )
        open_cases = [case for case in cases if case.status != "closed"]
        xlsx = (
            self.open_cases_xlsx(open_cases, unit.language)
            if self.attach_xlsx and open_cases and unit.role != "observer"
            else None
        )
        return model, xlsx

    def open_cases_xlsx(self, cases: Sequence[CaseSnapshot], language: str) -> bytes:
        """A sheet of open cases: reference, name, phone, commune, status and deadlines only.

        Every text cell is stored as text, so a name such as ``=HYPERLINK(...)`` stays a name;
        timestamps are local and naive (the sheet has no time zones). Rows are streamed by a
        write-only workbook.
        """
        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet("cases")
        sheet.append(XLSX_COLUMNS["vi" if language == "vi" else "en"])

        def local(value: dt.datetime | None) -> dt.datetime | None:
            return value.astimezone(self.tz).replace(tzinfo=None) if value else None

        for case in cases:
            row = (
                case.ref,
                case.full_name,
                case.phone,
                case.commune,
                case.status,
                local(case.verify_by),
                local(case.next_followup_due),
                case.period_end,
                local(case.received_at),
            )
            sheet.append([_cell(sheet, value) for value in row])
        buffer = io.BytesIO()
        workbook.save(buffer)
        return buffer.getvalue()

    def send(self, unit_id: str, day: dt.date, now: dt.datetime) -> bool:
        """Record and queue the digest of ``unit_id`` for ``day`` in one transaction.

        False when it was already recorded (by this or another process), or when the unit has
        no ``digest_to``; nothing is then queued.
        """
        unit = self.config.unit(unit_id)
        if not unit.digest_to:
            log.warning("unit %s has no digest_to: no digest sent", unit.id)
            return False
        key = digest_key(unit.id, day)
        try:
            with self.db.session() as session:
                if digest_recorded(session, unit.id, day):
                    return False
                built = self.build(session, unit.id, day, now)
                attachments = (
                    [
                        (
                            f"{self.config.tracker.case_prefix}-{unit.id}-{day}.xlsx",
                            XLSX_TYPE,
                            built.xlsx,
                        )
                    ]
                    if built.xlsx is not None
                    else []
                )
                raw = compose_for_unit(
                    self.config,
                    unit,
                    RenderedMail(built.subject, built.text, built.html),
                    recipients=unit.digest_to,
                    token_kind=DIGEST_TOKEN,
                    now=now,
                    attachments=attachments,
                )
                enqueue(session, dedup_key=key, recipients=list(unit.digest_to), raw=raw, now=now)
                outbox_id = session.scalar(
                    select(OutboxMessage.id).where(OutboxMessage.dedup_key == key)
                )
                session.add(DigestSent(unit_id=unit.id, date=day, sent_at=now, outbox_id=outbox_id))
                session.flush()
        except IntegrityError:
            log.info("digest of unit %s for %s was recorded by another process", unit.id, day)
            return False
        log.info(
            "digest of unit %s for %s queued (%d overdue, %d new)",
            unit.id,
            day,
            built.model.overdue_count,
            built.model.new_count,
        )
        return True
