"""E-mail bytes -> kind (notification, reply, auto, bounce, unknown), reports and commands.

The MIME tree comes from mail-parser (itself on the standard ``email`` package); headers are
decoded with the standard library's RFC 2047 parser, which keeps the spaces mail-parser drops.
The walk over the tree is bounded (depth, parts, sizes) and :func:`parse_message` never raises.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import mailparser

from mailtracker.domain.commands import Command
from mailtracker.domain.reports import Report, build_report, field_for_label
from mailtracker.domain.text import fold, nfc, remembered
from mailtracker.mail.compose import LOOP_HEADER
from mailtracker.parsing.tables import (
    Fields,
    TableError,
    decode_text,
    fields_from_csv,
    fields_from_html,
    fields_from_xlsx,
    html_to_text,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

Kind = Literal["notification", "reply", "auto", "bounce", "unknown"]

MAX_MESSAGE_BYTES = 64_000_000
MAX_DEPTH = 16
MAX_PARTS = 500
MAX_TEXT_CHARS = 1_000_000
MAX_TABLE_BYTES = 10_000_000
MAX_REPORTS = 5000

_XLSX_TYPES = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.ms-excel.sheet.macroenabled.12",
    }
)
_CSV_TYPES = frozenset({"text/csv", "text/comma-separated-values", "application/csv"})
_MARKERS = ("tra loi phia tren dong nay", "reply above this line")
_REPLY_SUBJECT = re.compile(
    r"^\s*(?:re|aw|sv|vs|antw|odp|r|tl|tra loi|phan hoi)\s*(?:\[\d+\])?\s*[:：]"
)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto reply|autoreply|auto|out of office|tra loi tu dong|"
    r"tu dong tra loi|vang mat|thu tra loi tu dong)\b"
)
_ROBOT_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponse", LOOP_HEADER)
DEFAULT_TIMEZONE = ZoneInfo("Asia/Ho_Chi_Minh")
_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_UNSTRUCTURED = frozenset(
    name.lower()
    for name in (
        "Subject",
        "In-Reply-To",
        "References",
        "Received",
        "Delivered-To",
        "Auto-Submitted",
        "Precedence",
        "List-Id",
        "Return-Path",
        *_ROBOT_HEADERS,
    )
)
"""Headers the standard library's registry reads as unstructured text."""
_AS_WRITTEN = _UNSTRUCTURED | {"date", "message-id"}
"""Headers read as written unless they hold encoded words: the registry would only give the
same text back (a date and a message id are read again by their own parsers)."""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What one e-mail says: its kind, the reports or reply commands, and header facts."""

    kind: Kind
    reports: tuple[Report, ...] = ()
    commands: tuple[Command, ...] = ()
    not_understood: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str = ""
    sender: str | None = None
    date: dt.datetime | None = None
    in_reply_to: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self, file: str) -> dict[str, Any]:
        """The brief's ``parse --json`` object for this message."""
        return {
            "file": file,
            "kind": self.kind,
            "reports": [report.to_json() for report in self.reports],
            "commands": [command.to_json() for command in self.commands],
        }


@dataclass(slots=True)
class _Walk:
    """Budget and findings shared by one walk over a MIME tree."""

    problems: list[str] = field(default_factory=list)
    parts_seen: int = 0
    delivery_status: bool = False

    def problem(self, text: str) -> None:
        if text not in self.problems and len(self.problems) < 20:
            self.problems.append(text)


# --- headers ---------------------------------------------------------------------------------


def _unescape(value: str) -> str:
    """Raw 8-bit header bytes (kept as surrogates by the parser) decoded as UTF-8 or cp1258."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    return decode_text(value.encode("ascii", "surrogateescape"))


def _header_values(message: Message, name: str) -> list[str]:
    """Every ``name`` header, RFC 2047 decoded, NFC, CR/LF removed."""
    return [_decoded(name, _unescape(str(raw))) for raw in message.get_all(name) or []]


@remembered(max_chars=300, maxsize=2048)
def _decoded(name: str, text: str) -> str:
    """One header value, RFC 2047 decoded, NFC, CR/LF removed."""
    # Without encoded words, the RFC parser gives an unstructured header back as written.
    if "=?" in text or name.lower() not in _AS_WRITTEN:
        try:
            text = str(email.policy.default.header_factory(name, text))
        except Exception:  # a header the RFC parser rejects is kept as written
            log.debug("undecodable %s header", name)
    return nfc(text.replace("\r", " ").replace("\n", " "))


def _header(message: Message, name: str) -> str | None:
    values = _header_values(message, name)
    return values[0] if values else None


def _addresses(message: Message, *names: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for name in names:
        for _, address in getaddresses(_header_values(message, name)):
            bare = address.strip().strip("<>").lower()
            if bare:
                found[bare] = None
    return tuple(found)


def _message_ids(*values: str | None) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in values:
        if not value:
            continue
        ids = _MSG_ID.findall(value) or value.split()
        for message_id in ids:
            found[message_id.strip("<>")] = None
    return tuple(found)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _date_header(message: Message) -> dt.datetime | None:
    value = _header(message, "Date")
    if not value:
        return None
    try:
        return _aware(parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _received_date(message: Message) -> dt.datetime | None:
    for received in _header_values(message, "Received"):
        _, _, stamp = received.rpartition(";")
        try:
            return _aware(parsedate_to_datetime(stamp.strip()))
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return None


# --- classification --------------------------------------------------------------------------


def _is_bounce(message: Message, scan: _Walk, sender: str | None) -> bool:
    report_type = (message.get_param("report-type") or "") if message.is_multipart() else ""
    if message.get_content_type() == "multipart/report" and fold(str(report_type)) in {
        "delivery-status",
        "disposition-notification",
    }:
        return True
    if scan.delivery_status:
        return True
    return bool(sender and sender.split("@")[0] in _DAEMONS)


def _robot_reply(message: Message, subject: str) -> bool:
    """An out-of-office or other automatic answer, or the tracker's own mail (its loop header):
    never a notification, never a reply."""
    submitted = fold(_header(message, "Auto-Submitted") or "")
    if submitted.startswith("auto-replied"):
        return True
    if any(_header(message, name) for name in _ROBOT_HEADERS):
        return True
    return bool(_AUTO_SUBJECT.match(fold(subject)))


def _automatic(message: Message) -> bool:
    """Machine-sent mail (Auto-Submitted, bulk or list precedence, List-Id, null return path)."""
    submitted = fold(_header(message, "Auto-Submitted") or "no")
    if submitted and submitted != "no":
        return True
    if fold(_header(message, "Precedence") or "") in {"bulk", "junk", "list", "auto_reply"}:
        return True
    if _header(message, "List-Id"):
        return True
    return (_header(message, "Return-Path") or "").replace(" ", "") == "<>"


def _looks_like_reply(message: Message, subject: str) -> bool:
    if _header(message, "In-Reply-To") or _header(message, "References"):
        return True
    return bool(_REPLY_SUBJECT.match(fold(subject)))


# --- bodies ----------------------------------------------------------------------------------


def _payload_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    return b""


def _unflow(text: str) -> str:
    """Join the soft line breaks of ``format=flowed`` text."""
    lines = text.split("\n")
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith(" ") and joined[-1].rstrip() != "--":
            joined[-1] += line
        else:
            joined.append(line)
    return "\n".join(joined)


def _part_text(part: Message, walk: _Walk) -> str:
    data = _payload_bytes(part)
    if len(data) > MAX_TEXT_CHARS:
        walk.problem(f"{part.get_content_type()} part cut at {MAX_TEXT_CHARS} bytes")
        data = data[:MAX_TEXT_CHARS]
    charset = part.get_content_charset()
    text = decode_text(data, charset).replace("\r\n", "\n").replace("\r", "\n")
    if fold(str(part.get_param("format") or "")) == "flowed":
        text = _unflow(text)
    return text


def _cut_at_marker(text: str) -> str:
    """Text above the tracker's own reply marker: what follows it is quoted tracker mail."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        folded = fold(line)
        if any(marker in folded for marker in _MARKERS):
            return "\n".join(lines[:index])
    return text


_LINE = re.compile(
    r"^[\s>]*(?:[-*•+]\s*|\d{1,2}[.)]\s+)?(?P<label>[^:：\t]{1,60}?)\s*(?:[:：]|\t+)\s*(?P<value>.*)$"
)
_FREE_TEXT = frozenset({"address", "came_from", "contact", "symptoms"})


def fields_from_lines(text: str) -> list[Fields]:
    """``Label: value`` lines -> one mapping per person (a repeated label starts the next one).

    A line without a label continues a long free-text value wrapped by the sender's client.
    """
    people: list[Fields] = []
    current: Fields = {}
    last: str | None = None
    previous_line = ""
    awaiting: str | None = None  # a label written alone, its value on the next line
    for line in text.split("\n"):
        match = _LINE.match(line)
        name = field_for_label(match["label"]) if match else None
        if awaiting and match is None and line.strip() and field_for_label(line) is None:
            current[awaiting] = line.strip()
            awaiting, last, previous_line = None, None, line
            continue
        awaiting = None
        if match and name:
            if name in current:
                people.append(current)
                current = {}
            current[name] = match["value"].strip().strip("\t")
            last = name
            awaiting = name if not current[name] else None
        elif (
            last in _FREE_TEXT
            and line.strip()
            and len(previous_line) >= 60
            and current.get(last or "")
            and match is None
        ):
            current[last or ""] += " " + line.strip()
        else:
            last = None if not line.strip() or match else last
        previous_line = line
    if current:
        people.append(current)
    return people


@dataclass(slots=True)
class _Content:
    """The bodies and tables of one message (the top one or an attached/forwarded one)."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    people: list[Fields] = field(default_factory=list)
    nested: list[Message] = field(default_factory=list)


def _filename(part: Message) -> str:
    try:
        return fold(str(part.get_filename() or ""))
    except Exception:
        return ""


def _read_table(part: Message, ctype: str, name: str, content: _Content, walk: _Walk) -> bool:
    """Read an ``.xlsx``/``.csv`` attachment into ``content``; False when it is neither."""
    is_xlsx = ctype in _XLSX_TYPES or name.endswith((".xlsx", ".xlsm"))
    is_csv = ctype in _CSV_TYPES or name.endswith(".csv")
    if not (is_xlsx or is_csv):
        return False
    data = _payload_bytes(part)
    if len(data) > MAX_TABLE_BYTES:
        walk.problem(f"attachment {name or ctype} skipped: {len(data)} bytes")
        return True
    try:
        if is_xlsx:
            content.people.extend(fields_from_xlsx(data))
        else:
            content.people.extend(fields_from_csv(data, part.get_content_charset()))
    except TableError as exc:
        walk.problem(str(exc))
    return True


def _leaves(message: Message, walk: _Walk, depth: int) -> Iterator[tuple[Message, int]]:
    """Non-multipart parts (and embedded messages) of one message, bounded."""
    stack: list[tuple[Message, int]] = [(message, depth)]
    while stack:
        part, level = stack.pop()
        walk.parts_seen += 1
        if walk.parts_seen > MAX_PARTS:
            walk.problem(f"more than {MAX_PARTS} MIME parts: the rest ignored")
            return
        if level > MAX_DEPTH:
            walk.problem(f"MIME nesting deeper than {MAX_DEPTH}: the rest ignored")
            continue
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            walk.delivery_status = True
        if part.is_multipart() and not ctype.startswith("message/"):
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, level + 1) for child in reversed(children) if isinstance(child, Message)
                )
            continue
        yield part, level


def _collect(
    message: Message, walk: _Walk, depth: int
) -> tuple[_Content, list[tuple[Message, int]]]:
    content = _Content()
    nested: list[tuple[Message, int]] = []
    for part, level in _leaves(message, walk, depth):
        ctype = part.get_content_type()
        name = _filename(part)
        try:
            if ctype in {"message/rfc822", "message/global"}:
                inner = part.get_payload()
                if isinstance(inner, list):
                    embedded = [child for child in inner if isinstance(child, Message)]
                    nested.extend((child, level + 1) for child in embedded)
            elif _read_table(part, ctype, name, content, walk):
                continue
            elif name.endswith(".eml"):
                nested.append((email.message_from_bytes(_payload_bytes(part)), level + 1))
            elif ctype == "text/plain" and part.get_content_disposition() != "attachment":
                content.plain.append(_part_text(part, walk))
            elif ctype == "text/html" and part.get_content_disposition() != "attachment":
                content.html.append(_part_text(part, walk))
        except Exception as exc:  # one damaged part must not hide the others
            walk.problem(f"{ctype} part unreadable: {type(exc).__name__}")
    return content, nested


def _cut_html_at_marker(html: str) -> str:
    """HTML above the tracker's reply marker (searched in the raw markup)."""
    positions = [
        position
        for position in (
            html.lower().find("reply above this line"),
            unicodedata.normalize("NFC", html).lower().find("trả lời phía trên dòng này"),
        )
        if position >= 0
    ]
    return html[: min(positions)] if positions else html


def _reports_of(content: _Content) -> list[Report]:
    """Reports of one message: HTML tables, else labelled lines (plain, else HTML), plus tables."""
    html = [_cut_html_at_marker(body) for body in content.html]
    reports = _built(fields for body in html for fields in fields_from_html(body))
    if not any(reports):
        plain = [_cut_at_marker(body) for body in content.plain]
        reports = _built(fields for body in plain for fields in fields_from_lines(body))
    if not any(reports):
        texts = [_cut_at_marker(html_to_text(body)) for body in html]
        reports = _built(fields for text in texts for fields in fields_from_lines(text))
    return [report for report in [*reports, *_built(content.people)] if report is not None]


def _built(candidates: Iterable[Fields]) -> list[Report | None]:
    return [build_report(fields) for fields in candidates]


def _extract(message: Message, walk: _Walk) -> list[Report]:
    """Reports of a message and of every message forwarded inside it, without duplicates."""
    found: dict[Report, None] = {}
    queue: list[tuple[Message, int]] = [(message, 0)]
    while queue and len(found) < MAX_REPORTS:
        current, depth = queue.pop(0)
        if depth > MAX_DEPTH:
            walk.problem(f"forwards nested deeper than {MAX_DEPTH}: the rest ignored")
            continue
        content, nested = _collect(current, walk, depth)
        for report in _reports_of(content):
            found.setdefault(report, None)
        queue.extend(nested)
    return list(found)[:MAX_REPORTS]


# --- replies ---------------------------------------------------------------------------------


def _reply_text(message: Message, walk: _Walk) -> tuple[str | None, str | None]:
    """The first plain and first HTML body of the message itself (not of attachments)."""
    content, _ = _collect(message, walk, 0)
    return (
        content.plain[0] if content.plain else None,
        content.html[0] if content.html else None,
    )


def _commands(
    message: Message, walk: _Walk, *, subject: str, prefix: str, today: dt.date
) -> tuple[tuple[Command, ...], tuple[str, ...]]:
    from mailtracker.domain.commands import parse_reply  # type: ignore[attr-defined,unused-ignore]
    from mailtracker.parsing.reply import extract_reply_text  # type: ignore[import-not-found,unused-ignore]

    plain, html = _reply_text(message, walk)
    text = extract_reply_text(plain, html)
    parsed = parse_reply(text, subject=subject, prefix=prefix, today=today)
    return tuple(parsed.commands), tuple(parsed.not_understood)


# --- entry point -----------------------------------------------------------------------------


def _load(raw: bytes, walk: _Walk) -> Message:
    if len(raw) > MAX_MESSAGE_BYTES:
        walk.problem(f"message cut at {MAX_MESSAGE_BYTES} bytes")
        raw = raw[:MAX_MESSAGE_BYTES]
    try:
        parsed = mailparser.parse_from_bytes(raw)
        message = parsed.message
        if isinstance(message, Message):
            return message
    except Exception as exc:  # mail-parser gives up on some damaged mail; the stdlib does not
        walk.problem(f"MIME parser fallback: {type(exc).__name__}")
    return email.message_from_bytes(raw)


def parse_message(
    raw: bytes,
    *,
    case_prefix: str = "QN",
    timezone: ZoneInfo = DEFAULT_TIMEZONE,
) -> ParsedMessage:
    """Classify one raw e-mail and extract its reports or reply commands. Never raises."""
    walk = _Walk()
    facts: dict[str, Any] = {}
    try:
        message = _load(bytes(raw), walk)
        subject = _header(message, "Subject") or ""
        sender_list = _addresses(message, "From")
        facts = {
            "message_id": next(iter(_message_ids(_header(message, "Message-ID"))), None),
            "subject": subject,
            "sender": sender_list[0] if sender_list else None,
            "date": _date_header(message),
            "in_reply_to": _message_ids(
                _header(message, "In-Reply-To"), _header(message, "References")
            ),
            "recipients": _addresses(message, "To", "Cc", "Delivered-To"),
        }
        kind, reports, commands, not_understood = _classify(
            message, walk, facts, case_prefix=case_prefix, timezone=timezone
        )
        return ParsedMessage(
            kind=kind,
            reports=tuple(reports),
            commands=commands,
            not_understood=not_understood,
            error="; ".join(walk.problems) or None,
            **facts,
        )
    except Exception as exc:  # the boundary: whatever happened, keep what was read
        walk.problem(f"unreadable message: {type(exc).__name__}: {exc}"[:300])
        return ParsedMessage(kind="unknown", error="; ".join(walk.problems), **facts)


def _classify(
    message: Message,
    walk: _Walk,
    facts: dict[str, Any],
    *,
    case_prefix: str,
    timezone: ZoneInfo,
) -> tuple[Kind, list[Report], tuple[Command, ...], tuple[str, ...]]:
    subject: str = facts["subject"]
    scan = _Walk()
    for _ in _leaves(message, scan, 0):
        pass
    # A DSN is usually Auto-Submitted too: the delivery status decides first.
    if _is_bounce(message, scan, facts["sender"]):
        return "bounce", [], (), ()
    if _robot_reply(message, subject):
        return "auto", [], (), ()
    reports = _extract(message, walk)
    if reports:
        return "notification", reports, (), ()
    if _automatic(message):
        return "auto", [], (), ()
    if not _looks_like_reply(message, subject):
        return "unknown", [], (), ()
    sent: dt.datetime | None = facts["date"] or _received_date(message)
    today = sent.astimezone(timezone).date() if sent else dt.datetime.now(timezone).date()
    try:
        commands, not_understood = _commands(
            message, walk, subject=subject, prefix=case_prefix, today=today
        )
    except ImportError as exc:
        walk.problem(f"reply commands not read: {exc}")
        return "reply", [], (), ()
    return "reply", [], commands, not_understood
