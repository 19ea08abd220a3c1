"""The database schema as SQLAlchemy 2.0 typed models.

Every timestamp is stored in UTC and read back as an aware UTC ``datetime``; calendar dates
(period start and end, report dates) are plain ``date`` values in ``tracker.timezone``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware timestamp stored in UTC (naive UTC on SQLite, ``timestamptz`` elsewhere)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware timestamp is required")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dt.date: Date(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        bytes: LargeBinary(),
    }


class MailboxState(Base):
    """Where polling of one mailbox stands, and which instance holds its lease."""

    __tablename__ = "mailbox_state"

    mailbox: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    last_success_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[dt.datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[dt.datetime | None]


class Message(Base):
    """One raw message as received, committed before anything is done with it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("mailbox", "uidvalidity", "uid"),
        Index("ix_messages_message_id_content_hash", "message_id", "content_hash"),
        Index("ix_messages_content_hash", "content_hash"),
        Index("ix_messages_processed_at", "processed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    unit_id: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(998))
    content_hash: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes | None]
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[dt.datetime]
    date: Mapped[dt.datetime | None]
    kind: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)
    processed_at: Mapped[dt.datetime | None]
    handled_at: Mapped[dt.datetime | None]


class Case(Base):
    """One person being tracked: the report's fields, the status and its deadlines."""

    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_phone_name_key", "phone", "name_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str | None] = mapped_column(String(32), unique=True)
    owner_unit: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))
    full_name: Mapped[str | None] = mapped_column(String(255))
    name_key: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(32))
    birth_year: Mapped[int | None]
    gender: Mapped[str | None] = mapped_column(String(8))
    id_number: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(Text)
    commune: Mapped[str | None] = mapped_column(String(255))
    district: Mapped[str | None] = mapped_column(String(255))
    province: Mapped[str | None] = mapped_column(String(255))
    symptoms: Mapped[list[str]] = mapped_column(default=list)
    came_from: Mapped[str | None] = mapped_column(Text)
    contact: Mapped[str | None] = mapped_column(Text)
    arrival_date: Mapped[dt.date | None]
    report_date: Mapped[dt.date | None]
    report_id: Mapped[str | None] = mapped_column(String(128), index=True)
    risk: Mapped[str] = mapped_column(String(8))
    received_at: Mapped[dt.datetime]
    verify_by: Mapped[dt.datetime | None]
    period_start: Mapped[dt.date | None]
    period_start_reason: Mapped[str | None] = mapped_column(String(16))
    period_end: Mapped[dt.date | None]
    last_followup_at: Mapped[dt.datetime | None]
    next_followup_due: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    closed_at: Mapped[dt.datetime | None]

    units: Mapped[list[CaseUnit]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="CaseUnit.added_at"
    )
    sources: Mapped[list[CaseSource]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="CaseSource.added_at"
    )
    events: Mapped[list[CaseEvent]] = relationship(
        back_populates="case", order_by="(CaseEvent.at, CaseEvent.id)"
    )
    followups: Mapped[list[Followup]] = relationship(
        back_populates="case", order_by="(Followup.at, Followup.id)"
    )


class CaseUnit(Base):
    """A unit that can see a case (the owner and every unit whose mailbox received it)."""

    __tablename__ = "case_units"

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    added_at: Mapped[dt.datetime]

    case: Mapped[Case] = relationship(back_populates="units")


class CaseSource(Base):
    """A stored message a case came from; ``report_index`` is the report's place in it."""

    __tablename__ = "case_sources"

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True, index=True)
    report_index: Mapped[int]
    added_at: Mapped[dt.datetime]

    case: Mapped[Case] = relationship(back_populates="sources")
    message: Mapped[Message] = relationship()


SYSTEM = "system"
"""The ``actor`` and ``channel`` of the events mailtracker records on its own (a report
opening or joining a case, a purge)."""


class CaseEvent(Base):
    """One entry of a case's append-only history."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    case: Mapped[Case] = relationship(back_populates="events")
    message: Mapped[Message | None] = relationship()


class Followup(Base):
    """One follow-up of a person under monitoring or isolation."""

    __tablename__ = "followups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[dt.datetime]
    result: Mapped[str] = mapped_column(String(16))
    temperature: Mapped[float | None]
    note: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(16))

    case: Mapped[Case] = relationship(back_populates="followups")


class OutboxMessage(Base):
    """An outgoing message, kept until sent (``dedup_key`` makes queuing idempotent)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    recipients: Mapped[list[str]]
    raw: Mapped[bytes]
    created_at: Mapped[dt.datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None]


class DigestSent(Base):
    """A unit's digest for one local date, recorded so it is sent exactly once."""

    __tablename__ = "digests_sent"
    __table_args__ = (UniqueConstraint("unit_id", "date"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(64))
    date: Mapped[dt.date]
    sent_at: Mapped[dt.datetime]
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))


class ReplyLog(Base):
    """A reply that changed no case (refused, not understood, unknown sender), kept for audit."""

    __tablename__ = "reply_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime]
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    sender: Mapped[str | None] = mapped_column(String(320))
    line: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
