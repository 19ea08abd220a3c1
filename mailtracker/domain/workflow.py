"""Case statuses, transitions and deadlines (pure; no clock, no I/O).

Every function takes the current time as an argument (``now``, an aware datetime) and the
tracker's time zone (``tz``) where calendar days matter. Timestamps in a :class:`CaseState`
are UTC; dates (period start and end) are calendar days in ``tz``.

Transition table (``ALLOWED``; a missing cell is refused). ``mon``/``home``/``fac`` are the
period statuses monitoring, home_isolation and facility_isolation.

============  =======  ===========  ===========  ===========  ========  ======
action        new      mon          home         fac          hospital  closed
============  =======  ===========  ===========  ===========  ========  ======
monitor       enter    restart [1]  enter        enter        enter     -
home          enter    enter        restart [1]  enter        enter     -
facility      enter    enter        enter        restart [1]  enter     -
hospital      enter    enter        enter        enter        -         -
clear         close    close        close        close        close     -
release       -        release [2]  release [2]  release [2]  release   -
positive      close    close        close        close        close     -
transfer      transfer transfer     transfer     transfer     transfer  -
lost          close    close        close        close        close     -
check         -        follow_up    follow_up    follow_up    follow_up -
missed        -        follow_up    follow_up    follow_up    follow_up -
note          note     note         note         note         note      note
============  =======  ===========  ===========  ===========  ========  ======

[1] A restart is a new exposure: it needs a DATE and starts the period again from it.
[2] Only once the period is over (from ``period_end`` on); before, it is refused with the
    day it ends. A hospital stay has no period: ``release`` there means discharged negative.

Start-date rule: entering a period status takes the DATE of the command (reason
``command``); without one, a case that already has a start (moving between monitoring,
home, facility or back from hospital) keeps it and its reason, since the exposure has not
changed (so facility -> home keeps the original start); otherwise the report's arrival date
(``arrival_date``), else the local day of ``now`` (``today``). A command DATE after today is
refused. The period ends at the start of day ``period_start + N`` (``period_end``) and the
case is due for release from that day until someone releases it.

Deadline fields hold only *pending* deadlines: ``verify_by`` while ``new``, ``period_end``
while in a period status, ``next_followup_due`` while followed up (period statuses and
hospital). Past deadlines live in the transition details, i.e. in the case history.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from zoneinfo import ZoneInfo

from mailtracker.domain.commands import Action, Command
from mailtracker.domain.reports import SYMPTOMS
from mailtracker.domain.text import fold, nfc

Status = Literal["new", "monitoring", "home_isolation", "facility_isolation", "hospital", "closed"]
Outcome = Literal["cleared", "released", "positive", "transferred", "lost"]
StartReason = Literal["command", "arrival_date", "today"]
FollowUpResult = Literal["ok", "symptoms", "missed"]
Effect = Literal["enter", "restart", "close", "release", "transfer", "follow_up", "note"]
Language = Literal["vi", "en"]
DueKind = Literal[
    "verification_overdue",
    "verification_due",
    "followup_overdue",
    "followup_due",
    "release_due",
    "release_tomorrow",
]

STATUSES: tuple[Status, ...] = (
    "new",
    "monitoring",
    "home_isolation",
    "facility_isolation",
    "hospital",
    "closed",
)
OUTCOMES: tuple[Outcome, ...] = ("cleared", "released", "positive", "transferred", "lost")
PERIOD_STATUSES: frozenset[Status] = frozenset(
    {"monitoring", "home_isolation", "facility_isolation"}
)
FOLLOWED_STATUSES: frozenset[Status] = PERIOD_STATUSES | {"hospital"}

FEVER_CELSIUS = 37.5
PLAUSIBLE_CELSIUS = (34.0, 43.0)

ALLOWED: Mapping[tuple[Status, Action], Effect] = {
    ("new", "monitor"): "enter",
    ("new", "home"): "enter",
    ("new", "facility"): "enter",
    ("new", "hospital"): "enter",
    ("new", "clear"): "close",
    ("new", "positive"): "close",
    ("new", "transfer"): "transfer",
    ("new", "lost"): "close",
    ("new", "note"): "note",
    ("monitoring", "monitor"): "restart",
    ("monitoring", "home"): "enter",
    ("monitoring", "facility"): "enter",
    ("monitoring", "hospital"): "enter",
    ("monitoring", "clear"): "close",
    ("monitoring", "release"): "release",
    ("monitoring", "positive"): "close",
    ("monitoring", "transfer"): "transfer",
    ("monitoring", "lost"): "close",
    ("monitoring", "check"): "follow_up",
    ("monitoring", "missed"): "follow_up",
    ("monitoring", "note"): "note",
    ("home_isolation", "monitor"): "enter",
    ("home_isolation", "home"): "restart",
    ("home_isolation", "facility"): "enter",
    ("home_isolation", "hospital"): "enter",
    ("home_isolation", "clear"): "close",
    ("home_isolation", "release"): "release",
    ("home_isolation", "positive"): "close",
    ("home_isolation", "transfer"): "transfer",
    ("home_isolation", "lost"): "close",
    ("home_isolation", "check"): "follow_up",
    ("home_isolation", "missed"): "follow_up",
    ("home_isolation", "note"): "note",
    ("facility_isolation", "monitor"): "enter",
    ("facility_isolation", "home"): "enter",
    ("facility_isolation", "facility"): "restart",
    ("facility_isolation", "hospital"): "enter",
    ("facility_isolation", "clear"): "close",
    ("facility_isolation", "release"): "release",
    ("facility_isolation", "positive"): "close",
    ("facility_isolation", "transfer"): "transfer",
    ("facility_isolation", "lost"): "close",
    ("facility_isolation", "check"): "follow_up",
    ("facility_isolation", "missed"): "follow_up",
    ("facility_isolation", "note"): "note",
    ("hospital", "monitor"): "enter",
    ("hospital", "home"): "enter",
    ("hospital", "facility"): "enter",
    ("hospital", "clear"): "close",
    ("hospital", "release"): "release",
    ("hospital", "positive"): "close",
    ("hospital", "transfer"): "transfer",
    ("hospital", "lost"): "close",
    ("hospital", "check"): "follow_up",
    ("hospital", "missed"): "follow_up",
    ("hospital", "note"): "note",
    ("closed", "note"): "note",
}

TARGET_STATUS: Mapping[Action, Status] = {
    "monitor": "monitoring",
    "home": "home_isolation",
    "facility": "facility_isolation",
    "hospital": "hospital",
}
ACTION_OUTCOME: Mapping[Action, Outcome] = {
    "clear": "cleared",
    "release": "released",
    "positive": "positive",
    "lost": "lost",
    "transfer": "transferred",
}


@dataclass(frozen=True, slots=True)
class Rules:
    """The ``[rules]`` section: deadlines and follow-up intervals."""

    verify_within: dt.timedelta = dt.timedelta(hours=24)
    monitoring_days: int = 14
    home_isolation_days: int = 14
    facility_isolation_days: int = 14
    followup_every: dt.timedelta = dt.timedelta(days=1)
    facility_followup_every: dt.timedelta = dt.timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class CaseState:
    """Everything the rules need to know about one case."""

    status: Status
    outcome: Outcome | None
    received_at: dt.datetime
    verify_by: dt.datetime | None
    owner_unit: str
    arrival_date: dt.date | None = None
    period_start: dt.date | None = None
    period_start_reason: StartReason | None = None
    period_end: dt.date | None = None
    last_followup_at: dt.datetime | None = None
    next_followup_due: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One follow-up: ``symptoms`` lists the symptom names found in the note."""

    result: FollowUpResult
    at: dt.datetime
    temperature: float | None = None
    note: str | None = None
    symptoms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """An applied command: the new state and what the history and the mailer need."""

    state: CaseState
    action: Action
    from_status: Status
    to_status: Status
    details: dict[str, Any] = field(default_factory=dict)
    followup: FollowUp | None = None
    alert: bool = False
    reassign_to: str | None = None
    ok: Literal[True] = True


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused command: a stable ``code`` and the reason in both languages."""

    code: str
    message_vi: str
    message_en: str
    ok: Literal[False] = False

    def message(self, language: Language) -> str:
        return self.message_vi if language == "vi" else self.message_en


@dataclass(frozen=True, slots=True)
class DueItem:
    """Something a unit must act on, with its deadline (UTC)."""

    kind: DueKind
    deadline: dt.datetime

    @property
    def overdue(self) -> bool:
        return self.kind in {"verification_overdue", "followup_overdue", "release_due"}


# --- time helpers ---------------------------------------------------------------------------


def _utc(moment: dt.datetime, name: str) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")
    return moment.astimezone(dt.UTC)


def local_day(moment: dt.datetime, tz: ZoneInfo) -> dt.date:
    """The calendar day of ``moment`` in ``tz``."""
    return _utc(moment, "moment").astimezone(tz).date()


def start_of_day(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    """Local midnight at the start of ``day`` in ``tz``, as a UTC datetime."""
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)


def period_days(status: Status, rules: Rules) -> int | None:
    """Length in days of the period ``status`` carries, or None."""
    return {
        "monitoring": rules.monitoring_days,
        "home_isolation": rules.home_isolation_days,
        "facility_isolation": rules.facility_isolation_days,
    }.get(status)


def followup_interval(status: Status, rules: Rules) -> dt.timedelta | None:
    """How often a case in ``status`` must be followed up, or None."""
    if status == "facility_isolation":
        return rules.facility_followup_every
    return rules.followup_every if status in FOLLOWED_STATUSES else None


# --- creation and transitions ---------------------------------------------------------------


def new_case(
    received_at: dt.datetime, owner_unit: str, arrival_date: dt.date | None, rules: Rules
) -> CaseState:
    """A freshly reported case, to be verified within ``rules.verify_within``."""
    received = _utc(received_at, "received_at")
    return CaseState(
        status="new",
        outcome=None,
        received_at=received,
        verify_by=received + rules.verify_within,
        owner_unit=owner_unit,
        arrival_date=arrival_date,
    )


def apply(
    state: CaseState,
    command: Command,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
    rules: Rules,
    units: Collection[str],
) -> Transition | Refusal:
    """Apply ``command`` to ``state`` at ``now``; ``units`` are the configured unit ids.

    Authorization is not checked here (see :mod:`mailtracker.domain.authz`).
    """
    now = _utc(now, "now")
    effect = ALLOWED.get((state.status, command.action))
    if effect is None:
        return _not_allowed(state, command)
    if effect in ("enter", "restart"):
        return _enter(state, command, effect, now, tz, rules)
    if effect == "release":
        return _release(state, command, now, tz)
    if effect == "close":
        return _close(state, command, ACTION_OUTCOME[command.action], _note(command), {})
    if effect == "transfer":
        return _transfer(state, command, units)
    if effect == "follow_up":
        return _follow_up(state, command, now, rules)
    return _add_note(state, command)


def _enter(
    state: CaseState,
    command: Command,
    effect: Effect,
    now: dt.datetime,
    tz: ZoneInfo,
    rules: Rules,
) -> Transition | Refusal:
    target = TARGET_STATUS[command.action]
    today = local_day(now, tz)
    given = command.args.get("date")
    date: dt.date | None = None
    if given is not None:
        parsed = _parse_date(given)
        if parsed is None:
            return Refusal(
                "bad_date",
                f"{command.ref}: ngày không hợp lệ: {given!s}",
                f"{command.ref}: invalid date: {given!s}",
            )
        if parsed > today:
            return Refusal(
                "future_date",
                f"{command.ref}: ngày {_vi_date(parsed)} chưa tới (hôm nay {_vi_date(today)})",
                f"{command.ref}: {parsed.isoformat()} is in the future "
                f"(today is {today.isoformat()})",
            )
        date = parsed
    if effect == "restart" and date is None:
        return Refusal(
            "needs_date",
            f"{command.ref} {_VI_IS[state.status]}: cần ngày phơi nhiễm mới để tính lại "
            f"(ví dụ: {command.ref} {command.action} {_vi_date(today)})",
            f"{command.ref} {_EN_IS[state.status]}: give the new exposure date to restart "
            f"the period (e.g. {command.ref} {command.action} {_vi_date(today)})",
        )

    start: dt.date | None
    reason: StartReason | None
    if target not in PERIOD_STATUSES:
        start, reason = state.period_start, state.period_start_reason
    elif date is not None:
        start, reason = date, "command"
    elif state.period_start is not None:
        start, reason = state.period_start, state.period_start_reason
    elif state.arrival_date is not None:
        start, reason = state.arrival_date, "arrival_date"
    else:
        start, reason = today, "today"
    days = period_days(target, rules)
    end = start + dt.timedelta(days=days) if start is not None and days is not None else None

    interval = followup_interval(target, rules)
    assert interval is not None  # every status one enters is followed up
    # A new exposure does not change the follow-up rhythm; a new status starts it now.
    next_due = now + interval
    if effect == "restart" and state.next_followup_due is not None:
        next_due = state.next_followup_due

    new_state = replace(
        state,
        status=target,
        verify_by=None,
        period_start=start,
        period_start_reason=reason,
        period_end=end,
        next_followup_due=next_due,
    )
    details: dict[str, Any] = {
        "period_start": _iso(start),
        "period_start_reason": reason,
        "period_end": _iso(end),
        "next_followup_due": _iso(next_due),
    }
    if state.period_start is not None and state.period_start != start:
        details["previous_period_start"] = _iso(state.period_start)
    if state.period_end is not None and state.period_end != end:
        details["previous_period_end"] = _iso(state.period_end)
    if effect == "restart":
        details["restarted"] = True
    return Transition(new_state, command.action, state.status, target, details)


def _release(
    state: CaseState, command: Command, now: dt.datetime, tz: ZoneInfo
) -> Transition | Refusal:
    today = local_day(now, tz)
    if state.period_end is not None and today < state.period_end:
        return Refusal(
            "not_due",
            f"{command.ref} {_VI_IS[state.status]} đến hết ngày "
            f"{_vi_date(state.period_end - dt.timedelta(days=1))}: "
            f"chỉ kết thúc được từ ngày {_vi_date(state.period_end)}",
            f"{command.ref} {_EN_IS[state.status]} until the end of "
            f"{(state.period_end - dt.timedelta(days=1)).isoformat()}: "
            f"it can be released from {state.period_end.isoformat()}",
        )
    extra = {"period_end": _iso(state.period_end)} if state.period_end else {}
    return _close(state, command, "released", _note(command), extra)


def _close(
    state: CaseState,
    command: Command,
    outcome: Outcome,
    note: str | None,
    extra: dict[str, Any],
) -> Transition:
    new_state = replace(
        state,
        status="closed",
        outcome=outcome,
        verify_by=None,
        period_end=None,
        next_followup_due=None,
    )
    details: dict[str, Any] = {"outcome": outcome, **extra}
    if note:
        details["note"] = note
    return Transition(new_state, command.action, state.status, "closed", details)


def _transfer(state: CaseState, command: Command, units: Collection[str]) -> Transition | Refusal:
    raw = command.args.get("to")
    target = nfc(raw) if isinstance(raw, str) else ""
    if not target:
        return Refusal(
            "missing_target",
            f"{command.ref}: cần ghi đơn vị hoặc nơi chuyển đến (chuyển ĐƠN_VỊ)",
            f"{command.ref}: say where to transfer to (transfer UNIT_OR_PLACE)",
        )
    unit = next((u for u in units if fold(u) == fold(target)), None)
    if unit is None:
        return _close(state, command, "transferred", None, {"to": target})
    if unit == state.owner_unit:
        return Refusal(
            "same_unit",
            f"{command.ref} đã thuộc đơn vị {unit}",
            f"{command.ref} already belongs to unit {unit}",
        )
    details = {"to": unit, "from_unit": state.owner_unit, "reassigned": True}
    return Transition(
        replace(state, owner_unit=unit),
        command.action,
        state.status,
        state.status,
        details,
        reassign_to=unit,
    )


def _follow_up(
    state: CaseState, command: Command, now: dt.datetime, rules: Rules
) -> Transition | Refusal:
    note = _note(command)
    temperature: float | None = None
    if command.action == "missed":
        result: FollowUpResult = "missed"
        symptoms: tuple[str, ...] = ()
    else:
        raw = command.args.get("temperature")
        if raw is not None:
            low, high = PLAUSIBLE_CELSIUS
            if (
                isinstance(raw, bool)
                or not isinstance(raw, int | float)
                or not math.isfinite(raw)
                or not low <= raw <= high
            ):
                return Refusal(
                    "bad_temperature",
                    f"{command.ref}: nhiệt độ {raw!s} không hợp lý (°C, {low:g}–{high:g})",
                    f"{command.ref}: temperature {raw!s} is not plausible (°C, {low:g}–{high:g})",
                )
            temperature = float(raw)
        symptoms = _symptoms_in(note or "")
        feverish = temperature is not None and temperature >= FEVER_CELSIUS
        result = "symptoms" if feverish or symptoms else "ok"
    interval = followup_interval(state.status, rules)
    assert interval is not None  # follow-ups are only allowed in followed statuses
    last = now if state.last_followup_at is None else max(state.last_followup_at, now)
    next_due = now + interval
    if state.next_followup_due is not None:
        next_due = max(next_due, state.next_followup_due)
    followup = FollowUp(result, now, temperature, note, symptoms)
    details: dict[str, Any] = {
        "result": result,
        "temperature": temperature,
        "note": note,
        "symptoms": list(symptoms),
        "next_followup_due": _iso(next_due),
    }
    return Transition(
        replace(state, last_followup_at=last, next_followup_due=next_due),
        command.action,
        state.status,
        state.status,
        details,
        followup=followup,
        alert=result == "symptoms",
    )


def _add_note(state: CaseState, command: Command) -> Transition | Refusal:
    note = _note(command)
    if not note:
        return Refusal(
            "empty_note",
            f"{command.ref}: ghi chú trống",
            f"{command.ref}: the note is empty",
        )
    return Transition(state, command.action, state.status, state.status, {"note": note})


def _note(command: Command) -> str | None:
    raw = command.args.get("note")
    return (nfc(raw) or None) if isinstance(raw, str) else None


def _parse_date(value: object) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _vi_date(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")


# --- refusal messages -----------------------------------------------------------------------

_VI_IS: Mapping[Status, str] = {
    "new": "đang chờ xác minh",
    "monitoring": "đang giám sát y tế",
    "home_isolation": "đang cách ly tại nhà",
    "facility_isolation": "đang cách ly tập trung",
    "hospital": "đang ở bệnh viện",
    "closed": "đã đóng",
}
_EN_IS: Mapping[Status, str] = {
    "new": "is new (not yet verified)",
    "monitoring": "is under medical monitoring",
    "home_isolation": "is in home isolation",
    "facility_isolation": "is in facility isolation",
    "hospital": "is in hospital",
    "closed": "is closed",
}
_VI_ACTION: Mapping[Action, str] = {
    "monitor": "chuyển sang giám sát y tế",
    "home": "chuyển sang cách ly tại nhà",
    "facility": "chuyển sang cách ly tập trung",
    "hospital": "chuyển viện",
    "clear": "loại trừ",
    "release": "kết thúc",
    "positive": "ghi nhận dương tính",
    "transfer": "chuyển đi",
    "lost": "ghi nhận mất dấu",
    "check": "ghi nhận theo dõi sức khỏe",
    "missed": "ghi nhận không liên lạc được",
    "note": "ghi chú",
}
_EN_ACTION: Mapping[Action, str] = {
    "monitor": "move to medical monitoring",
    "home": "move to home isolation",
    "facility": "move to facility isolation",
    "hospital": "refer to hospital",
    "clear": "clear",
    "release": "release",
    "positive": "record as positive",
    "transfer": "transfer",
    "lost": "record as lost",
    "check": "record a follow-up",
    "missed": "record a missed follow-up",
    "note": "add a note",
}


def _not_allowed(state: CaseState, command: Command) -> Refusal:
    vi_is, en_is = _VI_IS[state.status], _EN_IS[state.status]
    if state.outcome is not None:
        vi_is, en_is = f"{vi_is} ({state.outcome})", f"{en_is} ({state.outcome})"
    return Refusal(
        "closed" if state.status == "closed" else "not_allowed",
        f"{command.ref} {vi_is}: không thể {_VI_ACTION[command.action]}",
        f"{command.ref} {en_is}: cannot {_EN_ACTION[command.action]}",
    )


# --- symptom words in a follow-up note ------------------------------------------------------

_SYMPTOM_PHRASES: Mapping[str, tuple[str, ...]] = {
    "fever": ("sốt", "fever", "feverish"),
    "cough": ("ho", "cough", "coughing"),
    "shortness_of_breath": ("khó thở", "shortness of breath", "short of breath", "breathless"),
    "sore_throat": ("đau họng", "rát họng", "sore throat"),
    "fatigue": ("mệt mỏi", "mệt", "fatigue", "tired"),
    "runny_nose": ("sổ mũi", "chảy nước mũi", "runny nose"),
    "headache": ("đau đầu", "nhức đầu", "headache"),
    "muscle_pain": ("đau mỏi cơ", "đau cơ", "mỏi cơ", "muscle pain", "muscle ache", "body ache"),
}
_NEGATIONS = frozenset({"khong", "ko", "k", "chua", "het", "no", "not", "without"})
_FILLERS = frozenset({"co", "bi", "thay", "any", "bieu", "hien", "trieu", "chung"})
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def _word_matches(written: str, expected: str) -> bool:
    """Same word, written with the same diacritics or without any (``ho`` but not ``họ``)."""
    return written == expected or (written == fold(written) and written == fold(expected))


def _negated(words: list[str], index: int) -> bool:
    """Whether the word at ``index`` follows a negation (``không sốt``, ``không có ho``)."""
    position = index - 1
    while position >= 0 and fold(words[position]) in _FILLERS:
        position -= 1
    return position >= 0 and fold(words[position]) in _NEGATIONS


def _symptoms_in(note: str) -> tuple[str, ...]:
    """Symptom names (vocabulary order) named in a free-text note, negated ones left out."""
    words = _words(note)
    found: set[str] = set()
    for name, phrases in _SYMPTOM_PHRASES.items():
        for phrase in phrases:
            expected = _words(phrase)
            for index in range(len(words) - len(expected) + 1):
                window = words[index : index + len(expected)]
                if all(map(_word_matches, window, expected)) and not _negated(words, index):
                    found.add(name)
    return tuple(name for name in SYMPTOMS if name in found)


# --- derived queries and invariants ---------------------------------------------------------


def is_verification_overdue(state: CaseState, now: dt.datetime) -> bool:
    """A new case past its verify-by time."""
    return state.verify_by is not None and _utc(now, "now") > state.verify_by


def is_followup_overdue(state: CaseState, now: dt.datetime) -> bool:
    """A followed-up case whose last follow-up (or status start) is older than its interval."""
    return state.next_followup_due is not None and _utc(now, "now") > state.next_followup_due


def is_due_for_release(state: CaseState, today: dt.date) -> bool:
    """A period that is over (from ``period_end`` on) and not yet released."""
    return state.period_end is not None and today >= state.period_end


def due_items(state: CaseState, now: dt.datetime, tz: ZoneInfo) -> tuple[DueItem, ...]:
    """What the owning unit must act on now or today, most urgent kinds first."""
    now = _utc(now, "now")
    today = local_day(now, tz)
    end_of_today = start_of_day(today + dt.timedelta(days=1), tz)
    items: list[DueItem] = []
    if state.verify_by is not None:
        kind: DueKind = "verification_overdue" if now > state.verify_by else "verification_due"
        items.append(DueItem(kind, state.verify_by))
    if state.next_followup_due is not None:
        if now > state.next_followup_due:
            items.append(DueItem("followup_overdue", state.next_followup_due))
        elif state.next_followup_due < end_of_today:
            items.append(DueItem("followup_due", state.next_followup_due))
    if state.period_end is not None:
        if today >= state.period_end:
            items.append(DueItem("release_due", start_of_day(state.period_end, tz)))
        elif state.period_end == today + dt.timedelta(days=1):
            items.append(DueItem("release_tomorrow", start_of_day(state.period_end, tz)))
    return tuple(items)


def is_overdue(state: CaseState, now: dt.datetime, tz: ZoneInfo) -> bool:
    """For ``cases --overdue``: overdue verification or follow-up, or due for release."""
    return any(item.overdue for item in due_items(state, now, tz))


def check_invariants(state: CaseState) -> list[str]:
    """Every way ``state`` is impossible, as messages; empty when it is consistent."""
    problems: list[str] = []
    closed = state.status == "closed"
    if state.status not in STATUSES:
        problems.append(f"unknown status {state.status!r}")
    if closed != (state.outcome is not None):
        problems.append("an outcome is set exactly when the case is closed")
    if state.outcome is not None and state.outcome not in OUTCOMES:
        problems.append(f"unknown outcome {state.outcome!r}")
    if not state.owner_unit:
        problems.append("no owner unit")
    for name in ("received_at", "verify_by", "last_followup_at", "next_followup_due"):
        value = getattr(state, name)
        if value is not None and (value.tzinfo is None or value.utcoffset() != dt.timedelta(0)):
            problems.append(f"{name} is not a UTC timestamp")
    if (state.verify_by is not None) != (state.status == "new"):
        problems.append("verify_by is pending exactly while the case is new")
    if state.verify_by is not None and state.verify_by < state.received_at:
        problems.append("verify_by before received_at")
    if (state.period_end is not None) != (state.status in PERIOD_STATUSES):
        problems.append("period_end is pending exactly in a period status")
    if (state.period_start is None) != (state.period_start_reason is None):
        problems.append("period_start and its reason go together")
    if state.period_end is not None and (
        state.period_start is None or state.period_end <= state.period_start
    ):
        problems.append("period_end must come after period_start")
    if (state.next_followup_due is not None) != (state.status in FOLLOWED_STATUSES):
        problems.append("next_followup_due is pending exactly in a followed-up status")
    return problems
