"""Who may change which case: the same decision for every channel (pure).

The actor must be on some unit's ``staff``; a ``lead`` unit may change any case, a
``member`` unit only the cases it owns, an ``observer`` unit none. When a reply token has
already established the unit a message was sent to, the actor must be on *that* unit's staff
and that unit's role decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal

Role = Literal["lead", "member", "observer"]
AuthCode = Literal["allowed", "not_staff", "unknown_unit", "observer", "not_owner"]


@dataclass(frozen=True, slots=True)
class UnitAccess:
    """A configured unit as authorization sees it (``staff``: e-mail addresses)."""

    id: str
    role: Role
    staff: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The decision; ``unit`` is the unit the actor acts for, when one was found."""

    allowed: bool
    code: AuthCode
    unit: str | None
    message_vi: str
    message_en: str

    def message(self, language: Literal["vi", "en"]) -> str:
        return self.message_vi if language == "vi" else self.message_en


def normalize_address(address: str) -> str:
    """The bare e-mail address, case-folded (``Epi <EPI@x.org>`` -> ``epi@x.org``); "" if none."""
    bare = parseaddr(address)[1].strip().casefold()
    return bare if "@" in bare else ""


def is_staff(actor: str, unit: UnitAccess) -> bool:
    """Whether ``actor`` is on ``unit``'s staff list (case-insensitive)."""
    address = normalize_address(actor)
    return bool(address) and address in {normalize_address(member) for member in unit.staff}


def authorize(
    actor: str,
    case_owner: str,
    units: Sequence[UnitAccess],
    *,
    token_unit: str | None = None,
) -> AuthDecision:
    """May ``actor`` change a case owned by ``case_owner``?

    Without ``token_unit`` (the CLI), every unit the actor belongs to counts and the most
    permissive one decides. With it (a reply carrying a valid token), only that unit counts.
    """
    address = normalize_address(actor) or actor.strip()
    if token_unit is not None:
        unit = next((u for u in units if u.id == token_unit), None)
        if unit is None:
            return _refused(
                "unknown_unit",
                None,
                f"đơn vị {token_unit} không có trong cấu hình",
                f"unit {token_unit} is not configured",
            )
        if not is_staff(address, unit):
            return _refused(
                "not_staff",
                unit.id,
                f"{address} không thuộc danh sách cán bộ của đơn vị {unit.id}",
                f"{address} is not on the staff of unit {unit.id}",
            )
        return _decide(unit, case_owner)
    memberships = [unit for unit in units if is_staff(address, unit)]
    if not memberships:
        return _refused(
            "not_staff",
            None,
            f"{address} không thuộc danh sách cán bộ của đơn vị nào",
            f"{address} is not on any unit's staff",
        )
    decisions = [_decide(unit, case_owner) for unit in memberships]
    return next((d for d in decisions if d.allowed), decisions[0])


def _decide(unit: UnitAccess, case_owner: str) -> AuthDecision:
    if unit.role == "lead" or (unit.role == "member" and unit.id == case_owner):
        return AuthDecision(True, "allowed", unit.id, "", "")
    if unit.role == "member":
        return _refused(
            "not_owner",
            unit.id,
            f"đơn vị {unit.id} chỉ cập nhật được hồ sơ của mình; hồ sơ này thuộc {case_owner}",
            f"unit {unit.id} may only update its own cases; this one belongs to {case_owner}",
        )
    return _refused(
        "observer",
        unit.id,
        f"đơn vị {unit.id} chỉ được xem, không được cập nhật hồ sơ",
        f"unit {unit.id} is an observer and may not update cases",
    )


def _refused(code: AuthCode, unit: str | None, vi: str, en: str) -> AuthDecision:
    return AuthDecision(False, code, unit, vi, en)
