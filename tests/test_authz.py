"""Authorization: staff lists, unit roles, case ownership and the token-established unit."""

from __future__ import annotations

import pytest

from mailtracker.domain.authz import UnitAccess, authorize, is_staff, normalize_address

CDC = UnitAccess("cdc", "lead", frozenset({"epi@example.org", "Duty@Example.org"}))
SONTINH = UnitAccess("ytdp-sontinh", "member", frozenset({"st@example.org", "both@example.org"}))
TUNGHIA = UnitAccess("ytdp-tunghia", "member", frozenset({"tn@example.org"}))
SYT = UnitAccess("so-yte", "observer", frozenset({"boss@example.org", "both@example.org"}))
UNITS = (CDC, SONTINH, TUNGHIA, SYT)


@pytest.mark.parametrize(
    ("actor", "owner", "allowed", "code", "unit"),
    [
        ("epi@example.org", "cdc", True, "allowed", "cdc"),
        ("epi@example.org", "ytdp-tunghia", True, "allowed", "cdc"),  # lead: any case
        ("st@example.org", "ytdp-sontinh", True, "allowed", "ytdp-sontinh"),
        ("st@example.org", "cdc", False, "not_owner", "ytdp-sontinh"),
        ("st@example.org", "ytdp-tunghia", False, "not_owner", "ytdp-sontinh"),
        ("boss@example.org", "cdc", False, "observer", "so-yte"),
        ("boss@example.org", "so-yte", False, "observer", "so-yte"),
        ("stranger@example.org", "cdc", False, "not_staff", None),
        ("", "cdc", False, "not_staff", None),
        # on two units: the one that may act decides
        ("both@example.org", "ytdp-sontinh", True, "allowed", "ytdp-sontinh"),
        ("both@example.org", "cdc", False, "not_owner", "ytdp-sontinh"),
    ],
)
def test_roles_without_token(
    actor: str, owner: str, allowed: bool, code: str, unit: str | None
) -> None:
    decision = authorize(actor, owner, UNITS)
    assert (decision.allowed, decision.code, decision.unit) == (allowed, code, unit)
    if allowed:
        assert decision.message_vi == decision.message_en == ""
    else:
        assert decision.message_vi and decision.message_en
        assert decision.message_vi != decision.message_en


@pytest.mark.parametrize(
    "actor", ["EPI@Example.ORG", " duty@example.org ", "Trực ban <duty@EXAMPLE.org>"]
)
def test_addresses_compare_case_insensitively(actor: str) -> None:
    assert authorize(actor, "ytdp-tunghia", UNITS).allowed


def test_lookalike_addresses_are_not_staff() -> None:
    for actor in ("epi@example.org.evil.com", "epi+x@example.org", "xepi@example.org"):
        assert authorize(actor, "cdc", UNITS).code == "not_staff"


@pytest.mark.parametrize(
    ("actor", "token_unit", "owner", "allowed", "code"),
    [
        ("epi@example.org", "cdc", "ytdp-tunghia", True, "allowed"),
        ("st@example.org", "ytdp-sontinh", "ytdp-sontinh", True, "allowed"),
        ("st@example.org", "ytdp-sontinh", "cdc", False, "not_owner"),
        # staff of a lead unit replying to another unit's message acts as that unit only
        ("epi@example.org", "ytdp-sontinh", "ytdp-sontinh", False, "not_staff"),
        ("st@example.org", "cdc", "ytdp-sontinh", False, "not_staff"),
        ("both@example.org", "so-yte", "ytdp-sontinh", False, "observer"),
        ("both@example.org", "ytdp-sontinh", "ytdp-sontinh", True, "allowed"),
        ("boss@example.org", "so-yte", "so-yte", False, "observer"),
        ("epi@example.org", "gone-unit", "cdc", False, "unknown_unit"),
    ],
)
def test_roles_with_the_token_unit(
    actor: str, token_unit: str, owner: str, allowed: bool, code: str
) -> None:
    decision = authorize(actor, owner, UNITS, token_unit=token_unit)
    assert (decision.allowed, decision.code) == (allowed, code)
    assert decision.unit == (None if code == "unknown_unit" else token_unit)


def test_refusal_messages_name_the_units() -> None:
    decision = authorize("st@example.org", "cdc", UNITS)
    assert decision.message("vi") == (
        "đơn vị ytdp-sontinh chỉ cập nhật được hồ sơ của mình; hồ sơ này thuộc cdc"
    )
    assert decision.message("en") == (
        "unit ytdp-sontinh may only update its own cases; this one belongs to cdc"
    )
    observer = authorize("boss@example.org", "cdc", UNITS)
    assert "chỉ được xem" in observer.message_vi and "observer" in observer.message_en
    stranger = authorize("Stranger@Example.org", "cdc", UNITS)
    assert "stranger@example.org" in stranger.message_en


def test_no_units_configured_means_nobody_may_act() -> None:
    assert authorize("epi@example.org", "cdc", ()).code == "not_staff"


def test_address_helpers() -> None:
    assert normalize_address("An <An.Nguyen@Example.ORG>") == "an.nguyen@example.org"
    assert normalize_address("not an address") == ""
    assert is_staff("DUTY@example.org", CDC)
    assert not is_staff("", CDC)
