"""The reply engine on a real database: replies as mail clients write them, every refusal,
loops, duplicates and the acknowledgement rate limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest
from reply_support import (
    DOC,
    EPI,
    NOW,
    OBSERVER,
    SECRET,
    SENT,
    TRACKER,
    Client,
    bare,
    case,
    make_config,
    outbox,
    read,
    reply,
    seed_cases,
    text_of,
)
from sqlalchemy import select

from mailtracker.domain.tokens import find_token, verify_token
from mailtracker.parsing.message import parse_message
from mailtracker.services.digest import DigestService
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import CaseEvent, Message, ReplyLog


@dataclass
class World:
    db: Database
    ingestor: Ingestor
    service: ReplyService
    digests: DigestService

    def digest(self, unit_id: str, *, now: dt.datetime = NOW) -> bytes:
        """The unit's digest for the day of ``now``, queued as the tracker sends it."""
        day = now.astimezone(self.ingestor.config.tracker.timezone).date()
        assert self.digests.send(unit_id, day, now)
        return outbox(self.db, f"digest:{unit_id}:{day}")[0].raw

    def deliver(self, raw: bytes, unit_id: str = "cdc", *, now: dt.datetime = NOW) -> Message:
        """Store ``raw`` as received by ``unit_id``'s mailbox and process it."""
        self.ingestor.import_messages(unit_id, [("reply", raw)], now=now)
        self.ingestor.process_pending(now=now)
        with self.db.session(read_only=True) as session:
            return session.scalars(select(Message).order_by(Message.id.desc())).first()  # type: ignore[return-value]

    def acks(self) -> list[bytes]:
        return [row.raw for row in outbox(self.db, "ack:")]

    def log(self) -> list[ReplyLog]:
        with self.db.session(read_only=True) as session:
            return list(session.scalars(select(ReplyLog).order_by(ReplyLog.id)))

    def events(self, ref: str) -> list[CaseEvent]:
        return [e for e in case(self.db, ref).events if e.action != "created"]


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    config = make_config(database_url)
    db = open_database(database_url)
    service = ReplyService(config)
    ingestor = Ingestor(db, config, reply_handler=service)
    seed_cases(ingestor)
    yield World(db, ingestor, service, DigestService(config, db, attach_xlsx=False))
    db.dispose()


def untouched(world: World, *refs: str) -> None:
    for ref in refs:
        found = case(world.db, ref)
        assert found.status == "new", ref
        assert [e.action for e in found.events if e.action not in ("created", "refused")] == [], ref


# -- clients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["gmail", "outlook", "html"])
def test_a_reply_quoting_the_digest_applies_its_own_lines_only(
    world: World, client: Client
) -> None:
    digest = world.digest("cdc")
    digest_text = text_of(read(digest))
    assert "QN-0001" in digest_text and "QN-0002" in digest_text  # quoted below the reply
    raw = reply(
        digest,
        "QN-1 cách ly tại nhà 10/02/2020\nqn0002 theo dõi\nChào anh, em báo cáo như trên.",
        client=client,
    )
    message = world.deliver(raw)

    home = case(world.db, "QN-0001")
    assert home.status == "home_isolation"
    assert home.period_start == dt.date(2020, 2, 10)
    assert home.period_end == dt.date(2020, 2, 24)
    assert case(world.db, "QN-0002").status == "monitoring"
    untouched(world, "QN-0003")
    event = world.events("QN-0001")[0]
    assert (event.actor, event.channel, event.message_id) == (EPI, "email", message.id)

    [ack_raw] = world.acks()
    ack = read(ack_raw)
    assert bare(str(ack["To"])) == EPI
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["X-Mailtracker-Loop"]
    assert ack["In-Reply-To"] == f"<{message.message_id}>"
    assert f"<{message.message_id}>" in str(ack["References"])
    assert str(ack["Subject"]) == "[QN] Đã nhận: 2 áp dụng, 1 từ chối"
    body = text_of(ack)
    assert "✓ QN-1 cách ly tại nhà 10/02/2020" in body
    assert "cách ly tại nhà" in body and "24/02/2020" in body
    assert "✓ qn0002 theo dõi" in body
    assert "✗ Chào anh, em báo cáo như trên." in body
    assert "tiêu đề thư không nêu đúng một ca" in body
    token = find_token([str(ack["Reply-To"])], [str(ack["Message-ID"])])
    assert token is not None
    check = verify_token(token, key=SECRET.encode(), now=NOW, max_age=dt.timedelta(days=14))
    assert check.ok and check.unit_id == "cdc"
    assert bare(str(ack["Reply-To"])).startswith("cdc-inbox+t.")


def test_the_acknowledgement_can_itself_be_answered(world: World) -> None:
    world.deliver(reply(world.digest("cdc"), "QN-0001 home"))
    [ack] = world.acks()
    world.deliver(reply(ack, "QN-0001 check 36,8", date=SENT + dt.timedelta(hours=1)))
    followed = case(world.db, "QN-0001")
    assert [e.action for e in world.events("QN-0001")][-1] == "check"
    assert followed.last_followup_at is not None
    assert len(world.acks()) == 2


def test_subject_case_takes_lines_without_reference_and_free_text_becomes_a_note(
    world: World,
) -> None:
    digest = world.digest("cdc")
    raw = reply(
        digest,
        "cách ly tại nhà hôm qua\nĐã gọi điện, gia đình hợp tác tốt.",
        subject="Re: [QN-0002] Cảnh báo: nguy cơ cao",
    )
    world.deliver(raw, now=NOW + dt.timedelta(days=2))
    found = case(world.db, "QN-0002")
    assert found.status == "home_isolation"
    # "hôm qua" is read against the reply's Date (14/02), not the processing day (16/02).
    assert found.period_start == dt.date(2020, 2, 13)
    note = world.events("QN-0002")[-1]
    assert note.action == "note"
    assert "gia đình hợp tác" in str(note.details)
    untouched(world, "QN-0001")


def test_a_symptomatic_follow_up_queues_an_urgent_alert(world: World) -> None:
    digest = world.digest("cdc")
    world.deliver(reply(digest, "QN-0001 home"))
    world.deliver(reply(digest, "QN-0001 check 38,5 ho", date=SENT + dt.timedelta(minutes=5)))
    alerts = outbox(world.db, "alert:QN-0001:")
    assert len(alerts) == 1
    assert str(read(alerts[0].raw)["Subject"]).startswith("[QN-0001]")


def test_each_line_stands_alone(world: World) -> None:
    raw = reply(world.digest("cdc"), "QN-0001 release\nQN-0002 home 31/02/2020\nQN-0002 clear")
    world.deliver(raw)
    assert case(world.db, "QN-0001").status == "new"
    assert case(world.db, "QN-0002").outcome == "cleared"
    body = text_of(read(world.acks()[0]))
    assert body.count("✗") == 2 and body.count("✓") == 1
    refused = [e for e in world.events("QN-0001") if e.action == "refused"]
    assert refused and refused[0].details["line"] == "QN-0001 release"


# -- refusals -----------------------------------------------------------------------------------


def forged(sender: str, text: str, *, subject: str = "Re: [QN-0001]") -> bytes:
    """A message with no token at all, as anyone can write to the unit's mailbox."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "cdc-inbox@example.org"
    message["Subject"] = subject
    message["Date"] = format_datetime(SENT)
    message["Message-ID"] = make_msgid(domain="evil.example.net")
    message.set_content(text)
    return message.as_bytes()


def test_forged_from_without_token_changes_nothing_and_gets_nothing(world: World) -> None:
    world.deliver(forged("Boss <boss@evil.example.net>", "QN-0001 clear\nQN-0042 clear"))
    untouched(world, "QN-0001")
    refused = world.events("QN-0001")
    assert [e.details["code"] for e in refused] == ["token_missing"]
    assert refused[0].actor == "boss@evil.example.net"
    reasons = [row.reason for row in world.log()]
    assert any(r.startswith("token_missing") for r in reasons)  # QN-0042: no such case
    assert any("not staff" in r for r in reasons)
    assert world.acks() == []


def test_staff_address_without_token_is_refused_and_told_why(world: World) -> None:
    world.deliver(forged(EPI, "QN-0001 clear"))
    untouched(world, "QN-0001")
    [ack] = world.acks()
    assert bare(str(read(ack)["To"])) == EPI
    assert "không có mã xác thực" in text_of(read(ack))


def test_token_of_unit_a_used_by_staff_of_unit_b(world: World) -> None:
    raw = reply(world.digest("cdc"), "QN-0003 clear", sender=DOC)
    world.deliver(raw)
    untouched(world, "QN-0003")
    [event] = world.events("QN-0003")
    assert event.details["code"] == "not_staff"
    ack = read(world.acks()[0])
    assert bare(str(ack["To"])) == DOC
    body = text_of(ack)  # the sender's unit (med) reads English
    assert "is not on the staff of unit cdc" in body
    assert str(ack["Subject"]) == "[QN] Received: 0 applied, 1 refused"


def test_member_unit_only_changes_its_own_cases(world: World) -> None:
    raw = reply(world.digest("med"), "QN-0001 clear\nQN-0003 monitor", sender=DOC)
    world.deliver(raw, "med")
    untouched(world, "QN-0001")
    assert world.events("QN-0001")[0].details["code"] == "not_owner"
    assert case(world.db, "QN-0003").status == "monitoring"


def test_observer_changes_nothing(world: World) -> None:
    raw = reply(world.digest("soyte"), "QN-0001 clear", sender=OBSERVER)
    world.deliver(raw, "soyte")
    untouched(world, "QN-0001")
    assert world.events("QN-0001")[0].details["code"] == "observer"
    assert "chỉ được xem" in text_of(read(world.acks()[0]))


def test_expired_token_is_refused_with_the_day_it_expired(world: World) -> None:
    old_digest = world.digest("cdc", now=NOW - dt.timedelta(days=20))
    world.deliver(reply(old_digest, "QN-0001 clear"))
    untouched(world, "QN-0001")
    [event] = world.events("QN-0001")
    assert event.details["code"] == "token_expired"
    expired = (NOW - dt.timedelta(days=20) + dt.timedelta(days=14)).strftime("%d/%m/%Y")
    assert (
        f"the reply link expired on {expired}; reply to a newer digest" in event.details["reason"]
    )
    assert f"liên kết trả lời đã hết hạn ngày {expired}" in text_of(read(world.acks()[0]))


def test_tampered_token_is_refused(world: World) -> None:
    digest = world.digest("cdc")
    token = find_token([str(read(digest)["Reply-To"])], [])
    assert token is not None
    tampered = token[:-2] + ("ab" if not token.endswith("ab") else "cd")
    raw = reply(digest, "QN-0001 clear", to=f"cdc-inbox+t.{tampered}@example.org")
    headers, _, body = raw.partition(b"\n\n")
    kept = [h for h in headers.split(b"\n") if not h.startswith((b"In-Reply-To", b"References"))]
    world.deliver(b"\n".join(kept) + b"\n\n" + body)
    untouched(world, "QN-0001")
    assert world.events("QN-0001")[0].details["code"] == "token_bad_signature"
    assert "không hợp lệ" in text_of(read(world.acks()[0]))


# -- loops and automatic mail -------------------------------------------------------------------


def test_out_of_office_reply_is_ignored(world: World) -> None:
    raw = reply(
        world.digest("cdc"),
        "Tôi đang nghỉ phép đến 20/02. QN-0001 clear",
        subject="Trả lời tự động: [QN] Bản tin",
        headers={"Auto-Submitted": "auto-replied"},
    )
    message = world.deliver(raw)
    assert message.kind == "auto"
    untouched(world, "QN-0001")
    assert world.acks() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"Precedence": "bulk"},
        {"List-Id": "<staff.cdc.example.org>"},
        {"X-Mailtracker-Loop": "robot@other.example.net"},
    ],
)
def test_the_service_itself_ignores_automatic_mail(world: World, headers: dict[str, str]) -> None:
    """Even when handed a message classified as a reply, automatic mail changes nothing."""
    raw = reply(world.digest("cdc"), "QN-0001 clear", headers=headers)
    world.ingestor.import_messages("cdc", [("auto", raw)], now=NOW)
    parsed = parse_message(raw)
    with world.db.session() as session:
        message = session.scalars(select(Message).order_by(Message.id.desc())).first()
        assert message is not None
        result = world.service.handle(
            session,
            message,
            parsed.__class__(
                kind="reply",
                message_id=parsed.message_id,
                subject=parsed.subject,
                sender=parsed.sender,
                date=parsed.date,
                in_reply_to=parsed.in_reply_to,
                recipients=parsed.recipients,
            ),
            now=NOW,
        )
    assert result.ignored is not None and result.ignored.startswith("automatic")
    assert result.ack == "ignored"
    untouched(world, "QN-0001")
    assert world.acks() == []
    assert world.log()[-1].reason == result.ignored


def test_two_robots_cannot_loop(world: World) -> None:
    world.deliver(reply(world.digest("cdc"), "QN-0001 home"))
    [our_ack] = world.acks()
    # Another tracker's robot answers our acknowledgement, through the token it carries...
    robot = reply(
        our_ack,
        "[QN] Received: 0 applied, 1 refused\nQN-0001 release",
        headers={"Auto-Submitted": "auto-replied", "X-Mailtracker-Loop": "robot@other.example"},
    )
    world.deliver(robot)
    # ... and our own acknowledgement comes back to the mailbox.
    world.deliver(our_ack)
    assert case(world.db, "QN-0001").status == "home_isolation"
    assert len(world.acks()) == 1
    assert len(outbox(world.db)) == 2  # the digest and the one acknowledgement


# -- idempotence and rate limit -------------------------------------------------------------------


def test_the_same_reply_delivered_twice_applies_once(world: World) -> None:
    raw = reply(world.digest("cdc"), "QN-0001 check 36,8\nQN-0002 home")
    world.deliver(raw, "cdc")
    # The same reply again, in another unit's mailbox, with one more Received header.
    again = b"Received: from relay by mx2; Fri, 14 Feb 2020 07:21:00 +0700\r\n" + raw
    second = world.deliver(again, "med")
    world.deliver(raw, "soyte")
    assert [e.action for e in world.events("QN-0002")] == ["home"]
    assert len(world.acks()) == 1
    duplicates = [row for row in world.log() if row.reason.startswith("duplicate of message")]
    assert len(duplicates) == 2 and duplicates[0].message_id == second.id


def test_acknowledgements_are_rate_limited_per_sender(database_url: str) -> None:
    config = make_config(database_url)
    db = open_database(database_url)
    try:
        service = ReplyService(config, ack_limit=2)
        ingestor = Ingestor(db, config, reply_handler=service)
        seed_cases(ingestor)
        world = World(db, ingestor, service, DigestService(config, db, attach_xlsx=False))
        digest = world.digest("cdc")
        for minute, line in enumerate(["QN-0001 home", "QN-0001 note a", "QN-0001 note b"]):
            world.deliver(reply(digest, line), now=NOW + dt.timedelta(minutes=minute))
        assert [e.action for e in world.events("QN-0001")] == ["home", "note", "note"]
        assert len(world.acks()) == 2
        assert world.log()[-1].reason.startswith("rate_limited")
        world.deliver(reply(digest, "QN-0001 note c"), now=NOW + dt.timedelta(hours=1, minutes=1))
        assert len(world.acks()) == 3
        world.deliver(reply(digest, "QN-0003 monitor", sender=DOC), now=NOW)
        assert len(world.acks()) == 4  # another sender has a limit of their own
        assert bare(str(read(world.acks()[-1])["To"])) == DOC
    finally:
        db.dispose()


def test_our_own_sender_address_is_never_acknowledged(world: World) -> None:
    world.deliver(forged(f"QN <{TRACKER}>", "QN-0001 clear"))
    untouched(world, "QN-0001")
    assert world.acks() == []
