"""Replies by e-mail: staff change cases by answering a digest, an alert or an acknowledgement.

For one stored message of kind ``reply`` (:meth:`ReplyService.handle`, plugged into
``Ingestor(reply_handler=...)``):

1. automatic mail (``domain.loops``) is recorded and otherwise ignored;
2. a reply already handled under the same Message-ID (another mailbox, another UID) is
   recorded as a duplicate and ignored;
3. the signed token (plus-address or Message-ID) is verified; without a valid one every line
   is refused and recorded;
4. each line of the new text goes through ``CaseService.apply_line`` (authorization,
   transition and history live there);
5. a staff sender gets one acknowledgement, threaded, rate-limited, queued in the outbox.
"""

from __future__ import annotations

import datetime as dt
import email
import email.parser
import email.policy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailtracker.config import Config, Language, UnitSettings
from mailtracker.domain.authz import normalize_address
from mailtracker.domain.commands import Command, parse_command_line, subject_ref
from mailtracker.domain.loops import ACK_LIMIT, ACK_WINDOW, ack_allowed, is_automatic
from mailtracker.domain.notices import AckLine, AckModel
from mailtracker.domain.tokens import (
    TokenCheck,
    find_token,
    make_token,
    token_message_id,
    verify_token,
)
from mailtracker.domain.workflow import STATUSES, Status
from mailtracker.mail.compose import compose, new_nonce
from mailtracker.mail.outbox import enqueue
from mailtracker.parsing.message import ParsedMessage
from mailtracker.parsing.reply import extract_reply_text
from mailtracker.parsing.tables import decode_text
from mailtracker.render import render_ack
from mailtracker.services.alerts import queue_followup_alert
from mailtracker.services.cases import CaseService, LineOutcome
from mailtracker.services.outgoing import smtp_settings, token_key, unit_reply_to
from mailtracker.store.models import Message, OutboxMessage, ReplyLog

log = logging.getLogger(__name__)

ACK_TOKEN = "r"
ACK_PREFIX = "ack:"
MAX_LINES = 100
MAX_THREAD_IDS = 10
_MESSAGE_ID = re.compile(r"[^<>\s@]{1,200}@[^<>\s@]{1,200}")

AckStatus = Literal[
    "queued", "already_queued", "rate_limited", "not_staff", "no_sender", "not_sent", "ignored"
]
TokenProblem = Literal["missing", "malformed", "bad_signature", "expired"]


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """What handling one reply did.

    ``ignored`` names why nothing was considered at all (``automatic: <reason>``,
    ``duplicate of message N``); ``token_problem`` why every line was refused; ``alerts`` the
    cases whose follow-up with symptoms queued an urgent alert.
    """

    message_id: int
    ignored: str | None = None
    token_unit: str | None = None
    token_problem: TokenProblem | None = None
    lines: tuple[AckLine, ...] = ()
    ack: AckStatus = "ignored"
    alerts: tuple[str, ...] = ()

    @property
    def applied(self) -> int:
        return sum(line.applied for line in self.lines)


@dataclass(frozen=True, slots=True)
class _Token:
    unit: str | None
    problem: TokenProblem | None
    expired_on: dt.date | None = None


def reply_bodies(raw: bytes) -> tuple[str | None, str | None]:
    """The plain and HTML bodies of a message (not of its attachments), decoded."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    bodies: list[str | None] = []
    for subtype in ("plain", "html"):
        part = (
            message.get_body(preferencelist=(subtype,))
            if isinstance(message, EmailMessage)
            else None
        )
        if part is None or part.get_content_subtype() != subtype:
            bodies.append(None)
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        bodies.append(decode_text(data, part.get_content_charset()))
    return bodies[0], bodies[1]


def _thread_id(value: str | None) -> str | None:
    """``<value>`` when it is a plausible Message-ID, else None (nothing raw reaches a header)."""
    if value is None or not _MESSAGE_ID.fullmatch(value):
        return None
    return f"<{value}>"


class ReplyService:
    """Applies the commands of replies and acknowledges them."""

    def __init__(
        self,
        config: Config,
        case_service: CaseService | None = None,
        *,
        ack_limit: int = ACK_LIMIT,
        ack_window: dt.timedelta = ACK_WINDOW,
    ) -> None:
        self.config = config
        self.cases = case_service if case_service is not None else CaseService(config)
        self.ack_limit = ack_limit
        self.ack_window = ack_window
        self.tz = config.tracker.timezone
        sender = normalize_address(config.smtp.sender) if config.smtp is not None else ""
        self.own_addresses = (sender,) if sender else ()

    def __call__(
        self, session: Session, message: Message, parsed: ParsedMessage, now: dt.datetime
    ) -> None:
        """The ``Ingestor`` reply hook."""
        self.handle(session, message, parsed, now=now)

    def handle(
        self, session: Session, message: Message, parsed: ParsedMessage, *, now: dt.datetime
    ) -> ReplyResult:
        """Handle one stored reply inside the caller's transaction (never commits)."""
        raw = message.raw or b""
        sender = normalize_address(parsed.sender or "")
        reason = is_automatic(_headers(raw), own_addresses=self.own_addresses)
        automatic = reason or (parsed.kind if parsed.kind in ("auto", "bounce") else None)
        if automatic is not None:
            return self._ignore(session, message, sender, f"automatic: {automatic}", now)
        duplicate = self._duplicate_of(session, message)
        if duplicate is not None:
            return self._ignore(session, message, sender, f"duplicate of message {duplicate}", now)
        token = self._token(parsed, now)
        unit = self._sender_unit(sender, token.unit)
        language = unit.language if unit is not None else self.config.tracker.language
        texts = self._lines(raw)
        if len(texts) > MAX_LINES:
            self._log(session, message, sender, f"only the first {MAX_LINES} lines were read", now)
            texts = texts[:MAX_LINES]
        if token.problem is None:
            outcomes = self._apply(session, message, parsed, sender, token.unit, texts, now)
        else:
            outcomes = self._refuse_all(session, message, parsed, sender, token, texts, now)
        alerts = tuple(
            outcome.ref
            for outcome in outcomes
            if outcome.alert
            and outcome.ref is not None
            and queue_followup_alert(session, self.config, outcome.ref, now)
        )
        lines = tuple(self._ack_line(outcome, language) for outcome in outcomes)
        if not lines:
            self._log(session, message, sender, "no command in the reply", now)
        ack = self._acknowledge(session, message, parsed, sender, unit, lines, now)
        log.info(
            "reply %d: %d line(s), %d applied, token %s, acknowledgement %s",
            message.id,
            len(lines),
            sum(line.applied for line in lines),
            token.problem or "valid",
            ack,
        )
        return ReplyResult(
            message_id=message.id,
            token_unit=token.unit,
            token_problem=token.problem,
            lines=lines,
            ack=ack,
            alerts=alerts,
        )

    # -- recognising -----------------------------------------------------------------------

    def _ignore(
        self, session: Session, message: Message, sender: str, reason: str, now: dt.datetime
    ) -> ReplyResult:
        self._log(session, message, sender, reason, now)
        log.info("reply %d ignored (%s)", message.id, reason.split(" ")[0].rstrip(":"))
        return ReplyResult(message_id=message.id, ignored=reason)

    def _log(
        self, session: Session, message: Message, sender: str, reason: str, now: dt.datetime
    ) -> None:
        session.add(
            ReplyLog(at=now, message_id=message.id, sender=sender or None, line=None, reason=reason)
        )

    def _duplicate_of(self, session: Session, message: Message) -> int | None:
        """A reply handled before with the same Message-ID (the same content when it has none):
        the same reply delivered to another mailbox, or again."""
        same = (
            Message.message_id == message.message_id
            if message.message_id is not None
            else Message.content_hash == message.content_hash
        )
        return session.scalar(
            select(Message.id)
            .where(
                same,
                Message.id != message.id,
                Message.kind == "reply",
                Message.processed_at.is_not(None),
                Message.quarantined.is_(False),
            )
            .order_by(Message.id)
            .limit(1)
        )

    def _token(self, parsed: ParsedMessage, now: dt.datetime) -> _Token:
        found = find_token(parsed.recipients, parsed.in_reply_to)
        if found is None:
            return _Token(None, "missing")
        max_age = dt.timedelta(days=self.config.tracker.reply_token_days)
        check = self._verify(found, now, max_age)
        if check.reason == "expired" and check.issued is not None:
            expired_on = (check.issued + max_age).astimezone(self.tz).date()
            return _Token(check.unit_id, "expired", expired_on)
        if not check.ok:
            return _Token(None, check.reason or "malformed")
        return _Token(check.unit_id, None)

    def _verify(self, token: str, now: dt.datetime, max_age: dt.timedelta) -> TokenCheck:
        """Check ``token`` against ``secret_key``, then each of ``previous_secret_keys``."""
        previous = self.config.tracker.previous_secret_keys
        check = verify_token(token, key=token_key(self.config), now=now, max_age=max_age)
        for secret in previous:
            if check.reason != "bad_signature":
                break
            key = secret.reveal().encode("utf-8")
            check = verify_token(token, key=key, now=now, max_age=max_age)
        return check

    def _sender_unit(self, sender: str, token_unit: str | None) -> UnitSettings | None:
        """The unit the sender acts for: the token's when on its staff, else their first."""
        units = [unit for unit in self.config.units if sender and sender in unit.staff]
        preferred = [unit for unit in units if unit.id == token_unit]
        return next(iter(preferred or units), None)

    def _lines(self, raw: bytes) -> list[str]:
        """The non-empty lines of the new text of the reply (quotes and signature cut)."""
        plain, html = reply_bodies(raw)
        text = extract_reply_text(plain, html)
        return [line for line in text.splitlines() if any(ch.isalnum() for ch in line)]

    def _today(self, parsed: ParsedMessage, now: dt.datetime) -> dt.date:
        return (parsed.date or now).astimezone(self.tz).date()

    # -- applying --------------------------------------------------------------------------

    def _apply(
        self,
        session: Session,
        message: Message,
        parsed: ParsedMessage,
        sender: str,
        token_unit: str | None,
        texts: Sequence[str],
        now: dt.datetime,
    ) -> list[LineOutcome]:
        default_ref = subject_ref(parsed.subject, self.config.tracker.case_prefix)
        today = self._today(parsed, now)
        return [
            self.cases.apply_line(
                session,
                text,
                actor=sender,
                channel="email",
                now=now,
                today=today,
                default_ref=default_ref,
                token_unit=token_unit,
                message_id=message.id,
            )
            for text in texts
        ]

    def _refuse_all(
        self,
        session: Session,
        message: Message,
        parsed: ParsedMessage,
        sender: str,
        token: _Token,
        texts: Sequence[str],
        now: dt.datetime,
    ) -> list[LineOutcome]:
        """Every line refused for the token's problem, recorded on the case it names."""
        prefix = self.config.tracker.case_prefix
        default_ref = subject_ref(parsed.subject, prefix)
        today = self._today(parsed, now)
        vi, en = _token_messages(token)
        outcomes = []
        for text in texts:
            command = parse_command_line(text, prefix=prefix, today=today, default_ref=default_ref)
            named = command if isinstance(command, Command) else None
            outcomes.append(
                self.cases.refuse_line(
                    session,
                    text.strip(),
                    ref=named.ref if named else None,
                    action=named.action if named else None,
                    code=f"token_{token.problem}",
                    message_vi=vi,
                    message_en=en,
                    actor=sender or (parsed.sender or "unknown"),
                    channel="email",
                    now=now,
                    message_id=message.id,
                )
            )
        if not texts:
            self._log(session, message, sender, f"token_{token.problem}: {en}", now)
        return outcomes

    def _ack_line(self, outcome: LineOutcome, language: Language) -> AckLine:
        deadline = outcome.deadline_at
        if isinstance(deadline, dt.datetime):
            deadline = deadline.astimezone(self.tz)
        return AckLine(
            line=outcome.line,
            applied=outcome.applied,
            ref=outcome.ref,
            action=outcome.action,
            status=_status(outcome.status) if outcome.applied else None,
            deadline=deadline if outcome.applied else None,
            reason=None if outcome.applied else outcome.message(language),
        )

    # -- acknowledging ---------------------------------------------------------------------

    def _acknowledge(
        self,
        session: Session,
        message: Message,
        parsed: ParsedMessage,
        sender: str,
        unit: UnitSettings | None,
        lines: tuple[AckLine, ...],
        now: dt.datetime,
    ) -> AckStatus:
        """Queue the acknowledgement: only to a staff address, once, within the rate limit."""
        if not sender:
            return "no_sender"
        if unit is None:
            self._log(session, message, sender, "no acknowledgement: sender is not staff", now)
            return "not_staff"
        recent = self._recent_acks(session, sender, now)
        if not ack_allowed(recent, now=now, limit=self.ack_limit, window=self.ack_window):
            self._log(
                session,
                message,
                sender,
                f"rate_limited: more than {self.ack_limit} acknowledgements within "
                f"{self.ack_window}; none sent",
                now,
            )
            return "rate_limited"
        if self.config.smtp is None:
            self._log(session, message, sender, "no acknowledgement: no [smtp] section", now)
            return "not_sent"
        raw = self._compose_ack(parsed, sender, unit, lines, now)
        queued = enqueue(
            session, dedup_key=f"{ACK_PREFIX}{message.id}", recipients=[sender], raw=raw, now=now
        )
        return "queued" if queued else "already_queued"

    def _recent_acks(self, session: Session, sender: str, now: dt.datetime) -> list[dt.datetime]:
        rows = session.execute(
            select(OutboxMessage.created_at, OutboxMessage.recipients).where(
                OutboxMessage.dedup_key.startswith(ACK_PREFIX),
                OutboxMessage.created_at > now - self.ack_window,
            )
        )
        return [created for created, recipients in rows if sender in (recipients or [])]

    def _compose_ack(
        self,
        parsed: ParsedMessage,
        sender: str,
        unit: UnitSettings,
        lines: tuple[AckLine, ...],
        now: dt.datetime,
    ) -> bytes:
        """The acknowledgement with a fresh token of the sender's unit, threaded on the reply."""
        smtp = smtp_settings(self.config)
        mail = render_ack(
            AckModel(language=unit.language, unit_name=unit.name, lines=lines),
            prefix=self.config.tracker.case_prefix,
        )
        token = make_token(unit.id, key=token_key(self.config), issued=now, kind=ACK_TOKEN)
        reply_id = _thread_id(parsed.message_id)
        earlier = [ref for ref in map(_thread_id, parsed.in_reply_to) if ref is not None]
        references = [*earlier[-(MAX_THREAD_IDS - 1) :], *([reply_id] if reply_id else [])]
        return compose(
            sender=smtp.sender,
            to=[sender],
            subject=mail.subject,
            text=mail.text,
            html=mail.html,
            reply_to=unit_reply_to(unit, token),
            message_id=token_message_id(token, _domain(smtp.sender), nonce=new_nonce()),
            auto_submitted="auto-replied",
            in_reply_to=reply_id,
            references=references,
            date=now,
        )


def _headers(raw: bytes) -> list[tuple[str, str]]:
    headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        raw, headersonly=True
    )
    return [(name, str(value)) for name, value in headers.items()]


def _domain(address: str) -> str:
    domain = parseaddr(address)[1].rpartition("@")[2].lower()
    return domain if re.fullmatch(r"[a-z0-9.-]+", domain) else "mailtracker.invalid"


def _status(value: str | None) -> Status | None:
    return next((status for status in STATUSES if status == value), None)


def _token_messages(token: _Token) -> tuple[str, str]:
    """Why every line of a reply without a valid token is refused, in Vietnamese and English."""
    if token.problem == "expired" and token.expired_on is not None:
        day = token.expired_on.strftime("%d/%m/%Y")
        return (
            f"liên kết trả lời đã hết hạn ngày {day}; hãy trả lời một bản tin mới hơn",
            f"the reply link expired on {day}; reply to a newer digest",
        )
    if token.problem == "missing":
        return (
            "thư không trả lời một thư của hệ thống (không có mã xác thực); hãy bấm Trả lời "
            "trên bản tin hoặc cảnh báo",
            "the mail does not answer a message of the tracker (no reply token); use Reply "
            "on a digest or alert",
        )
    return (
        "mã xác thực của thư trả lời không hợp lệ; hãy trả lời một bản tin mới hơn",
        "the reply token is not valid; reply to a newer digest",
    )
