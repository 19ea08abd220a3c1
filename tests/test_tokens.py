"""Signed reply tokens: round trip, tampering, expiry, keys, unit naming, size and extraction."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtracker.domain.tokens import (
    find_token,
    make_token,
    reply_address,
    token_message_id,
    verify_token,
)

KEY = b"0123456789abcdef0123456789abcdef"
ISSUED = dt.datetime(2020, 2, 14, 7, 0, 30, tzinfo=dt.UTC)
DAYS14 = dt.timedelta(days=14)


def test_round_trip_names_unit_kind_and_minute() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED, kind="a")
    check = verify_token(token, key=KEY, now=ISSUED + dt.timedelta(days=1), max_age=DAYS14)
    assert check.ok and check.reason is None
    assert check.unit_id == "cdc"
    assert check.kind == "a"
    assert check.issued == ISSUED.replace(second=0)


def test_token_is_compact_and_local_part_safe() -> None:
    token = make_token("medical-affairs", key=KEY, issued=ISSUED)
    assert re.fullmatch(r"[a-z0-9._-]+", token)
    assert len(token) <= 42
    assert "=" not in token and "+" not in token and ".." not in token
    local = reply_address("cdc-inbox@example.org", token).split("@")[0]
    assert len(local) <= 64


def test_other_units_get_other_tokens() -> None:
    cdc = make_token("cdc", key=KEY, issued=ISSUED)
    yte = make_token("yte", key=KEY, issued=ISSUED)
    assert cdc != yte
    assert verify_token(yte, key=KEY, now=ISSUED, max_age=DAYS14).unit_id == "yte"


def test_renaming_the_unit_in_a_token_breaks_the_signature() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    forged = token.replace(".cdc.", ".yte.")
    check = verify_token(forged, key=KEY, now=ISSUED, max_age=DAYS14)
    assert not check.ok and check.reason == "bad_signature"
    assert check.unit_id is None


@given(st.integers(min_value=0, max_value=29), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
def test_any_changed_character_is_refused(position: int, replacement: str) -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    if position >= len(token) or token[position] == replacement:
        return
    tampered = token[:position] + replacement + token[position + 1 :]
    check = verify_token(tampered, key=KEY, now=ISSUED, max_age=DAYS14)
    assert not check.ok
    assert check.reason in {"bad_signature", "malformed"}


def test_wrong_key_is_a_bad_signature() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    check = verify_token(token, key=b"another key", now=ISSUED, max_age=DAYS14)
    assert (check.ok, check.reason) == (False, "bad_signature")


def test_expiry_is_exact_to_max_age() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    start = ISSUED.replace(second=0)
    assert verify_token(token, key=KEY, now=start + DAYS14, max_age=DAYS14).ok
    late = verify_token(
        token, key=KEY, now=start + DAYS14 + dt.timedelta(seconds=1), max_age=DAYS14
    )
    assert (late.ok, late.reason, late.unit_id) == (False, "expired", "cdc")


def test_upper_case_copy_still_verifies() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    assert verify_token(token.upper(), key=KEY, now=ISSUED, max_age=DAYS14).ok


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "d.cdc", "d.cdc.abc", "d.cdc." + "1" * 24, "dd.cdc." + "a" * 24, "d..aaaa"],
)
def test_malformed_tokens(text: str) -> None:
    check = verify_token(text, key=KEY, now=ISSUED, max_age=DAYS14)
    assert (check.ok, check.reason) == (False, "malformed")


@pytest.mark.parametrize("unit", ["", "CDC", "a b", "x" * 33, "cdc.inbox", "đơn-vị"])
def test_unit_ids_a_token_cannot_carry_are_rejected(unit: str) -> None:
    with pytest.raises(ValueError):
        make_token(unit, key=KEY, issued=ISSUED)


def test_naive_issue_time_and_empty_key_are_rejected() -> None:
    with pytest.raises(ValueError):
        make_token("cdc", key=KEY, issued=ISSUED.replace(tzinfo=None))
    with pytest.raises(ValueError):
        make_token("cdc", key=b"", issued=ISSUED)


def test_reply_address_uses_plus_addressing() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    address = reply_address("CDC Inbox <cdc-inbox@example.org>", token)
    assert address == f"cdc-inbox+t.{token}@example.org"


def test_reply_address_falls_back_to_bare_mailbox_when_too_long() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    mailbox = "phong.nghiep.vu.y.so.y.te.quang.ngai@example.org"
    assert reply_address(mailbox, token) == mailbox


def test_reply_address_rejects_non_address() -> None:
    with pytest.raises(ValueError):
        reply_address("not an address", "d.cdc." + "a" * 24)


def test_message_id_carries_token_and_stays_unique() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    first = token_message_id(token, "example.org", nonce="1a2b")
    second = token_message_id(token, "example.org", nonce="3c4d")
    assert first == f"<t.{token}.1a2b@example.org>"
    assert first != second
    with pytest.raises(ValueError):
        token_message_id(token, "example.org", nonce="x>\r\n")


def test_find_token_in_plus_address() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    found = find_token(["duty@example.org", f'"CDC" <CDC-Inbox+t.{token.upper()}@example.org>'], [])
    assert found == token


def test_find_token_in_references_header() -> None:
    token = make_token("cdc", key=KEY, issued=ISSUED)
    references = f"<abc@mail.gmail.com>\r\n <t.{token}.99@example.org> <x@y>"
    assert find_token(["cdc-inbox@example.org"], ["<other@x>", references]) == token


def test_find_token_prefers_addresses_and_ignores_lookalikes() -> None:
    digest = make_token("cdc", key=KEY, issued=ISSUED)
    alert = make_token("cdc", key=KEY, issued=ISSUED, kind="a")
    assert find_token([f"a+t.{digest}@x.org"], [f"<t.{alert}.1@x.org>"]) == digest
    assert find_token(["a+t.notatoken@x.org"], ["<t.short@x.org>", "<xt.d.cdc.a@b>"]) is None
    assert find_token([], [f"<prefixt.{alert}.1@x.org>"]) is None


def test_longest_unit_id_round_trips() -> None:
    unit = "u" * 32
    token = make_token(unit, key=KEY, issued=ISSUED)
    assert verify_token(token, key=KEY, now=ISSUED, max_age=DAYS14).unit_id == unit
    assert find_token([], [token_message_id(token, "x.org", nonce="1")]) == token
