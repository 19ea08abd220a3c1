"""Outgoing MIME messages, with the anti-loop headers and no way to inject a header."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import unicodedata
from collections.abc import Sequence
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Literal

LOOP_HEADER = "X-Mailtracker-Loop"
SUBJECT_LIMIT = 200
NAME_LIMIT = 100

AutoSubmitted = Literal["auto-generated", "auto-replied"]
Attachment = tuple[str, str, bytes]
"""``(filename, MIME type, content)``."""

_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_SPACES = re.compile(r"\s+")


def clean_header_text(text: str, limit: int = SUBJECT_LIMIT) -> str:
    """``text`` made safe for a header: control and line/paragraph separator characters become
    spaces, whitespace is collapsed, and the result is cut to ``limit`` characters."""
    visible = "".join(
        " " if unicodedata.category(ch) in {"Cc", "Zl", "Zp"} else ch
        for ch in unicodedata.normalize("NFC", text)
    )
    cleaned = _SPACES.sub(" ", visible).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"


def new_nonce() -> str:
    """A random lower-case hex string that keeps a Message-ID unique."""
    return secrets.token_hex(6)


def _address(text: str) -> Address:
    name, addr_spec = parseaddr(clean_header_text(text, limit=1000))
    local, at, domain = addr_spec.rpartition("@")
    if not at or not local or not domain or " " in addr_spec:
        raise ValueError(f"not an e-mail address: {clean_header_text(text, limit=80)!r}")
    return Address(display_name=clean_header_text(name, limit=NAME_LIMIT), addr_spec=addr_spec)


def _message_id(value: str) -> str:
    if not _MESSAGE_ID.fullmatch(value):
        raise ValueError(f"not a Message-ID: {clean_header_text(value, limit=80)!r}")
    return value


def compose(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None,
    reply_to: str | None,
    message_id: str,
    auto_submitted: AutoSubmitted,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[Attachment] = (),
    date: dt.datetime | None = None,
    loop_id: str | None = None,
) -> bytes:
    """The message as SMTP-ready bytes (CRLF line ends, RFC 2047 headers, UTF-8 bodies).

    The body is ``text`` alone or text + HTML as multipart/alternative, inside
    multipart/mixed when there are attachments. ``loop_id`` (default: the sender's address)
    goes in the loop header so the tracker recognises its own mail.
    """
    if not to:
        raise ValueError("a message needs at least one recipient")
    from_address = _address(sender)
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = from_address
    message["To"] = [_address(recipient) for recipient in to]
    if reply_to is not None:
        message["Reply-To"] = _address(reply_to)
    message["Subject"] = clean_header_text(subject)
    message["Date"] = format_datetime(date or dt.datetime.now(dt.UTC))
    message["Message-ID"] = _message_id(message_id)
    if in_reply_to is not None:
        message["In-Reply-To"] = _message_id(in_reply_to)
    if references:
        message["References"] = " ".join(_message_id(ref) for ref in references)
    message["Auto-Submitted"] = auto_submitted
    message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = clean_header_text(loop_id or from_address.addr_spec, limit=100)

    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if html is not None:
        message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for filename, mime_type, content in attachments:
        maintype, _, subtype = mime_type.partition("/")
        if not maintype or not subtype:
            raise ValueError(f"not a MIME type: {mime_type!r}")
        message.add_attachment(
            content,
            maintype=maintype,
            subtype=subtype,
            filename=clean_header_text(filename, limit=NAME_LIMIT).replace("/", "_"),
        )
    return message.as_bytes()
