"""Outgoing MIME: the brief's headers, encodings, structure, and no header injection."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

import pytest

from mailtracker.mail.compose import LOOP_HEADER, clean_header_text, compose, new_nonce
from mailtracker.parsing.reply import MARKER

DATE = dt.datetime(2020, 2, 14, 0, 5, tzinfo=dt.UTC)
INJECTION = "Nguyễn\r\nBcc: evil@x.org\nX-Evil: 1\x00\x1b\u2028"


def build(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "sender": "Mailtracker QN <tracker@example.org>",
        "to": ["epi@example.org", "Trực ban <duty@example.org>"],
        "subject": "[QN] Bản tin 14/02/2020: 3 quá hạn, 5 mới",
        "text": f"{MARKER}\n\nQN-0042 Nguyễn Văn An\n",
        "html": f"<p>{MARKER}</p><p>QN-0042</p>",
        "reply_to": "cdc-inbox+t.d.cdc.abc@example.org",
        "message_id": "<t.d.cdc.abc.1f@example.org>",
        "auto_submitted": "auto-generated",
        "date": DATE,
    }
    arguments.update(overrides)
    return compose(**arguments)


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, message_from_bytes(raw, policy=policy.default))


def test_headers_of_the_brief_are_present() -> None:
    message = parse(build())
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message[LOOP_HEADER] == "tracker@example.org"
    assert message["Message-ID"] == "<t.d.cdc.abc.1f@example.org>"
    assert message["Reply-To"] == "cdc-inbox+t.d.cdc.abc@example.org"
    assert message["Date"].datetime == DATE
    assert "Precedence" not in message
    assert message["To"].addresses[1].display_name == "Trực ban"


def test_acknowledgement_threads_and_says_auto_replied() -> None:
    message = parse(
        build(
            auto_submitted="auto-replied",
            in_reply_to="<CAF=abc@mail.gmail.com>",
            references=["<t.d.cdc.abc.1f@example.org>", "<CAF=abc@mail.gmail.com>"],
            loop_id="qn-instance-1",
            html=None,
            reply_to=None,
        )
    )
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<CAF=abc@mail.gmail.com>"
    assert message["References"].split() == [
        "<t.d.cdc.abc.1f@example.org>",
        "<CAF=abc@mail.gmail.com>",
    ]
    assert message[LOOP_HEADER] == "qn-instance-1"
    assert "Reply-To" not in message
    assert message.get_content_type() == "text/plain"


def test_utf8_subject_is_encoded_and_round_trips() -> None:
    raw = build()
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert header_block.isascii()
    assert b"=?utf-8?" in header_block
    assert parse(raw)["Subject"] == "[QN] Bản tin 14/02/2020: 3 quá hạn, 5 mới"


def test_text_and_html_alternatives_both_start_with_the_marker() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert plain.get_content().splitlines()[0] == MARKER
    assert MARKER in html.get_content()
    assert "Nguyễn Văn An" in plain.get_content()


def test_crlf_in_subject_and_names_cannot_inject_headers() -> None:
    raw = build(
        subject=f"[QN-0061] Alert: {INJECTION}",
        to=[f'"{INJECTION}" <epi@example.org>'],
        sender=f"{INJECTION} <tracker@example.org>",
    )
    message = parse(raw)
    assert "Bcc" not in message and "X-Evil" not in message
    assert message["Subject"] == "[QN-0061] Alert: Nguyễn Bcc: evil@x.org X-Evil: 1"
    assert [a.addr_spec for a in message["To"].addresses] == ["epi@example.org"]
    header_lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert not any(line.lower().startswith((b"bcc:", b"x-evil:")) for line in header_lines)
    assert b"\x00" not in raw and b"\x1b" not in raw


def test_crlf_in_message_ids_is_refused() -> None:
    with pytest.raises(ValueError):
        build(message_id="<a@b>\r\nBcc: evil@x.org")
    with pytest.raises(ValueError):
        build(in_reply_to="<a@b> <c@d>")


@pytest.mark.parametrize("address", ["", "nobody", "a b@c.org", "x@"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        build(to=[address])


def test_no_recipient_is_refused() -> None:
    with pytest.raises(ValueError):
        build(to=[])


def test_long_subject_is_capped() -> None:
    subject = clean_header_text("x " * 500)
    assert len(subject) == 200 and subject.endswith("…")
    assert parse(build(subject="x " * 500))["Subject"] == subject


def test_attachment_makes_mixed_message() -> None:
    raw = build(
        attachments=[("ca\r\nđang theo dõi.xlsx", "application/vnd.ms-excel", b"PK\x03\x04data")]
    )
    message = parse(raw)
    assert message.get_content_type() == "multipart/mixed"
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == "ca đang theo dõi.xlsx"
    assert attachments[0].get_content() == b"PK\x03\x04data"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().startswith(MARKER)


def test_nonces_differ() -> None:
    assert len({new_nonce() for _ in range(50)}) == 50
    assert new_nonce().isalnum()
