"""The normalised risk report: one person as reported by the declaration app."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mailtracker.domain.text import (
    fold,
    nfc,
    normalise_phone,
    parse_date,
    parse_year,
    split_address,
    strip_admin,
)

Risk = Literal["high", "medium", "low"]
Gender = Literal["male", "female"]

SYMPTOMS: tuple[str, ...] = (
    "fever",
    "cough",
    "shortness_of_breath",
    "sore_throat",
    "fatigue",
    "runny_nose",
    "headache",
    "muscle_pain",
)


@dataclass(frozen=True, slots=True)
class Report:
    """One person's report, every field normalised (see the brief's parse schema)."""

    full_name: str | None = None
    phone: str | None = None
    birth_year: int | None = None
    gender: Gender | None = None
    id_number: str | None = None
    address: str | None = None
    commune: str | None = None
    district: str | None = None
    province: str | None = None
    symptoms: tuple[str, ...] = field(default_factory=tuple)
    came_from: str | None = None
    contact: str | None = None
    arrival_date: dt.date | None = None
    report_date: dt.date | None = None
    report_id: str | None = None
    risk: Risk = "low"

    def to_json(self) -> dict[str, Any]:
        """The report as the JSON object of ``parse --json`` (key order included)."""
        return {
            "full_name": self.full_name,
            "phone": self.phone,
            "birth_year": self.birth_year,
            "gender": self.gender,
            "id_number": self.id_number,
            "address": self.address,
            "commune": self.commune,
            "district": self.district,
            "province": self.province,
            "symptoms": list(self.symptoms),
            "came_from": self.came_from,
            "contact": self.contact,
            "arrival_date": self.arrival_date.isoformat() if self.arrival_date else None,
            "report_date": self.report_date.isoformat() if self.report_date else None,
            "report_id": self.report_id,
            "risk": self.risk,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_json`."""

        def date(value: Any) -> dt.date | None:
            return dt.date.fromisoformat(value) if value else None

        return cls(
            full_name=data.get("full_name"),
            phone=data.get("phone"),
            birth_year=data.get("birth_year"),
            gender=data.get("gender"),
            id_number=data.get("id_number"),
            address=data.get("address"),
            commune=data.get("commune"),
            district=data.get("district"),
            province=data.get("province"),
            symptoms=tuple(data.get("symptoms") or ()),
            came_from=data.get("came_from"),
            contact=data.get("contact"),
            arrival_date=date(data.get("arrival_date")),
            report_date=date(data.get("report_date")),
            report_id=data.get("report_id"),
            risk=data.get("risk") or "low",
        )


# --- label vocabulary ------------------------------------------------------------------------

LABELS: dict[str, tuple[str, ...]] = {
    "full_name": ("Họ và tên", "Họ tên", "Tên"),
    "phone": ("Số điện thoại", "Điện thoại", "SĐT"),
    "birth_year": ("Năm sinh", "Ngày sinh"),
    "gender": ("Giới tính",),
    "id_number": ("CMND", "CCCD", "CMND/CCCD", "Số CMND/CCCD/Hộ chiếu", "Hộ chiếu"),
    "address": ("Địa chỉ", "Địa chỉ nơi ở", "Nơi ở hiện nay"),
    "commune": ("Xã/Phường", "Phường/Xã", "Xã"),
    "district": ("Quận/Huyện", "Huyện", "Huyện/Thành phố"),
    "province": ("Tỉnh/Thành phố", "Tỉnh"),
    "symptoms": ("Triệu chứng", "Biểu hiện"),
    "came_from": ("Đi về từ", "Về từ vùng dịch", "Nơi đi", "Lịch trình di chuyển"),
    "contact": ("Tiếp xúc", "Tiếp xúc với", "Tiền sử tiếp xúc"),
    "arrival_date": ("Ngày về", "Ngày nhập cảnh", "Ngày đến"),
    "report_date": ("Ngày khai báo", "Thời gian khai báo"),
    "report_id": ("Mã khai báo", "Mã hồ sơ"),
    "risk": ("Mức độ nguy cơ", "Nguy cơ"),
}
"""The brief's vocabulary: canonical field -> the labels that name it."""

_EXTRA_LABELS: dict[str, tuple[str, ...]] = {
    "phone": ("Số ĐT", "Di động", "Số di động"),
    "id_number": ("Số CMND", "Số CCCD", "Số hộ chiếu", "Số định danh"),
    "commune": ("Phường", "Thị trấn"),
    "district": ("Quận", "Thị xã"),
}


def _label_key(label: str) -> str:
    key = re.sub(r"\(.*?\)|\*", " ", fold(label)).strip().rstrip(" :：.")
    key = re.sub(r"\s*/\s*", "/", key)
    return re.sub(r"^[\-*•+]\s*|^\d{1,2}[.)]\s*", "", key).strip()


_LABEL_INDEX: dict[str, str] = {
    _label_key(label): name
    for vocabulary in (_EXTRA_LABELS, LABELS)
    for name, labels in vocabulary.items()
    for label in labels
}


def field_for_label(label: str) -> str | None:
    """The canonical field a label names, ignoring case, diacritics, NFC/NFD and a colon.

    A compound label (``CCCD/CMND``, ``Xã/Phường/Thị trấn``) names a field when every part
    that is a label names that same field; a leading ``Số`` (number) is optional.
    """
    key = _label_key(label)
    if not key or len(key) > 60:
        return None
    for candidate in (key, key.removeprefix("so ")):
        if candidate in _LABEL_INDEX:
            return _LABEL_INDEX[candidate]
    if "/" in key:
        named = {field_for_label(part) for part in key.split("/") if part.strip()}
        named.discard(None)
        if len(named) == 1:
            return named.pop()
    return None


# --- value normalisers -----------------------------------------------------------------------

_NONE_WORDS = frozenset(
    {
        "",
        "-",
        "--",
        "x",
        "khong",
        "khong co",
        "khong ro",
        "chua",
        "khong tiep xuc",
        "none",
        "no",
        "n/a",
        "na",
        "null",
    }
)

_SYMPTOM_WORDS: dict[str, tuple[str, ...]] = {  # regular expressions over folded text
    "fever": ("sot", "fever"),
    "cough": (r"ho(?! hap)", "cough"),
    "shortness_of_breath": ("kho tho", "shortness of breath", "breathing difficulty"),
    "sore_throat": ("dau hong", "rat hong", "viem hong", "sore throat"),
    "fatigue": ("met moi", "met", "fatigue", "tiredness"),
    "runny_nose": ("so mui", "chay nuoc mui", "chay mui", "runny nose"),
    "headache": ("dau dau", "nhuc dau", "headache"),
    "muscle_pain": ("dau moi co", "dau co", "moi co", "nhuc moi", "muscle pain"),
}
_SYMPTOM_PATTERNS = {
    name: re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)")
    for name, words in _SYMPTOM_WORDS.items()
}
_NEGATION = re.compile(r"^(?:khong|no|not|chua)\b")


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = nfc(value)
    return text or None


def _meaningful(value: str | None) -> str | None:
    """The value, or None when it is empty or says "none" (``Không``)."""
    text = _clean(value)
    if text is None or fold(text).rstrip(".") in _NONE_WORDS:
        return None
    return text


def parse_symptoms(text: str) -> tuple[str, ...]:
    """Symptoms named in ``text``, in vocabulary order; negated items (``không sốt``) skipped."""
    named: set[str] = set()
    for item in re.split(r"[,;/+\n]|\bva\b|\band\b", fold(text)):
        item = item.strip(" .")
        if not item or _NEGATION.match(item):
            continue
        named.update(name for name, pattern in _SYMPTOM_PATTERNS.items() if pattern.search(item))
    return tuple(name for name in SYMPTOMS if name in named)


def parse_gender(text: str) -> Gender | None:
    """``Nam`` -> male, ``Nữ`` -> female (English and one-letter forms too)."""
    word = fold(text).split(" ")[0].rstrip(".") if text.strip() else ""
    if word in {"nam", "male", "m", "trai"}:
        return "male"
    if word in {"nu", "female", "f", "gai"}:
        return "female"
    return None


def parse_risk(text: str) -> Risk | None:
    """A stated risk level: ``Cao``/``Trung bình``/``Thấp`` (or English) -> high/medium/low."""
    folded = fold(text)
    for words, level in (
        (("rat cao", "cao", "high"), "high"),
        (("trung binh", "vua", "medium", "moderate"), "medium"),
        (("thap", "low"), "low"),
    ):
        if any(re.search(rf"(?<!\w){word}(?!\w)", folded) for word in words):
            return level  # type: ignore[return-value]
    return None


def risk_rule(symptoms: tuple[str, ...], exposed: bool) -> Risk:
    """high: symptoms and an exposure; medium: an exposure only; low otherwise."""
    if exposed:
        return "high" if symptoms else "medium"
    return "low"


def _id_number(value: str | None) -> str | None:
    text = _meaningful(value)
    return re.sub(r"[\s.]", "", text) if text else None


_IDENTIFYING = ("full_name", "phone", "id_number", "report_id")


def build_report(fields: Mapping[str, str]) -> Report | None:
    """A normalised report from canonical field name -> raw value (see :data:`LABELS`).

    None when nothing identifies a person (no name, phone, ID number or report ID).
    """
    raw = {name: value for name, value in fields.items() if name in LABELS}
    full_name = _meaningful(raw.get("full_name"))
    phone = normalise_phone(raw.get("phone") or "")
    id_number = _id_number(raw.get("id_number"))
    report_id = _meaningful(raw.get("report_id"))
    if not (full_name or phone or id_number or report_id):
        return None
    address = _meaningful(raw.get("address"))
    from_address = split_address(address) if address else {}
    places: dict[str, str | None] = {}
    for level in ("commune", "district", "province"):
        own = _meaningful(raw.get(level))
        places[level] = strip_admin(own) if own else from_address.get(level)
    symptoms = parse_symptoms(raw.get("symptoms") or "")
    came_from = _meaningful(raw.get("came_from"))
    contact = _meaningful(raw.get("contact"))
    stated = parse_risk(raw.get("risk") or "")
    return Report(
        full_name=full_name,
        phone=phone,
        birth_year=parse_year(raw.get("birth_year") or ""),
        gender=parse_gender(raw.get("gender") or ""),
        id_number=id_number,
        address=address,
        commune=places["commune"],
        district=places["district"],
        province=places["province"],
        symptoms=symptoms,
        came_from=came_from,
        contact=contact,
        arrival_date=parse_date(raw.get("arrival_date") or ""),
        report_date=parse_date(raw.get("report_date") or ""),
        report_id=report_id,
        risk=stated or risk_rule(symptoms, bool(came_from or contact)),
    )
