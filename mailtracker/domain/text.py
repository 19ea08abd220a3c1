"""Vietnamese-aware text helpers: folding, whitespace, NFC, dates, phones and place names."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import ParamSpec, TypeVar, cast

import phonenumbers

_T = TypeVar("_T")
_P = ParamSpec("_P")


def remembered(
    max_chars: int = 256, maxsize: int = 4096
) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """A decorator: a pure function of texts (positional ``str`` arguments, an immutable
    result) remembering its results while its arguments are at most ``max_chars`` long
    together (labels, header and field values); longer texts are computed each time, so the
    memory stays bounded."""

    def decorate(function: Callable[_P, _T]) -> Callable[_P, _T]:
        plain = cast("Callable[..., _T]", function)
        cached = lru_cache(maxsize=maxsize)(plain)

        @wraps(function)
        def call(*args: str) -> _T:
            return (cached if sum(map(len, args)) <= max_chars else plain)(*args)

        return cast("Callable[_P, _T]", call)

    return decorate


_SPACES = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
"""Whitespace and control characters (a terminal escape in a report must not reach a screen)."""


@remembered()
def nfc(text: str) -> str:
    """NFC form with runs of whitespace and control characters collapsed to one space and ends
    stripped."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


@remembered()
def fold(text: str) -> str:
    """Lower-case, strip diacritics (đ -> d) and collapse whitespace, for matching."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", bare).strip().casefold()


# --- dates -----------------------------------------------------------------------------------

_ISO_DATE = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_DAY_FIRST = re.compile(r"(?<!\d)(\d{1,2})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{4})(?!\d)")
_WORDY = re.compile(r"(?<!\d)(\d{1,2})\s+thang\s+(\d{1,2})\s*(?:nam|,|/|-)?\s*(\d{4})(?!\d)")
_DAY_FIRST_SHORT = re.compile(r"(?<![\d.])(\d{1,2})\s*([-/.])\s*(\d{1,2})\s*\2\s*(\d{2})(?![\d.])")
_CENTURY_PIVOT = 70
"""A two-digit year below this is 20yy, else 19yy (as POSIX ``strptime %y``)."""
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|2[01]\d\d)(?!\d)")


def _date(year: str, month: str, day: str) -> dt.date | None:
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


@remembered()
def parse_date(text: str) -> dt.date | None:
    """The first date in ``text``, read day first.

    Accepts ``12/02/2020``, ``12-02-2020``, ``12.02.2020``, ``2020-02-12`` (ISO),
    ``ngày 12 tháng 02 năm 2020``, with anything (a time, a weekday) around it; a
    two-digit year (``12/02/20``) only when no four-digit one is there.
    """
    folded = fold(text)
    candidates: list[tuple[int, dt.date | None]] = []
    for match in _ISO_DATE.finditer(folded):
        candidates.append((match.start(), _date(match[1], match[2], match[3])))
    for match in _DAY_FIRST.finditer(folded):
        candidates.append((match.start(), _date(match[3], match[2], match[1])))
    for match in _WORDY.finditer(folded):
        candidates.append((match.start(), _date(match[3], match[2], match[1])))
    valid = sorted((pos, day) for pos, day in candidates if day is not None)
    if valid:
        return valid[0][1]
    for match in _DAY_FIRST_SHORT.finditer(folded):
        short = int(match[4])
        year = 2000 + short if short < _CENTURY_PIVOT else 1900 + short
        day = _date(str(year), match[3], match[1])
        if day is not None:
            return day
    return None


def parse_year(text: str) -> int | None:
    """A year of birth: the year of a date, or a bare four-digit year (1800-2199)."""
    day = parse_date(text)
    if day is not None:
        return day.year
    match = _YEAR.search(text)
    return int(match[1]) if match else None


# --- phones ----------------------------------------------------------------------------------

_PHONE_RUN = re.compile(r"\+?\(?\d[\d\s().\-]{6,}\d")


@remembered()
def normalise_phone(text: str) -> str | None:
    """The first phone number in ``text`` in national digits: ``+84 905 123 456`` -> ``0905123456``.

    Numbers the ``phonenumbers`` library cannot place are returned as their bare digits.
    """
    match = _PHONE_RUN.search(unicodedata.normalize("NFKC", text))
    if match is None:
        return None
    candidate = match.group(0)
    digits = re.sub(r"\D", "", candidate)
    try:
        number = phonenumbers.parse(candidate, "VN")
    except phonenumbers.NumberParseException:
        return digits or None
    if number.country_code == 84 and phonenumbers.is_possible_number(number):
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        return re.sub(r"\D", "", national)
    if number.country_code != 84 and phonenumbers.is_valid_number(number):
        return re.sub(
            r"\D", "", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        )
    return digits or None


# --- place names -----------------------------------------------------------------------------

# Administrative words with the level they name. ``None``: decided by context (thành phố).
_ADMIN_WORDS: tuple[tuple[str, str | None], ...] = (
    ("thị trấn", "commune"),
    ("xã", "commune"),
    ("phường", "commune"),
    ("thị xã", "district"),
    ("huyện", "district"),
    ("quận", "district"),
    ("thành phố", None),
    ("tp.", None),
    ("tp", None),
    ("t.p.", None),
    ("tỉnh", "province"),
)
# Unaccented spellings are taken only in lower case: a capitalised ``Tinh`` may be ``Tịnh``.
_ASCII_ADMIN_WORDS: tuple[tuple[str, str | None], ...] = (
    ("thi tran", "commune"),
    ("xa", "commune"),
    ("phuong", "commune"),
    ("thi xa", "district"),
    ("huyen", "district"),
    ("quan", "district"),
    ("thanh pho", None),
    ("tinh", "province"),
)
_CENTRAL_CITIES = frozenset({"ha noi", "ho chi minh", "hai phong", "da nang", "can tho", "hue"})


def _split_admin(name: str) -> tuple[str | None, str]:
    """(level word's level or "city", bare name) for one place segment; level None if no word."""
    text = nfc(name)
    lowered = text.lower()
    for word, level in _ADMIN_WORDS:
        if lowered.startswith(word) and (
            len(text) == len(word) or not text[len(word)].isalnum() or word.endswith(".")
        ):
            rest = text[len(word) :].lstrip(" .:-")
            if rest:
                return level or "city", rest
    for word, level in _ASCII_ADMIN_WORDS:
        if text.startswith(word + " "):
            rest = text[len(word) :].strip()
            if rest:
                return level or "city", rest
    return None, text


@remembered()
def strip_admin(name: str) -> str | None:
    """A place name without its administrative word (``huyện Sơn Tịnh`` -> ``Sơn Tịnh``).

    A numbered ward or district (``Phường 3``) keeps its word: the number alone names nothing.
    """
    text = nfc(name)
    if not text:
        return None
    _, bare = _split_admin(text)
    return text if bare.isdigit() else bare


def split_address(address: str) -> dict[str, str]:
    """Commune, district and province named in an address by their administrative words.

    ``Thôn 1, xã Tịnh Hà, huyện Sơn Tịnh, tỉnh Quảng Ngãi`` gives all three. ``thành phố``
    (``TP``) is a district unless a district came before it or it is a centrally-run city.
    """
    found: dict[str, str] = {}
    for segment in re.split(r"\s*[,;]\s*|\s+-\s+", nfc(address)):
        level, bare = _split_admin(segment)
        if level is None or not bare:
            continue
        if level == "city":
            city_is_province = "district" in found or fold(bare) in _CENTRAL_CITIES
            level = "province" if city_is_province else "district"
        found.setdefault(level, segment if bare.isdigit() else bare)
    return found
