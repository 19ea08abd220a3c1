"""The reply grammar: one ``REF ACTION [ARGS]`` command per line.

Pure: every date is read against the ``today`` it is given, never against a clock.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from mailtracker.domain.text import fold, nfc

Action = Literal[
    "monitor",
    "home",
    "facility",
    "hospital",
    "clear",
    "release",
    "positive",
    "transfer",
    "lost",
    "check",
    "missed",
    "note",
]


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command line; ``args`` as in the brief's parse schema."""

    ref: str
    action: Action
    args: dict[str, Any] = field(default_factory=dict)
    line: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "action": self.action, "args": dict(self.args), "line": self.line}


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that could not become a command, with the reason in both languages."""

    line: str
    reason: str
    message_vi: str
    message_en: str


@dataclass(frozen=True, slots=True)
class ReplyParse:
    """What the new text of one reply asks for, line by line."""

    commands: tuple[Command, ...]
    errors: tuple[LineError, ...]
    not_understood: tuple[str, ...]


# Folded alias -> canonical action.  Matched word by word, longest alias first, so that
# "chuyển viện" (hospital) wins over "chuyển" (transfer).
ALIASES: dict[str, Action] = {
    "monitor": "monitor",
    "theo doi": "monitor",
    "giam sat": "monitor",
    "home": "home",
    "cach ly tai nha": "home",
    "cach ly nha": "home",
    "facility": "facility",
    "cach ly tap trung": "facility",
    "hospital": "hospital",
    "chuyen vien": "hospital",
    "nhap vien": "hospital",
    "clear": "clear",
    "khong nguy co": "clear",
    "loai tru": "clear",
    "release": "release",
    "ket thuc": "release",
    "hoan thanh cach ly": "release",
    "positive": "positive",
    "duong tinh": "positive",
    "transfer": "transfer",
    "chuyen": "transfer",
    "lost": "lost",
    "mat dau": "lost",
    "check": "check",
    "ok": "check",
    "binh thuong": "check",
    "missed": "missed",
    "khong lien lac duoc": "missed",
    "note": "note",
    "ghi chu": "note",
}
_ALIAS_WORDS: tuple[tuple[tuple[str, ...], Action], ...] = tuple(
    sorted(
        ((tuple(alias.split()), action) for alias, action in ALIASES.items()),
        key=lambda item: -len(item[0]),
    )
)

_DATE_ACTIONS = frozenset({"monitor", "home", "facility"})
_NOTE_ACTIONS = frozenset({"clear", "missed"})

LOWEST_TEMPERATURE = 30.0
HIGHEST_TEMPERATURE = 45.0
# A date without a year is taken in the year that puts it nearest to today; farther than
# this (29/02 outside a leap year) it is refused rather than guessed.
_NEAREST_YEAR_LIMIT = datetime.timedelta(days=183)

_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212"
_BULLET = re.compile(r"^(?:[-*+\u2022\u00b7\u2013\u2014]|\d{1,2}[.)])\s+")
_TOKEN = re.compile(r"\S+")
_TRAILING_PUNCTUATION = ":,;.!?"
_LEADING_SEPARATORS = re.compile(r"^[:\-\u2013\u2014,;.]+\s*")
_FOREIGN_REF = re.compile(rf"^[a-z]{{2,6}}[{_DASHES}]?\d+$")
_TEMPERATURE = re.compile(r"^(\d{2})(?:[.,](\d{1,2}))?(?:°c?|do|c)?$")
_TEMPERATURE_UNITS = frozenset({"°", "°c", "do", "c"})
_DATE_DAY_FIRST = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})(?:[/.\-](\d{2}|\d{4}))?$")
_DATE_ISO = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_DATE_LEAD_WORDS = ("tu ngay ", "from ", "since ", "tu ", "ngay ")
_RELATIVE_DAYS = {"today": 0, "hom nay": 0, "yesterday": 1, "hom qua": 1}

_ACTION_LIST_VI = (
    "theo dõi, cách ly tại nhà, cách ly tập trung, chuyển viện, không nguy cơ, kết thúc, "
    "dương tính, chuyển, mất dấu, ok, không liên lạc được, ghi chú"
)
_ACTION_LIST_EN = (
    "monitor, home, facility, hospital, clear, release, positive, transfer, lost, check, "
    "missed, note"
)


def _ref_pattern(prefix: str) -> str:
    return rf"{re.escape(prefix)}[{_DASHES}]?(\d+)"


def _format_ref(prefix: str, number: int) -> str | None:
    return f"{prefix.upper()}-{number:04d}" if number > 0 else None


def normalise_ref(text: str, prefix: str) -> str | None:
    """``QN-42``, ``QN42``, ``qn-0042`` or ``#42`` -> ``QN-0042``; None when not a reference."""
    candidate = text.strip()
    match = re.fullmatch(rf"(?:{_ref_pattern(prefix)}|#(\d+))", candidate, re.IGNORECASE)
    if match is None:
        return None
    digits = match.group(1) or match.group(2)
    return _format_ref(prefix, int(digits))


def subject_ref(subject: str, prefix: str) -> str | None:
    """The single case the subject names (a bracketed ``[QN-0061]`` first), else None."""
    pattern = rf"(?<![a-z0-9]){_ref_pattern(prefix)}(?!\d)"
    bracketed = {
        _format_ref(prefix, int(digits))
        for digits in re.findall(rf"\[\s*{pattern}\s*\]", subject, re.IGNORECASE)
    }
    bracketed.discard(None)
    if len(bracketed) == 1:
        return bracketed.pop()
    anywhere = {
        _format_ref(prefix, int(digits)) for digits in re.findall(pattern, subject, re.IGNORECASE)
    }
    anywhere.discard(None)
    return anywhere.pop() if len(anywhere) == 1 else None


def _error(line: str, reason: str, message_vi: str, message_en: str) -> LineError:
    return LineError(line=line, reason=reason, message_vi=message_vi, message_en=message_en)


def _bare(token: str) -> str:
    """A token folded and stripped of trailing punctuation and enclosing brackets."""
    return fold(token).strip("[]()").rstrip(_TRAILING_PUNCTUATION)


def _match_action(words: list[str]) -> tuple[Action, int] | None:
    """The action the words start with and how many words its alias takes, longest first."""
    for alias, action in _ALIAS_WORDS:
        size = len(alias)
        if len(words) >= size and tuple(words[:size]) == alias:
            return action, size
    return None


def parse_command_date(text: str, today: datetime.date) -> datetime.date | None:
    """A DATE argument (``dd/mm/yyyy``, ``d/m/yyyy``, ``dd/mm``, ``yyyy-mm-dd``, today,
    yesterday, ``hôm nay``, ``hôm qua``), read against ``today``; None when it is not one."""
    folded = fold(text).rstrip(_TRAILING_PUNCTUATION)
    for lead in _DATE_LEAD_WORDS:
        if folded.startswith(lead):
            folded = folded[len(lead) :]
            break
    if folded in _RELATIVE_DAYS:
        try:
            return today - datetime.timedelta(days=_RELATIVE_DAYS[folded])
        except OverflowError:
            return None
    if iso := _DATE_ISO.fullmatch(folded):
        return _date_or_none(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
    day_first = _DATE_DAY_FIRST.fullmatch(folded)
    if day_first is None:
        return None
    day, month, year = int(day_first.group(1)), int(day_first.group(2)), day_first.group(3)
    if year is not None:
        return _date_or_none(int(year) + (2000 if len(year) == 2 else 0), month, day)
    candidates = [
        found
        for offset in (-1, 0, 1)
        if (found := _date_or_none(today.year + offset, month, day)) is not None
    ]
    if not candidates:
        return None
    nearest = min(candidates, key=lambda found: abs(found - today))
    return nearest if abs(nearest - today) <= _NEAREST_YEAR_LIMIT else None


def _date_or_none(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _parse_temperature(words: list[str]) -> tuple[float | None, int] | None:
    """The temperature the words start with and the words it takes; None when malformed."""
    if not words or not words[0][:1].isdigit():
        return (None, 0)
    match = _TEMPERATURE.fullmatch(words[0].rstrip(_TRAILING_PUNCTUATION))
    if match is None:
        return None
    value = float(f"{match.group(1)}.{match.group(2) or '0'}")
    if not LOWEST_TEMPERATURE <= value <= HIGHEST_TEMPERATURE:
        return None
    used = 1
    while used < len(words) and used < 3 and words[used] in _TEMPERATURE_UNITS:
        used += 1
    return value, used


def _rest(line: str, spans: list[re.Match[str]], start: int) -> str | None:
    """The original text from word ``start`` on, NFC, leading separators dropped; None if empty."""
    if start >= len(spans):
        return None
    text = _LEADING_SEPARATORS.sub("", nfc(line[spans[start].start() :]))
    return text or None


def _build(
    line: str,
    spans: list[re.Match[str]],
    ref: str,
    action: Action,
    start: int,
    today: datetime.date,
) -> Command | LineError:
    """The command for ``action`` with its arguments from word ``start`` on."""
    rest = _rest(line, spans, start)
    if action in _DATE_ACTIONS:
        if rest is None:
            return Command(ref, action, {"date": None}, line)
        date = parse_command_date(rest, today)
        if date is None:
            return _error(
                line,
                "bad_date",
                f"Không hiểu ngày “{rest}”: viết dd/mm/yyyy, dd/mm, yyyy-mm-dd, hôm nay "
                "hoặc hôm qua.",
                f"Cannot read the date '{rest}': write dd/mm/yyyy, dd/mm, yyyy-mm-dd, today or "
                "yesterday.",
            )
        return Command(ref, action, {"date": date.isoformat()}, line)
    if action == "check":
        words = [_bare(span.group()) for span in spans[start:]]
        temperature = _parse_temperature(words)
        if temperature is None:
            return _error(
                line,
                "bad_temperature",
                f"Nhiệt độ “{spans[start].group()}” không hợp lệ: ghi độ C, ví dụ 37,5.",
                f"The temperature '{spans[start].group()}' is not valid: give degrees Celsius, "
                "e.g. 37.5.",
            )
        value, used = temperature
        return Command(
            ref, action, {"temperature": value, "note": _rest(line, spans, start + used)}, line
        )
    if action in _NOTE_ACTIONS:
        return Command(ref, action, {"note": rest}, line)
    if action in ("transfer", "note"):
        key = "to" if action == "transfer" else "note"
        if rest is None:
            wanted_vi, wanted_en = (
                ("nơi chuyển đến", "where to transfer")
                if action == "transfer"
                else ("nội dung ghi chú", "the text of the note")
            )
            return _error(
                line,
                "missing_argument",
                f"Thiếu {wanted_vi}.",
                f"Missing {wanted_en}.",
            )
        return Command(ref, action, {key: rest}, line)
    return Command(ref, action, {}, line)


def parse_command_line(
    line: str, *, prefix: str, today: datetime.date, default_ref: str | None
) -> Command | LineError | None:
    """One line of a reply: a command, an error, or None for a line with nothing in it.

    A line that is not a command becomes a ``note`` on ``default_ref``; without one it is a
    ``LineError`` with reason ``not_understood``.
    """
    written = unicodedata.normalize("NFC", line).strip()
    if not any(ch.isalnum() for ch in written):
        return None
    body_offset = bullet.end() if (bullet := _BULLET.match(written)) else 0
    spans = list(_TOKEN.finditer(written, body_offset))
    words = [_bare(span.group()) for span in spans]
    ref = normalise_ref(spans[0].group().strip("[]()").rstrip(_TRAILING_PUNCTUATION), prefix)
    if ref is not None:
        matched = _match_action(words[1:])
        if matched is None:
            return _error(
                written,
                "unknown_action",
                f"Sau {ref} không có lệnh nào hiểu được. Lệnh: {_ACTION_LIST_VI}.",
                f"No known action after {ref}. Actions: {_ACTION_LIST_EN}.",
            )
        action, size = matched
        return _build(written, spans, ref, action, 1 + size, today)
    matched = _match_action(words)
    if matched is None:
        if _FOREIGN_REF.fullmatch(words[0]) and _match_action(words[1:]) is not None:
            return _error(
                written,
                "unknown_ref",
                f"“{spans[0].group()}” không phải mã ca dạng {prefix.upper()}-0042.",
                f"'{spans[0].group()}' is not a case reference like {prefix.upper()}-0042.",
            )
        if default_ref is None:
            return _error(
                written,
                "not_understood",
                "Không hiểu dòng này, và tiêu đề thư không nêu đúng một ca để ghi chú.",
                "Not understood, and the subject names no single case to note it on.",
            )
        return Command(default_ref, "note", {"note": nfc(written)}, written)
    if default_ref is None:
        return _error(
            written,
            "no_case",
            f"Thiếu mã ca: ghi mã ở đầu dòng, ví dụ {prefix.upper()}-0042.",
            f"No case reference: start the line with one, e.g. {prefix.upper()}-0042.",
        )
    action, size = matched
    return _build(written, spans, default_ref, action, size, today)


def parse_reply(text: str, *, subject: str, prefix: str, today: datetime.date) -> ReplyParse:
    """Every line of the new text of a reply, each standing alone."""
    default_ref = subject_ref(subject, prefix)
    commands: list[Command] = []
    errors: list[LineError] = []
    not_understood: list[str] = []
    for line in text.splitlines():
        result = parse_command_line(line, prefix=prefix, today=today, default_ref=default_ref)
        if isinstance(result, Command):
            commands.append(result)
        elif isinstance(result, LineError):
            if result.reason == "not_understood":
                not_understood.append(result.line)
            else:
                errors.append(result)
    return ReplyParse(tuple(commands), tuple(errors), tuple(not_understood))
