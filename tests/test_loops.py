"""Automatic-mail detection and the acknowledgement rate limit (pure)."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy

import pytest

from mailtracker.domain.loops import ACK_LIMIT, ACK_WINDOW, ack_allowed, is_automatic
from mailtracker.mail.compose import compose

OWN = ("tracker@example.org",)
PERSON = [
    ("From", "Epi <epi@example.org>"),
    ("To", "cdc-inbox+t.d.cdc.abc@example.org"),
    ("Subject", "Re: [QN] Bản tin"),
    ("Return-Path", "<epi@example.org>"),
    ("Content-Type", "text/plain; charset=utf-8"),
]
NOW = dt.datetime(2020, 2, 14, 8, 0, tzinfo=dt.UTC)


def with_header(name: str, value: str) -> list[tuple[str, str]]:
    """The person's headers with ``name`` set to ``value`` (replacing it when present)."""
    return [(n, v) for n, v in PERSON if n.lower() != name.lower()] + [(name, value)]


def test_a_person_writing_is_not_automatic() -> None:
    assert is_automatic(PERSON, own_addresses=OWN) is None


def test_auto_submitted_no_is_a_person() -> None:
    assert is_automatic(with_header("Auto-Submitted", "no"), own_addresses=OWN) is None
    assert is_automatic(with_header("Auto-Submitted", " No "), own_addresses=OWN) is None


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("Auto-Submitted", "auto-replied", "auto_submitted"),
        ("Auto-Submitted", "auto-generated", "auto_submitted"),
        ("auto-submitted", "Auto-Notified; owner-email=x@y", "auto_submitted"),
        ("X-Autoreply", "yes", "autoreply_header"),
        ("X-Autorespond", "Out of office", "autoreply_header"),
        ("Precedence", "bulk", "precedence"),
        ("Precedence", "Junk", "precedence"),
        ("Precedence", "list", "precedence"),
        ("Precedence", "auto_reply", "precedence"),
        ("List-Id", "<staff.example.org>", "list_id"),
        ("Return-Path", "< >", "null_return_path"),
        ("X-Mailtracker-Loop", "tracker@other.example.net", "loop_header"),
        ("Content-Type", 'multipart/report; report-type="delivery-status"; b=x', "delivery_status"),
        (
            "Content-Type",
            "multipart/report; report-type=disposition-notification",
            "delivery_status",
        ),
        ("Content-Type", "message/delivery-status", "delivery_status"),
    ],
)
def test_every_automatic_marker(name: str, value: str, reason: str) -> None:
    assert is_automatic(with_header(name, value), own_addresses=OWN) == reason


def test_precedence_first_class_is_a_person() -> None:
    assert is_automatic(with_header("Precedence", "first-class"), own_addresses=OWN) is None


def test_multipart_report_of_another_type_is_not_a_dsn() -> None:
    headers = with_header("Content-Type", "multipart/report; report-type=feedback-report")
    assert is_automatic(headers, own_addresses=OWN) is None


@pytest.mark.parametrize(
    "sender",
    [
        "MAILER-DAEMON@mx.example.org",
        "Mail Delivery System <mailer-daemon@googlemail.com>",
        "postmaster@example.org",
        "<Postmaster@Example.ORG>",
    ],
)
def test_daemon_senders(sender: str) -> None:
    assert is_automatic(with_header("From", sender), own_addresses=OWN) == "mailer_daemon"


def test_a_daemon_in_the_sender_header_counts_too() -> None:
    assert is_automatic(with_header("Sender", "postmaster@example.org")) == "mailer_daemon"


def test_our_own_address_as_sender() -> None:
    headers = with_header("From", "QN <TRACKER@example.org>")
    assert is_automatic(headers, own_addresses=OWN) == "own_address"
    assert is_automatic(headers, own_addresses=()) is None


def test_x_loop_naming_our_address() -> None:
    assert is_automatic(with_header("X-Loop", "tracker@example.org"), own_addresses=OWN) == (
        "own_address"
    )
    assert is_automatic(with_header("X-Loop", "other@example.net"), own_addresses=OWN) is None


def test_everything_the_tracker_composes_is_automatic() -> None:
    raw = compose(
        sender="Mailtracker QN <tracker@example.org>",
        to=["epi@example.org"],
        subject="[QN] Reply received",
        text="body",
        html=None,
        reply_to=None,
        message_id="<a.b@example.org>",
        auto_submitted="auto-replied",
        date=NOW,
    )
    headers = message_from_bytes(raw, policy=policy.compat32).items()
    assert is_automatic(headers, own_addresses=OWN) == "auto_submitted"
    stripped = [(n, v) for n, v in headers if n.lower() != "auto-submitted"]
    assert is_automatic(stripped, own_addresses=OWN) == "loop_header"
    no_loop = [(n, v) for n, v in stripped if n.lower() != "x-mailtracker-loop"]
    assert is_automatic(no_loop, own_addresses=OWN) == "own_address"


def test_rate_limit_allows_up_to_the_limit_within_the_window() -> None:
    recent = [NOW - dt.timedelta(minutes=minute) for minute in range(ACK_LIMIT - 1)]
    assert ack_allowed(recent, now=NOW)
    recent.append(NOW - dt.timedelta(minutes=59))
    assert not ack_allowed(recent, now=NOW)


def test_rate_limit_forgets_acks_older_than_the_window() -> None:
    old = [NOW - ACK_WINDOW - dt.timedelta(seconds=1)] * 50
    assert ack_allowed(old, now=NOW)
    exactly_at_edge = [NOW - ACK_WINDOW] * ACK_LIMIT
    assert ack_allowed(exactly_at_edge, now=NOW)


def test_rate_limit_parameters() -> None:
    recent = [NOW - dt.timedelta(minutes=1), NOW - dt.timedelta(minutes=2)]
    assert not ack_allowed(recent, now=NOW, limit=2)
    assert ack_allowed(recent, now=NOW, limit=3)
    assert ack_allowed(recent, now=NOW, limit=2, window=dt.timedelta(seconds=90))
    assert ack_allowed([], now=NOW, limit=1)
