"""The normalised risk report: one person as reported by the declaration app."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

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
