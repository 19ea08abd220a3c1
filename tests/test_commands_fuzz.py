"""Arbitrary text never makes the reply grammar or the reply-text extraction raise."""

from __future__ import annotations

import datetime
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from mailtracker.domain.commands import (
    Command,
    LineError,
    normalise_ref,
    parse_command_line,
    parse_reply,
    subject_ref,
)
from mailtracker.domain.tokens import find_token, make_token, verify_token
from mailtracker.parsing.reply import extract_reply_text

FUZZ = settings(max_examples=int(os.environ.get("MAILTRACKER_FUZZ_EXAMPLES", "200")), deadline=None)

WORDS = st.sampled_from(
    [
        "QN-0042", "qn42", "#7", "#", "QN-", "HN-12", "home", "cách ly tại nhà", "chuyển", "viện",
        "check", "ok", "36,9", "37.5°C", "độ", "98.6", "10/02/2020", "31/02", "29/02", "2020-13-01",
        "hôm nay", "hôm qua", "từ", "ghi chú", "-", "--", ">", "1.", "*", ":", "Vào", "đã viết:",
        "On", "wrote:", "From:", "Sent:", "Từ:", "Đã gửi:", "-----Original Message-----",
        "-- Trả lời phía trên dòng này / Reply above this line --", "\u00a0", "\t", "\u0301",
    ]
)  # fmt: skip
LINES = st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join)
TEXTS = st.one_of(st.text(), st.lists(LINES, max_size=12).map("\n".join))
DATES = st.one_of(st.dates(), st.sampled_from([datetime.date.min, datetime.date.max]))


@FUZZ
@given(text=TEXTS, subject=st.one_of(st.text(), LINES), today=DATES)
def test_parse_reply_never_raises(text: str, subject: str, today: datetime.date) -> None:
    result = parse_reply(text, subject=subject, prefix="QN", today=today)
    for command in result.commands:
        assert normalise_ref(command.ref, "QN") == command.ref
        assert command.line and command.line == command.line.strip()
    assert all(error.reason != "not_understood" for error in result.errors)


@FUZZ
@given(
    line=st.one_of(st.text(), LINES), today=DATES, default_ref=st.sampled_from([None, "QN-0061"])
)
def test_parse_command_line_never_raises(
    line: str, today: datetime.date, default_ref: str | None
) -> None:
    result = parse_command_line(line, prefix="QN", today=today, default_ref=default_ref)
    assert result is None or isinstance(result, Command | LineError)
    if isinstance(result, LineError):
        assert result.message_en and result.message_vi


@FUZZ
@given(text=st.text(), prefix=st.sampled_from(["QN", "DN", "A.B", "x"]))
def test_reference_helpers_never_raise(text: str, prefix: str) -> None:
    normalise_ref(text, prefix)
    subject_ref(text, prefix)


@FUZZ
@given(plain=st.one_of(st.none(), TEXTS), html=st.one_of(st.none(), st.text(), TEXTS))
def test_extract_reply_text_never_raises(plain: str | None, html: str | None) -> None:
    text = extract_reply_text(plain, html)
    assert isinstance(text, str)


@FUZZ
@given(
    html=st.lists(
        st.sampled_from(
            [
                "<div>", "</div>", "<br>", "<p>", "</p>", "<blockquote>", "</blockquote>",
                '<div class="gmail_quote">', '<div id="divRplyFwdMsg">', '<div id="appendonsend">',
                "<hr>", "QN-42 home", "ok 36,9", "<html>", "</html>", "<", ">", "&nbsp;", "&lt;",
            ]
        ),
        max_size=30,
    ).map("".join)
)  # fmt: skip
def test_extract_reply_text_from_tag_soup_never_raises(html: str) -> None:
    assert isinstance(extract_reply_text(None, html), str)


# -- reply tokens: forged, mutated or arbitrary tokens never verify ------------------------

KEY = b"the-real-key"
ISSUED = datetime.datetime(2020, 2, 14, 7, 0, tzinfo=datetime.UTC)
TOKEN_AGE = datetime.timedelta(days=14)


@FUZZ
@given(text=st.text(max_size=80), ids=st.lists(st.text(max_size=80), max_size=3))
def test_arbitrary_token_text_never_raises_nor_verifies(text: str, ids: list[str]) -> None:
    found = find_token([text], ids)
    for candidate in (text, found or ""):
        check = verify_token(candidate, key=KEY, now=ISSUED, max_age=TOKEN_AGE)
        assert not check.ok


@FUZZ
@given(
    unit=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True),
    position=st.integers(min_value=0, max_value=200),
    replacement=st.sampled_from("abcdefghijklmnopqrstuvwxyz234567._-"),
    other_key=st.binary(min_size=1, max_size=32),
)
def test_a_token_changed_anywhere_or_signed_with_another_key_is_refused(
    unit: str, position: int, replacement: str, other_key: bytes
) -> None:
    token = make_token(unit, key=KEY, issued=ISSUED)
    assert verify_token(token, key=KEY, now=ISSUED, max_age=TOKEN_AGE).ok
    index = position % len(token)
    changed = token[:index] + replacement + token[index + 1 :]
    if changed != token:
        assert not verify_token(changed, key=KEY, now=ISSUED, max_age=TOKEN_AGE).ok
    if other_key != KEY:
        assert not verify_token(token, key=other_key, now=ISSUED, max_age=TOKEN_AGE).ok
