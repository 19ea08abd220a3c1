"""Report normalisation: the label vocabulary, every field's normaliser, the risk rule."""

from __future__ import annotations

import datetime as dt
import unicodedata

import pytest

from mailtracker.domain.reports import (
    LABELS,
    SYMPTOMS,
    Report,
    build_report,
    field_for_label,
    parse_gender,
    parse_risk,
    parse_symptoms,
)
from mailtracker.domain.text import fold

VOCABULARY = [(name, label) for name, labels in LABELS.items() for label in labels]


@pytest.mark.parametrize(("name", "label"), VOCABULARY)
@pytest.mark.parametrize(
    "spelling",
    [
        lambda s: s,
        str.upper,
        str.lower,
        lambda s: s + ":",
        lambda s: s + " :",
        lambda s: unicodedata.normalize("NFD", s),
        lambda s: fold(s),
        lambda s: fold(s).title() + ":",
    ],
    ids=["as-is", "upper", "lower", "colon", "spaced-colon", "nfd", "unaccented", "title"],
)
def test_every_vocabulary_label(name: str, label: str, spelling: object) -> None:
    assert callable(spelling)
    assert field_for_label(spelling(label)) == name


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("Số CMND / CCCD / Hộ chiếu", "id_number"),
        ("CCCD/CMND", "id_number"),
        ("Số CCCD", "id_number"),
        ("Xã/Phường/Thị trấn", "commune"),
        ("Quận/Huyện/Thị xã/Thành phố", "district"),
        ("Tỉnh/TP", "province"),
        ("Ngày sinh/Năm sinh", "birth_year"),
        ("Số SĐT", "phone"),
    ],
)
def test_compound_and_numbered_labels(label: str, name: str) -> None:
    assert field_for_label(label) == name


@pytest.mark.parametrize(
    "label", ["STT", "Kính gửi", "From", "Subject", "Họ tên/Giới tính", "Tên đơn vị", "", "Ghi chú"]
)
def test_unknown_labels(label: str) -> None:
    assert field_for_label(label) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sốt, ho, khó thở", ("fever", "cough", "shortness_of_breath")),
        ("ho, đau họng", ("cough", "sore_throat")),
        ("Mệt mỏi, sốt", ("fever", "fatigue")),
        ("sổ mũi", ("runny_nose",)),
        ("Chảy nước mũi, đau mỏi cơ, đau đầu", ("runny_nose", "headache", "muscle_pain")),
        ("SOT, HO", ("fever", "cough")),
        ("Không", ()),
        ("Không có", ()),
        ("không sốt, ho khan", ("cough",)),
        ("Sốt và ho", ("fever", "cough")),
        ("suy hô hấp", ()),
        ("", ()),
    ],
)
def test_symptoms(text: str, expected: tuple[str, ...]) -> None:
    assert parse_symptoms(text) == expected
    assert list(expected) == [name for name in SYMPTOMS if name in expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nam", "male"),
        ("NỮ", "female"),
        ("nu", "female"),
        ("Nữ giới", "female"),
        ("male", "male"),
        ("khác", None),
        ("", None),
    ],
)
def test_gender(text: str, expected: str | None) -> None:
    assert parse_gender(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Cao", "high"),
        ("Trung bình", "medium"),
        ("THẤP", "low"),
        ("Nguy cơ cao", "high"),
        ("high", "high"),
        ("?", None),
    ],
)
def test_stated_risk(text: str, expected: str | None) -> None:
    assert parse_risk(text) == expected


def test_build_report_normalises_every_field() -> None:
    report = build_report(
        {
            "full_name": unicodedata.normalize("NFD", "  Đỗ  Thị   Hạnh "),
            "phone": "+84 348.205.911",
            "birth_year": "21/04/1999",
            "gender": "Nữ",
            "id_number": "051 199 001 276",
            "address": "Thôn 2, xã Bình Long, huyện Bình Sơn, tỉnh Quảng Ngãi",
            "symptoms": "Sốt, ho",
            "came_from": "Vũ Hán,  Trung Quốc",
            "contact": "",
            "arrival_date": "10/02/2020",
            "report_date": "13/02/2020 09:12",
            "report_id": "SKVN-2020-1",
        }
    )
    assert report == Report(
        full_name="Đỗ Thị Hạnh",
        phone="0348205911",
        birth_year=1999,
        gender="female",
        id_number="051199001276",
        address="Thôn 2, xã Bình Long, huyện Bình Sơn, tỉnh Quảng Ngãi",
        commune="Bình Long",
        district="Bình Sơn",
        province="Quảng Ngãi",
        symptoms=("fever", "cough"),
        came_from="Vũ Hán, Trung Quốc",
        contact=None,
        arrival_date=dt.date(2020, 2, 10),
        report_date=dt.date(2020, 2, 13),
        report_id="SKVN-2020-1",
        risk="high",
    )


def test_own_place_fields_win_over_address() -> None:
    report = build_report(
        {
            "full_name": "A",
            "address": "Thôn 1, xã Tịnh Hà, huyện Sơn Tịnh, tỉnh Quảng Ngãi",
            "commune": "Phường Trần Phú",
            "district": "TP Quảng Ngãi",
        }
    )
    assert report is not None
    assert (report.commune, report.district, report.province) == (
        "Trần Phú",
        "Quảng Ngãi",
        "Quảng Ngãi",
    )


@pytest.mark.parametrize(
    ("fields", "risk"),
    [
        ({"symptoms": "Sốt", "came_from": "Vũ Hán"}, "high"),
        ({"symptoms": "Ho", "contact": "F1"}, "high"),
        ({"came_from": "Vũ Hán"}, "medium"),
        ({"symptoms": "Không", "contact": "Con trai về từ Vĩnh Phúc"}, "medium"),
        ({"symptoms": "Sốt"}, "low"),
        ({"symptoms": "Sốt", "came_from": "Không"}, "low"),
        ({}, "low"),
        ({"risk": "Cao"}, "high"),
        ({"risk": "Thấp", "symptoms": "Sốt", "came_from": "Vũ Hán"}, "low"),
        ({"risk": "Trung bình"}, "medium"),
        ({"risk": "không rõ", "came_from": "Vũ Hán"}, "medium"),
    ],
)
def test_risk(fields: dict[str, str], risk: str) -> None:
    report = build_report({"full_name": "Nguyễn Văn An", **fields})
    assert report is not None
    assert report.risk == risk


def test_absent_fields_are_none_and_unknown_keys_ignored() -> None:
    report = build_report({"phone": "0905123456", "hobby": "chess"})
    assert report == Report(phone="0905123456")
    assert report.to_json()["symptoms"] == []


@pytest.mark.parametrize(
    "fields",
    [{}, {"address": "Thôn 1"}, {"symptoms": "Sốt", "came_from": "Vũ Hán"}, {"full_name": "  "}],
)
def test_nothing_identifying_gives_no_report(fields: dict[str, str]) -> None:
    assert build_report(fields) is None


def test_report_json_round_trip() -> None:
    report = build_report(
        {
            "full_name": "Lê Thị Mai",
            "arrival_date": "09/02/2020",
            "symptoms": "ho",
            "came_from": "Quảng Châu",
        }
    )
    assert report is not None
    assert Report.from_json(report.to_json()) == report
