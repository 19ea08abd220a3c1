"""Test support for replies: a three-unit configuration, seeded cases, and replies written the
way Gmail (Vietnamese interface), Outlook and an HTML-only client write them, quoting the mail
they answer."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import html
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any, Literal

from sqlalchemy import select
from store_support import HO_CHI_MINH, notification

from mailtracker.config import Config, config_from_dict
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database
from mailtracker.store.models import Case, OutboxMessage

Client = Literal["gmail", "outlook", "html"]

SECRET = "reply-test-secret"
TRACKER = "tracker@example.org"
EPI = "epi@cdc.example.org"  # lead unit cdc, Vietnamese
DOC = "doc@med.example.org"  # member unit med, English
OBSERVER = "watch@soyte.example.org"  # observer unit soyte
# Replies are read at 07:30 local time on Friday 14 February 2020.
NOW = dt.datetime(2020, 2, 14, 0, 30, tzinfo=dt.UTC)
SENT = dt.datetime(2020, 2, 14, 7, 20, tzinfo=HO_CHI_MINH)


def unit_data(unit_id: str, role: str, staff: str, language: str, **mailbox: Any) -> dict[str, Any]:
    return {
        "id": unit_id,
        "name": f"Unit {unit_id}",
        "role": role,
        "staff": [staff],
        "digest_to": [staff],
        "language": language,
        "mailboxes": [
            {
                "host": "127.0.0.1",
                "port": 1143,
                "security": "none",
                "username": f"{unit_id}-inbox@example.org",
                "password": "env:MT_TEST_IMAP",
            }
            | mailbox
        ],
    }


def config_data(database: str, smtp_port: int = 2525) -> dict[str, Any]:
    return {
        "tracker": {
            "database": database,
            "secret_key": "env:MT_TEST_SECRET",
            "case_prefix": "QN",
            "reply_token_days": 14,
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": f"Mailtracker QN <{TRACKER}>",
        },
        "units": [
            unit_data("cdc", "lead", EPI, "vi"),
            unit_data("med", "member", DOC, "en"),
            unit_data("soyte", "observer", OBSERVER, "vi"),
        ],
    }


def make_config(database: str) -> Config:
    return config_from_dict(
        config_data(database), environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": "pw"}
    )


PEOPLE = [
    ("cdc", "Nguyễn Thị Hoa", "0905111222", "SKVN-2020-0090001"),
    ("cdc", "Trần Văn Bình", "0905333444", "SKVN-2020-0090002"),
    ("med", "Lê Văn Cường", "0905555666", "SKVN-2020-0090003"),
]
"""QN-0001 and QN-0002 owned by cdc, QN-0003 by med."""


def seed_cases(ingestor: Ingestor, *, now: dt.datetime = NOW) -> None:
    for unit_id, name, phone, report_id in PEOPLE:
        raw = notification(
            name=name, phone=phone, report_id=report_id, to=f"{unit_id}-inbox@example.org"
        )
        ingestor.import_messages(unit_id, [(report_id, raw)], now=now)
    ingestor.process_pending(now=now)


def case(db: Database, ref: str) -> Case:
    with db.session(read_only=True) as session:
        found = session.scalar(select(Case).where(Case.ref == ref))
        assert found is not None
        found.events  # noqa: B018 - loaded before the session ends
        return found


def outbox(db: Database, prefix: str = "") -> list[OutboxMessage]:
    with db.session(read_only=True) as session:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.dedup_key.startswith(prefix))
            .order_by(OutboxMessage.id)
        )
        return list(rows)


def read(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def reply(
    original: bytes,
    new_text: str,
    *,
    sender: str = EPI,
    client: Client = "gmail",
    date: dt.datetime = SENT,
    to: str | None = None,
    subject: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A reply to ``original`` (a message the tracker sent) whose new text is ``new_text``,
    quoting ``original`` as ``client`` does; it goes to the original's Reply-To."""
    quoted = read(original)
    original_text = text_of(quoted)
    original_from = str(quoted["From"])
    message = EmailMessage()
    message["From"] = f"Cán bộ <{sender}>"
    message["To"] = to or str(quoted["Reply-To"] or quoted["From"])
    message["Subject"] = subject or f"Re: {quoted['Subject']}"
    message["Date"] = format_datetime(date)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message["In-Reply-To"] = str(quoted["Message-ID"])
    message["References"] = str(quoted["Message-ID"])
    for name, value in (headers or {}).items():
        message[name] = value
    if client == "gmail":
        attribution = f"Vào Th 6, 14 thg 2, 2020 lúc 07:00 {original_from} đã viết:"
        body = "\n".join(
            [new_text, "", attribution, *(f"> {line}" for line in original_text.splitlines())]
        )
        message.set_content(body)
    elif client == "outlook":
        block = [
            "________________________________",
            f"From: {original_from}",
            "Sent: Friday, February 14, 2020 7:00 AM",
            f"To: {sender}",
            f"Subject: {quoted['Subject']}",
            "",
        ]
        message.set_content("\n".join([new_text, "", *block, original_text]))
    else:
        new_html = "".join(f"<div>{html.escape(line)}</div>" for line in new_text.splitlines())
        message.set_content(
            f'<html><body><div dir="ltr">{new_html}</div><br>'
            f'<div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
            f"{html.escape(original_from)} wrote:</div>"
            f"<blockquote>{html_of(quoted) if quoted.is_multipart() else original_text}"
            f"</blockquote></div></body></html>",
            subtype="html",
        )
    return message.as_bytes()


def bare(address_header: str) -> str:
    return parseaddr(address_header)[1]
