"""Text helpers: dates (day first), years, phones, administrative place words."""

from __future__ import annotations

import datetime as dt
import unicodedata

import pytest

from mailtracker.domain.text import (
    fold,
    nfc,
    normalise_phone,
    parse_date,
    parse_year,
    split_address,
    strip_admin,
)


def test_nfc_and_fold() -> None:
    nfd = unicodedata.normalize("NFD", "Nguyễn  Văn\tAn ")
    assert nfc(nfd) == "Nguyễn Văn An"
    assert fold("ĐỊA CHỈ") == fold("dia chi") == "dia chi"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12/02/2020", dt.date(2020, 2, 12)),
        ("1/2/2020", dt.date(2020, 2, 1)),
        ("08-02-2020", dt.date(2020, 2, 8)),
        ("08.02.2020", dt.date(2020, 2, 8)),
        ("2020-02-07", dt.date(2020, 2, 7)),
        ("13/02/2020 09:12", dt.date(2020, 2, 13)),
        ("Thứ 5, 13/02/2020", dt.date(2020, 2, 13)),
        ("ngày 09 tháng 02 năm 2020", dt.date(2020, 2, 9)),
        ("NGÀY 9 THÁNG 2 NĂM 2020", dt.date(2020, 2, 9)),
        ("8/2/20", dt.date(2020, 2, 8)),
        ("08.02.20 14:30", dt.date(2020, 2, 8)),
        ("12/05/85", dt.date(1985, 5, 12)),
        ("12/05/69", dt.date(2069, 5, 12)),
        ("12/05/70", dt.date(1970, 5, 12)),
        ("Ngày về 8/2/20, khai báo 13/02/2020", dt.date(2020, 2, 13)),
        ("8/2-20", None),
        ("1.2.3.45", None),
        ("31/02/2020", None),
        ("31/02/20", None),
        ("02/13/2020", None),
        ("không rõ", None),
        ("", None),
    ],
)
def test_parse_date_is_day_first(text: str, expected: dt.date | None) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1985", 1985),
        ("21/04/1995", 1995),
        ("sinh năm 1969", 1969),
        ("1995-04-21", 1995),
        ("khoảng 40 tuổi", None),
        ("", None),
    ],
)
def test_parse_year(text: str, expected: int | None) -> None:
    assert parse_year(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0905 123 456", "0905123456"),
        ("+84 905 123 456", "0905123456"),
        ("84976543210", "0976543210"),
        ("(+84) 935.214.786", "0935214786"),
        ("091-468-2357", "0914682357"),
        ("0348.205.911", "0348205911"),
        ("0236 3822 123", "02363822123"),
        ("0905 123 456 / 0912 000 111", "0905123456"),
        ("không có", None),
        ("", None),
    ],
)
def test_normalise_phone(text: str, expected: str | None) -> None:
    assert normalise_phone(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("huyện Sơn Tịnh", "Sơn Tịnh"),
        ("Huyện Bình Sơn", "Bình Sơn"),
        ("TP Quảng Ngãi", "Quảng Ngãi"),
        ("TP. Quảng Ngãi", "Quảng Ngãi"),
        ("Tp.Quảng Ngãi", "Quảng Ngãi"),
        ("thành phố Quảng Ngãi", "Quảng Ngãi"),
        ("Thị xã Đức Phổ", "Đức Phổ"),
        ("thị trấn Châu Ổ", "Châu Ổ"),
        ("Phường Trần Phú", "Trần Phú"),
        ("xã Bình Long", "Bình Long"),
        ("QUẬN Hải Châu", "Hải Châu"),
        ("tỉnh Quảng Ngãi", "Quảng Ngãi"),
        ("Tịnh Khê", "Tịnh Khê"),
        ("Xuân Phường", "Xuân Phường"),
        ("Phường 3", "Phường 3"),
        (unicodedata.normalize("NFD", "huyện Tư Nghĩa"), "Tư Nghĩa"),
        ("huyen Tu Nghia", "Tu Nghia"),
        ("", None),
    ],
)
def test_strip_admin(text: str, expected: str | None) -> None:
    assert strip_admin(text) == expected


def test_split_address_full() -> None:
    assert split_address("Thôn 1, xã Tịnh Hà, huyện Sơn Tịnh, tỉnh Quảng Ngãi") == {
        "commune": "Tịnh Hà",
        "district": "Sơn Tịnh",
        "province": "Quảng Ngãi",
    }


def test_split_address_city_is_district_before_province() -> None:
    assert split_address("Tổ 12, phường Nghĩa Chánh, TP Quảng Ngãi, tỉnh Quảng Ngãi") == {
        "commune": "Nghĩa Chánh",
        "district": "Quảng Ngãi",
        "province": "Quảng Ngãi",
    }


def test_split_address_city_after_district_is_province() -> None:
    assert split_address("12 Lê Lợi, phường Bến Nghé, quận 1, thành phố Hồ Chí Minh") == {
        "commune": "Bến Nghé",
        "district": "quận 1",
        "province": "Hồ Chí Minh",
    }


def test_split_address_central_city_alone_is_province() -> None:
    assert split_address("phường Hải Châu 1, TP Đà Nẵng") == {
        "commune": "Hải Châu 1",
        "province": "Đà Nẵng",
    }


def test_split_address_missing_levels_and_tinh_names() -> None:
    assert split_address("Thôn Đồng Ren, xã Sơn Dung, huyện Sơn Tây") == {
        "commune": "Sơn Dung",
        "district": "Sơn Tây",
    }
    assert split_address("Thôn 5, Tịnh Khê, Sơn Tịnh") == {}
    assert split_address("Thôn 3 - xã Bình Trị - huyện Bình Sơn") == {
        "commune": "Bình Trị",
        "district": "Bình Sơn",
    }
