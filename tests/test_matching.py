"""The same-person rule: same report id, or same phone and folded name within 30 days."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from mailtracker.domain.matching import (
    PersonKey,
    merge_updates,
    name_key,
    person_key,
    same_person,
)
from mailtracker.domain.reports import Report

T0 = dt.datetime(2020, 2, 12, 1, 0, tzinfo=dt.UTC)


def key(
    report_id: str | None = None, phone: str | None = None, name: str | None = None
) -> PersonKey:
    return person_key(Report(report_id=report_id, phone=phone, full_name=name))


def test_name_key_folds_case_diacritics_and_spaces() -> None:
    assert name_key("Nguyễn  Văn Đức") == name_key("NGUYEN VAN DUC") == "nguyen van duc"
    assert name_key("  ") is None
    assert name_key(None) is None


def test_same_report_id_matches_whatever_else_differs() -> None:
    earlier = key("SKVN-1", "0905111222", "Lê Văn A")
    later = key("SKVN-1", "0912000000", "Trần Thị B")
    assert same_person(earlier, T0, later, T0 + dt.timedelta(days=90))


def test_same_phone_and_folded_name_match_within_thirty_days() -> None:
    earlier = key("SKVN-1", "0905111222", "Lê Văn Á")
    later = key(None, "0905111222", "LE VAN A")
    assert same_person(earlier, T0, later, T0 + dt.timedelta(days=30))
    assert not same_person(earlier, T0, later, T0 + dt.timedelta(days=30, seconds=1))


def test_phone_alone_or_name_alone_is_not_the_same_person() -> None:
    earlier = key(None, "0905111222", "Lê Văn A")
    assert not same_person(earlier, T0, key(None, "0905111222", "Lê Văn B"), T0)
    assert not same_person(earlier, T0, key(None, "0905111223", "Lê Văn A"), T0)
    assert not same_person(earlier, T0, key(None, None, "Lê Văn A"), T0)


def test_different_report_ids_can_still_match_by_phone_and_name() -> None:
    earlier = key("SKVN-1", "0905111222", "Lê Văn A")
    later = key("SKVN-2", "0905111222", "Lê Văn A")
    assert same_person(earlier, T0, later, T0 + dt.timedelta(days=2))


def test_a_report_without_id_or_phone_matches_nothing() -> None:
    anonymous = key(None, None, "Lê Văn A")
    assert not anonymous.matchable
    assert not same_person(anonymous, T0, anonymous, T0)
    assert key("SKVN-1").matchable
    assert key(None, "0905111222", "A").matchable


def test_merge_fills_only_what_is_missing() -> None:
    current = Report(full_name="Lê Văn A", phone="0905111222", address=None, symptoms=())
    new = Report(full_name="Le Van A", phone="0999999999", address="Thôn 1", symptoms=("cough",))
    assert merge_updates(current, new) == {"address": "Thôn 1", "symptoms": ("cough",)}


def test_merge_raises_the_risk_but_never_lowers_it() -> None:
    assert merge_updates(Report(risk="medium"), Report(risk="high")) == {"risk": "high"}
    assert merge_updates(Report(risk="high"), Report(risk="low")) == {}


keys = st.builds(
    PersonKey,
    report_id=st.sampled_from([None, "SKVN-1", "SKVN-2"]),
    phone=st.sampled_from([None, "0905111222", "0912000000"]),
    name_key=st.sampled_from([None, "le van a", "tran thi b"]),
)
offsets = st.integers(min_value=-60 * 86_400, max_value=60 * 86_400)


@given(keys, keys, offsets)
def test_same_person_is_symmetric(first: PersonKey, second: PersonKey, seconds: int) -> None:
    later = T0 + dt.timedelta(seconds=seconds)
    assert same_person(first, T0, second, later) == same_person(second, later, first, T0)


@given(keys, offsets)
def test_a_matchable_key_matches_itself_within_the_window(person: PersonKey, seconds: int) -> None:
    later = T0 + dt.timedelta(seconds=seconds)
    expected = person.report_id is not None or (person.matchable and abs(seconds) <= 30 * 86_400)
    assert same_person(person, T0, person, later) == expected
