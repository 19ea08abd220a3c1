"""Applying commands to stored cases: the one code path for ``mailtracker apply`` and replies.

:class:`CaseService` finds the case (locking its row), authorizes the actor
(:mod:`mailtracker.domain.authz`), applies the pure workflow (:mod:`mailtracker.domain.workflow`)
and writes the result: the case row, a follow-up row, and an event in the case's history.
Every attempt is recorded: a refusal is an event ``refused`` on the case it names, or a row of
the reply log when no stored case could be named. The caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailtracker.config import Config, Language
from mailtracker.domain.authz import UnitAccess, authorize, is_staff, normalize_address
from mailtracker.domain.commands import Command, LineError, normalise_ref, parse_command_line
from mailtracker.domain.workflow import (
    Outcome,
    Refusal,
    Status,
    Transition,
    apply,
    is_overdue,
    local_day,
)
from mailtracker.store.models import Case, CaseEvent, CaseUnit, Followup, ReplyLog
from mailtracker.store.queries import case_state
from mailtracker.store.queries import store_state as apply_state

__all__ = [
    "CaseService",
    "Channel",
    "LineOutcome",
    "apply_state",
    "case_state",
    "is_case_overdue",
]

log = logging.getLogger(__name__)

Channel = Literal["email", "cli", "system"]

APPLIED = "applied"
REFUSED = "refused"
# Line errors raised while reading the arguments of an action written without a reference:
# they concern the case the reply's subject names.
_ARGUMENT_ERRORS = frozenset({"bad_date", "bad_temperature", "missing_argument"})

STATUS_VI: Mapping[Status, str] = {
    "new": "mới",
    "monitoring": "theo dõi y tế",
    "home_isolation": "cách ly tại nhà",
    "facility_isolation": "cách ly tập trung",
    "hospital": "chuyển viện",
    "closed": "đã đóng",
}
STATUS_EN: Mapping[Status, str] = {
    "new": "new",
    "monitoring": "medical monitoring",
    "home_isolation": "home isolation",
    "facility_isolation": "facility isolation",
    "hospital": "hospital",
    "closed": "closed",
}
OUTCOME_VI: Mapping[Outcome, str] = {
    "cleared": "loại trừ",
    "released": "hoàn thành",
    "positive": "dương tính",
    "transferred": "chuyển đi",
    "lost": "mất dấu",
}
FOLLOWUP_VI = {"ok": "bình thường", "symptoms": "có triệu chứng", "missed": "không liên lạc được"}
FOLLOWUP_EN = {"ok": "ok", "symptoms": "symptoms", "missed": "missed"}


@dataclass(frozen=True)
class LineOutcome:
    """What became of one command line, for the acknowledgement or the command line.

    ``code`` is ``applied`` or a refusal code; the messages name the case. ``status`` and
    ``deadline`` (``dd/mm/yyyy``, with the local time for a timestamp) are the case's after
    the line; ``deadline_at`` is that deadline as a value (a UTC timestamp or a local date).
    ``alert``: a follow-up found symptoms and the owning unit must be alerted now.
    """

    line: str
    ref: str | None
    action: str | None
    applied: bool
    code: str
    message_vi: str
    message_en: str
    status: str | None = None
    deadline: str | None = None
    alert: bool = False
    deadline_at: dt.date | dt.datetime | None = None

    def message(self, language: Language) -> str:
        return self.message_vi if language == "vi" else self.message_en

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.deadline_at is not None:
            data["deadline_at"] = self.deadline_at.isoformat()
        return data


def is_case_overdue(case: Case, now: dt.datetime, config: Config) -> bool:
    """For ``cases --overdue``: an overdue verification or follow-up, or a period due for
    release."""
    return is_overdue(case_state(case), now, config.tracker.timezone)


class CaseService:
    """Applies command lines to stored cases with the configured units, rules and time zone."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tz = config.tracker.timezone
        self.prefix = config.tracker.case_prefix
        self.units = tuple(UnitAccess(unit.id, unit.role, unit.staff) for unit in config.units)
        self.unit_ids = tuple(unit.id for unit in config.units)

    def language_for(self, actor: str) -> Language:
        """The language of the first unit ``actor`` is staff of, else the tracker's."""
        for access, unit in zip(self.units, self.config.units, strict=True):
            if is_staff(actor, access):
                return unit.language
        return self.config.tracker.language

    def apply_line(
        self,
        session: Session,
        line: str,
        *,
        actor: str,
        channel: Channel,
        now: dt.datetime,
        today: dt.date | None = None,
        default_ref: str | None = None,
        token_unit: str | None = None,
        message_id: int | None = None,
    ) -> LineOutcome:
        """Parse one line (dates read against ``today``, default: the local day of ``now``)
        and apply it. A line with nothing in it is refused as ``empty`` and not recorded."""
        day = today if today is not None else local_day(now, self.tz)
        parsed = parse_command_line(line, prefix=self.prefix, today=day, default_ref=default_ref)
        if parsed is None:
            return LineOutcome(
                line.strip(), None, None, False, "empty", "Dòng trống.", "The line is empty."
            )
        return self.apply_command(
            session,
            parsed,
            actor=actor,
            channel=channel,
            now=now,
            token_unit=token_unit,
            message_id=message_id,
            default_ref=default_ref,
        )

    def apply_command(
        self,
        session: Session,
        command: Command | LineError,
        *,
        actor: str,
        channel: Channel,
        now: dt.datetime,
        token_unit: str | None = None,
        message_id: int | None = None,
        default_ref: str | None = None,
    ) -> LineOutcome:
        """Apply a parsed command, or record a line that could not be parsed as refused.

        ``default_ref`` (the case the reply's subject names) is where a line error about the
        arguments of an action written without a reference is recorded.
        """
        if isinstance(command, LineError):
            ref = self._error_ref(command, default_ref)
            return self.refuse_line(
                session,
                command.line,
                ref=ref,
                action=None,
                code=command.reason,
                message_vi=command.message_vi,
                message_en=command.message_en,
                actor=actor,
                channel=channel,
                now=now,
                message_id=message_id,
            )

        def refuse(code: str, vi: str, en: str, unit: str | None = None) -> LineOutcome:
            return self.refuse_line(
                session,
                command.line,
                ref=command.ref,
                action=command.action,
                code=code,
                message_vi=vi,
                message_en=en,
                actor=actor,
                channel=channel,
                now=now,
                message_id=message_id,
                unit=unit,
            )

        case = self._lock(session, command.ref)
        if case is None:
            return refuse(
                "unknown_case", f"{command.ref}: không có ca này", f"{command.ref}: no such case"
            )
        decision = authorize(actor, case.owner_unit, self.units, token_unit=token_unit)
        if not decision.allowed:
            return refuse(decision.code, decision.message_vi, decision.message_en, decision.unit)
        result = apply(
            case_state(case),
            command,
            now=now,
            tz=self.tz,
            rules=self.config.rules,
            units=self.unit_ids,
        )
        if isinstance(result, Refusal):
            return refuse(result.code, result.message_vi, result.message_en, decision.unit)
        return self._record(
            session, case, command, result, actor, channel, now, message_id, decision.unit
        )

    def refuse_line(
        self,
        session: Session,
        line: str,
        *,
        ref: str | None,
        action: str | None,
        code: str,
        message_vi: str,
        message_en: str,
        actor: str,
        channel: Channel,
        now: dt.datetime,
        message_id: int | None = None,
        unit: str | None = None,
    ) -> LineOutcome:
        """Record a refused line: an event ``refused`` on the case ``ref`` names when it is
        stored, else a row of the reply log. Also for refusals decided before a line reaches
        the workflow (a missing or expired reply token)."""
        message_vi = _naming(ref, message_vi)
        message_en = _naming(ref, message_en)
        case = self._lock(session, ref) if ref is not None else None
        if case is None:
            session.add(
                ReplyLog(
                    at=now,
                    message_id=message_id,
                    sender=_actor(actor),
                    line=line,
                    reason=f"{code}: {message_en}",
                )
            )
            status: str | None = None
            deadline: dt.date | dt.datetime | None = None
        else:
            details: dict[str, Any] = {
                "code": code,
                "reason": message_en,
                "line": line,
                "requested": action,
            }
            if unit is not None:
                details["unit"] = unit
            session.add(
                CaseEvent(
                    case_id=case.id,
                    at=now,
                    actor=_actor(actor),
                    channel=channel,
                    action=REFUSED,
                    from_status=case.status,
                    to_status=case.status,
                    message_id=message_id,
                    details=details,
                )
            )
            status, deadline = case.status, _deadline(case)
        session.flush()
        log.info("%s %s by %s: refused (%s)", ref or "-", action or "-", channel, code)
        return LineOutcome(
            line=line,
            ref=ref,
            action=action,
            applied=False,
            code=code,
            message_vi=message_vi,
            message_en=message_en,
            status=status,
            deadline=self._format(deadline),
            deadline_at=deadline,
        )

    # -- internals -----------------------------------------------------------------------------

    def _lock(self, session: Session, ref: str) -> Case | None:
        """The case with this reference, its row locked for the rest of the transaction."""
        statement = (
            select(Case)
            .where(Case.ref == ref)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return session.scalars(statement).first()

    def _error_ref(self, error: LineError, default_ref: str | None) -> str | None:
        """The case a line that could not be parsed is about, when it names one."""
        words = error.line.split(maxsplit=1)
        if words:
            ref = normalise_ref(words[0].strip("[]()").rstrip(":,;.!?"), self.prefix)
            if ref is not None:
                return ref
        return default_ref if error.reason in _ARGUMENT_ERRORS else None

    def _record(
        self,
        session: Session,
        case: Case,
        command: Command,
        transition: Transition,
        actor: str,
        channel: Channel,
        now: dt.datetime,
        message_id: int | None,
        unit: str | None,
    ) -> LineOutcome:
        apply_state(case, transition.state)
        case.updated_at = now
        if transition.to_status == "closed" and transition.from_status != "closed":
            case.closed_at = now
        who = _actor(actor)
        if transition.reassign_to is not None and not any(
            seen.unit_id == transition.reassign_to for seen in case.units
        ):
            session.add(CaseUnit(case_id=case.id, unit_id=transition.reassign_to, added_at=now))
        followup = transition.followup
        if followup is not None:
            session.add(
                Followup(
                    case_id=case.id,
                    at=followup.at,
                    result=followup.result,
                    temperature=followup.temperature,
                    note=followup.note,
                    actor=who,
                    channel=channel,
                )
            )
        details = dict(transition.details)
        details["line"] = command.line
        if unit is not None:
            details["unit"] = unit
        session.add(
            CaseEvent(
                case_id=case.id,
                at=now,
                actor=who,
                channel=channel,
                action=transition.action,
                from_status=transition.from_status,
                to_status=transition.to_status,
                message_id=message_id,
                details=details,
            )
        )
        session.flush()
        log.info("%s %s by %s: applied", command.ref, command.action, channel)
        deadline = _deadline(case)
        vi, en = self._messages(case, transition, deadline)
        return LineOutcome(
            line=command.line,
            ref=command.ref,
            action=command.action,
            applied=True,
            code=APPLIED,
            message_vi=f"{command.ref}: {vi}",
            message_en=f"{command.ref}: {en}",
            status=case.status,
            deadline=self._format(deadline),
            alert=transition.alert,
            deadline_at=deadline,
        )

    def _messages(
        self, case: Case, transition: Transition, deadline: dt.date | dt.datetime | None
    ) -> tuple[str, str]:
        """What was done and where the case now stands, in Vietnamese and English."""
        shown = self._format(deadline)
        status: Status = transition.to_status
        vi, en = STATUS_VI[status], STATUS_EN[status]
        if status == "closed":
            outcome = transition.state.outcome
            assert outcome is not None  # a closed case has an outcome
            vi_outcome, en_outcome = OUTCOME_VI[outcome], str(outcome)
            target = transition.details.get("to")
            if outcome == "transferred" and target:
                vi_outcome, en_outcome = f"{vi_outcome}: {target}", f"{en_outcome}: {target}"
            vi, en = f"{vi} ({vi_outcome})", f"{en} ({en_outcome})"
        elif status == "new" and shown:
            vi, en = f"{vi}, xác minh trước {shown}", f"{en}, verify by {shown}"
        elif status == "hospital" and shown:
            vi, en = f"{vi}, theo dõi tiếp trước {shown}", f"{en}, next follow-up by {shown}"
        elif shown:
            vi, en = f"{vi} đến {shown}", f"{en} until {shown}"
        followup = transition.followup
        if followup is not None:
            reading = f", {followup.temperature:g}°C" if followup.temperature is not None else ""
            vi_done = f"theo dõi: {FOLLOWUP_VI[followup.result]}{reading.replace('.', ',')}"
            en_done = f"follow-up: {FOLLOWUP_EN[followup.result]}{reading}"
            if transition.alert:
                vi_done, en_done = f"{vi_done} (báo động)", f"{en_done} (alert)"
            return f"{vi_done}; {vi}", f"{en_done}; {en}"
        if transition.reassign_to is not None:
            unit = transition.reassign_to
            return f"chuyển cho đơn vị {unit}; {vi}", f"transferred to unit {unit}; {en}"
        if transition.action == "note":
            return f"đã ghi chú; {vi}", f"note added; {en}"
        return vi, en

    def _format(self, deadline: dt.date | dt.datetime | None) -> str | None:
        if isinstance(deadline, dt.datetime):
            return deadline.astimezone(self.tz).strftime("%d/%m/%Y %H:%M")
        return deadline.strftime("%d/%m/%Y") if deadline is not None else None


def _deadline(case: Case) -> dt.date | dt.datetime | None:
    """The case's next deadline: verify-by, the period's end, else the next follow-up."""
    if case.verify_by is not None:
        return case.verify_by
    if case.period_end is not None:
        return case.period_end
    return case.next_followup_due


def _actor(actor: str) -> str:
    return normalize_address(actor) or actor.strip()


def _naming(ref: str | None, message: str) -> str:
    """``message`` prefixed with the case reference unless it already names it."""
    return message if ref is None or ref in message else f"{ref}: {message}"
