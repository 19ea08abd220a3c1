"""Fault-test support: the invariants of "What must never happen" as one checker over the
database and the captured SMTP traffic, plus a configuration and a ``mailtracker run``
subprocess that the fault tests start, kill and restart.

``check_invariants`` returns a list of violations (empty when every invariant holds), so a test
asserts ``check_invariants(...) == []`` and a failure lists everything that went wrong at once.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.parser
import email.policy
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from servers import ImapServer
from smtp_capture import Captured
from sqlalchemy import select

from mailtracker.store.db import open_database
from mailtracker.store.models import (
    Case,
    CaseEvent,
    CaseSource,
    DigestSent,
    Message,
    OutboxMessage,
)

SECRET = "fault-test-secret"
STAFF = "staff@cdc.example.org"
INBOX = "cdc-inbox@example.org"


def _bare_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text or None


def outgoing_id(raw: bytes) -> str | None:
    """The Message-ID of a message, without angle brackets."""
    headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        raw, headersonly=True
    )
    return _bare_id(headers.get("Message-ID"))


@dataclass(frozen=True)
class Expected:
    """What a fault test put in: the Message-IDs delivered to the mailboxes (each must be
    stored exactly once), the report ids that must each be one case, and for each reply
    Message-ID the number of its lines that must be applied."""

    delivered: Collection[str] = ()
    report_ids: Collection[str] = ()
    replies: Mapping[str, int] | None = None


def check_invariants(
    database_url: str,
    smtp_messages: Sequence[Captured],
    expected: Expected = Expected(),
    *,
    settled: bool = True,
    allow_failed_sends: bool = False,
) -> list[str]:
    """Every violation of the never-happen list found in the database at ``database_url`` and
    in ``smtp_messages`` (everything the test SMTP server accepted).

    ``settled``: the daemon had time to finish, so every stored message is processed and every
    expected reply acknowledged. ``allow_failed_sends``: an outbox row given up for good (a
    permanent SMTP refusal) is expected rather than a loss.
    """
    violations: list[str] = []
    db = open_database(database_url, upgrade=False)
    try:
        with db.session(read_only=True) as session:
            messages = list(session.scalars(select(Message).order_by(Message.id)))
            cases = list(session.scalars(select(Case).order_by(Case.id)))
            sources = list(session.scalars(select(CaseSource)))
            events = list(session.scalars(select(CaseEvent).order_by(CaseEvent.id)))
            outbox = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
            digests = list(session.scalars(select(DigestSent)))
    finally:
        db.dispose()

    # -- messages: stored once, none lost, each processed -------------------------------------
    by_identity = collections.Counter(
        (m.mailbox, m.message_id, m.content_hash) for m in messages if m.message_id is not None
    )
    violations += [
        f"message {identity[1]!r} stored {n} times in {identity[0]}"
        for identity, n in by_identity.items()
        if n > 1
    ]
    stored_ids = collections.Counter(m.message_id for m in messages)
    for message_id in expected.delivered:
        if stored_ids[message_id] != 1:
            violations.append(f"delivered message {message_id!r} stored {stored_ids[message_id]}x")
    for message in messages:
        if message.raw is None and not message.quarantined and message.processed_at is None:
            violations.append(f"message {message.id} lost its content before processing")
        if message.quarantined and not message.error:
            violations.append(f"message {message.id} quarantined without a reason")
        if settled and message.processed_at is None:
            violations.append(f"message {message.id} never processed")

    # -- cases: one per person, one source per report -----------------------------------------
    source_keys = collections.Counter((s.message_id, s.report_index) for s in sources)
    violations += [
        f"report {index} of message {message_id} attached {n} times"
        for (message_id, index), n in source_keys.items()
        if n > 1
    ]
    open_by_report = collections.Counter(
        c.report_id for c in cases if c.report_id and c.status != "closed"
    )
    violations += [f"{n} open cases for report {r!r}" for r, n in open_by_report.items() if n > 1]
    all_by_report = collections.Counter(c.report_id for c in cases)
    for report_id in expected.report_ids:
        if all_by_report[report_id] != 1:
            violations.append(f"report {report_id!r} gave {all_by_report[report_id]} case(s)")
    created = collections.Counter(e.case_id for e in events if e.action == "created")
    violations += [f"case {c.ref} created {created[c.id]}x" for c in cases if created[c.id] != 1]

    # -- reply commands: each line applied (or refused) once ----------------------------------
    by_db_id = {m.id: m for m in messages}
    line_events = collections.Counter(
        (e.message_id, str(e.details.get("line")))
        for e in events
        if e.channel == "email" and e.message_id is not None
    )
    violations += [
        f"reply line {line!r} of message {message_id} recorded {n} times"
        for (message_id, line), n in line_events.items()
        if n > 1
    ]
    if expected.replies is not None:
        applied = collections.Counter(
            by_db_id[e.message_id].message_id
            for e in events
            if e.channel == "email" and e.action != "refused" and e.message_id in by_db_id
        )
        for reply_id, lines in expected.replies.items():
            if settled and applied[reply_id] != lines:
                violations.append(
                    f"reply {reply_id!r}: {applied[reply_id]} line(s) applied, {lines} expected"
                )

    # -- outgoing mail: queued once, sent once, never lost ------------------------------------
    keys = {row.dedup_key for row in outbox}
    if settled and expected.replies is not None:
        for reply_id in expected.replies:
            stored = [m for m in messages if m.message_id == reply_id]
            if stored and f"ack:{stored[0].id}" not in keys:
                violations.append(f"reply {reply_id!r} was never acknowledged")
    rows_by_id = {outgoing_id(row.raw): row for row in outbox}
    # A message may reach its recipients in several deliveries (some deferred): once each.
    deliveries = collections.Counter(
        (outgoing_id(m.raw), recipient) for m in smtp_messages for recipient in m.rcpt_tos
    )
    for (sent_id, recipient), n in deliveries.items():
        row = rows_by_id.get(sent_id)
        what = row.dedup_key if row is not None else str(sent_id)
        if n > 1:
            violations.append(f"{what} sent {n} times to {recipient}")
    captured_ids = {outgoing_id(m.raw) for m in smtp_messages}
    violations += [
        f"sent message {sent_id!r} is not in the outbox"
        for sent_id in sorted(captured_ids - rows_by_id.keys(), key=str)
    ]
    for row in outbox:
        row_id = outgoing_id(row.raw)
        if row.sent_at is not None and row_id is not None and row_id not in captured_ids:
            violations.append(f"{row.dedup_key} marked sent but never reached the server")
        given_up = row.sent_at is None and row.next_attempt_at is None
        if given_up and not allow_failed_sends:
            violations.append(f"{row.dedup_key} given up: {row.last_error}")
        if given_up and not row.last_error:
            violations.append(f"{row.dedup_key} given up without an error recorded")
    digest_days = collections.Counter((d.unit_id, d.date) for d in digests)
    violations += [f"digest {k} recorded {n} times" for k, n in digest_days.items() if n > 1]
    for digest in digests:
        if f"digest:{digest.unit_id}:{digest.date.isoformat()}" not in keys and not any(
            row.id == digest.outbox_id for row in outbox
        ):
            violations.append(f"digest of {digest.unit_id} for {digest.date} not in the outbox")
    return violations


# -- a daemon to kill ------------------------------------------------------------------------


def write_config(
    directory: Path,
    dovecot: ImapServer,
    smtp_port: int,
    *,
    staff: Sequence[str] = (STAFF,),
    database: str | None = None,
    extra_tracker: Sequence[str] = (),
) -> tuple[Path, dict[str, str]]:
    """One lead unit ``cdc`` with one mailbox on ``dovecot``, SMTP on ``smtp_port``; its
    ``digest_at`` (midnight UTC) has always passed, so each start owes today's digest.
    Returns the file and the environment holding its secrets."""
    if INBOX not in dovecot.passwords:
        dovecot.add_user(INBOX, "pw-cdc")
    env = {"MT_FAULT_SECRET": SECRET, "MT_FAULT_IMAP": dovecot.passwords[INBOX]}
    url = database or f"sqlite:///{directory / 'tracker.db'}"
    lines = [
        "[tracker]",
        f'database = "{url}"',
        'timezone = "Etc/UTC"',
        'case_prefix = "QN"',
        'secret_key = "env:MT_FAULT_SECRET"',
        *extra_tracker,
        "",
        "[smtp]",
        'host = "127.0.0.1"',
        f"port = {smtp_port}",
        'security = "none"',
        'from = "Mailtracker QN <tracker@example.org>"',
        "",
        "[[units]]",
        'id = "cdc"',
        'name = "Unit cdc"',
        'role = "lead"',
        'language = "vi"',
        f"staff = {list(staff)!r}".replace("'", '"'),
        f'digest_to = ["{staff[0]}"]',
        'digest_at = "00:00"',
        "",
        "  [[units.mailboxes]]",
        f'  host = "{dovecot.host}"',
        f"  port = {dovecot.port}",
        '  security = "none"',
        f'  username = "{INBOX}"',
        '  password = "env:MT_FAULT_IMAP"',
        "  idle = true",
        '  poll_every = "2s"',
        "",
    ]
    path = directory / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, env


def wait_until(condition: collections.abc.Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 0.1 s for up to ``timeout`` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
