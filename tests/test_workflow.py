"""The case workflow: transition table, start-date rule, deadlines, follow-ups, transfers."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any, get_args
from zoneinfo import ZoneInfo

import pytest

from mailtracker.domain.commands import Action, Command
from mailtracker.domain.workflow import (
    ALLOWED,
    STATUSES,
    CaseState,
    Refusal,
    Rules,
    Status,
    Transition,
    apply,
    check_invariants,
    due_items,
    is_due_for_release,
    is_followup_overdue,
    is_overdue,
    is_verification_overdue,
    new_case,
    start_of_day,
)

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
UTC = dt.UTC
RULES = Rules()
UNITS = frozenset({"cdc", "ytdp-sontinh", "bv-tinh"})
REF = "QN-0042"
RECEIVED = dt.datetime(2020, 2, 10, 3, 0, tzinfo=UTC)  # 10:00 in Hà Nội
ARRIVAL = dt.date(2020, 2, 8)
ACTIONS: tuple[Action, ...] = get_args(Action)

# Expected result of every (action, status) cell, written out independently of ALLOWED:
# the status it leads to, "closed:OUTCOME", or "-" for refused (abbreviations below).
EXPECTED_TABLE = """
action    new        mon        home       fac        hosp       closed
monitor   mon        mon        mon        mon        mon        -
home      home       home       home       home       home       -
facility  fac        fac        fac        fac        fac        -
hospital  hosp       hosp       hosp       hosp       -          -
clear     x:cleared  x:cleared  x:cleared  x:cleared  x:cleared  -
release   -          x:released x:released x:released x:released -
positive  x:positive x:positive x:positive x:positive x:positive -
transfer  x:transfer x:transfer x:transfer x:transfer x:transfer -
lost      x:lost     x:lost     x:lost     x:lost     x:lost     -
check     -          mon        home       fac        hosp       -
missed    -          mon        home       fac        hosp       -
note      new        mon        home       fac        hosp       closed
"""
ABBREVIATIONS = {
    "mon": "monitoring",
    "home": "home_isolation",
    "fac": "facility_isolation",
    "hosp": "hospital",
    "x": "closed",
    "transfer": "transferred",
}


def expected_cells() -> dict[tuple[str, str], str]:
    def expand(cell: str) -> str:
        return ":".join(ABBREVIATIONS.get(part, part) for part in cell.split(":"))

    header, *rows = EXPECTED_TABLE.strip().splitlines()
    statuses = [expand(name) for name in header.split()[1:]]
    cells: dict[tuple[str, str], str] = {}
    for row in rows:
        action, *values = row.split()
        for status, value in zip(statuses, values, strict=True):
            cells[(status, action)] = expand(value)
    return cells


EXPECTED = expected_cells()


def cmd(action: Action, **args: Any) -> Command:
    return Command(REF, action, args, f"{REF} {action}")


def at(day: int, hour: int = 3, minute: int = 0, month: int = 2, year: int = 2020) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def run(
    state: CaseState,
    command: Command,
    now: dt.datetime,
    rules: Rules = RULES,
) -> Transition | Refusal:
    return apply(state, command, now=now, tz=HCM, rules=rules, units=UNITS)


def applied(
    state: CaseState, command: Command, now: dt.datetime, rules: Rules = RULES
) -> Transition:
    result = run(state, command, now, rules)
    assert isinstance(result, Transition), result
    assert check_invariants(result.state) == []
    return result


def refused(state: CaseState, command: Command, now: dt.datetime) -> Refusal:
    result = run(state, command, now)
    assert isinstance(result, Refusal), result
    assert REF in result.message_vi and REF in result.message_en
    return result


def fresh(arrival: dt.date | None = ARRIVAL) -> CaseState:
    return new_case(RECEIVED, "cdc", arrival, RULES)


def in_status(status: Status) -> CaseState:
    """A case brought to ``status`` through the workflow itself."""
    state = fresh()
    if status == "new":
        return state
    action: Action = {
        "monitoring": "monitor",
        "home_isolation": "home",
        "facility_isolation": "facility",
        "hospital": "hospital",
        "closed": "clear",
    }[status]  # type: ignore[assignment]
    return applied(state, cmd(action), at(10, 4)).state


def valid_command(action: Action) -> Command:
    """A well-formed command for ``action`` (restarts need a date, so every one carries it)."""
    examples: dict[str, dict[str, Any]] = {
        "monitor": {"date": "2020-02-09"},
        "home": {"date": "2020-02-09"},
        "facility": {"date": "2020-02-09"},
        "check": {"temperature": 36.6, "note": None},
        "missed": {"note": "không nghe máy"},
        "note": {"note": "đã gọi điện"},
        "transfer": {"to": "Đà Nẵng"},
        "clear": {"note": None},
    }
    return cmd(action, **examples.get(action, {}))


def test_expected_table_covers_every_cell() -> None:
    assert set(EXPECTED) == {(s, a) for s in STATUSES for a in ACTIONS}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_cell_of_the_transition_table(status: Status, action: Action) -> None:
    state = in_status(status)
    expected = EXPECTED[(status, action)]
    now = at(28)  # after every period end, so release is due where it is allowed
    result = run(state, valid_command(action), now)
    assert ((status, action) in ALLOWED) == (expected != "-")
    if expected == "-":
        assert isinstance(result, Refusal)
        assert result.code == ("closed" if status == "closed" else "not_allowed")
        assert REF in result.message_vi and REF in result.message_en
        return
    assert isinstance(result, Transition), result
    assert check_invariants(result.state) == []
    assert result.from_status == status
    assert result.action == action
    to_status, _, outcome = expected.partition(":")
    assert result.to_status == result.state.status == to_status
    assert result.state.outcome == (outcome or state.outcome)


def test_refusal_on_a_closed_case_names_status_and_outcome() -> None:
    state = applied(applied(fresh(), cmd("home"), at(10, 4)).state, cmd("release"), at(23, 2)).state
    result = refused(state, cmd("home"), at(23, 3))
    assert result.code == "closed"
    assert result.message_vi == "QN-0042 đã đóng (released): không thể chuyển sang cách ly tại nhà"
    assert result.message_en == "QN-0042 is closed (released): cannot move to home isolation"
    assert result.message("vi") == result.message_vi


# --- creation and verification ---------------------------------------------------------------


def test_new_case_carries_its_verification_deadline() -> None:
    local = dt.datetime(2020, 2, 10, 10, 0, tzinfo=HCM)
    state = new_case(local, "cdc", None, Rules(verify_within=dt.timedelta(hours=6)))
    assert state.status == "new" and state.outcome is None
    assert state.received_at == at(10, 3) and state.received_at.tzinfo == UTC
    assert state.verify_by == at(10, 9)
    assert check_invariants(state) == []


def test_new_case_rejects_a_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="aware"):
        new_case(dt.datetime(2020, 2, 10, 3), "cdc", None, RULES)


def test_apply_rejects_a_naive_now() -> None:
    with pytest.raises(ValueError, match="aware"):
        apply(fresh(), cmd("hospital"), now=dt.datetime(2020, 2, 10), tz=HCM, rules=RULES, units=())


def test_verification_overdue_strictly_after_the_deadline() -> None:
    state = fresh()
    assert state.verify_by == at(11, 3)
    assert not is_verification_overdue(state, at(11, 3))
    assert is_verification_overdue(state, at(11, 3) + dt.timedelta(seconds=1))
    verified = applied(state, cmd("monitor"), at(12)).state
    assert verified.verify_by is None
    assert not is_verification_overdue(verified, at(20))


# --- start-date rule and period arithmetic ---------------------------------------------------


def test_start_from_the_command_date() -> None:
    result = applied(fresh(), cmd("home", date="2020-02-05"), at(10, 4))
    assert result.state.period_start == dt.date(2020, 2, 5)
    assert result.state.period_start_reason == "command"
    assert result.state.period_end == dt.date(2020, 2, 19)
    assert result.details["period_start"] == "2020-02-05"
    assert result.details["period_end"] == "2020-02-19"


def test_start_from_the_arrival_date() -> None:
    state = applied(fresh(dt.date(2020, 2, 7)), cmd("monitor"), at(10, 4)).state
    assert (state.period_start, state.period_start_reason) == (dt.date(2020, 2, 7), "arrival_date")
    assert state.period_end == dt.date(2020, 2, 21)


def test_start_today_when_nothing_else_is_known() -> None:
    state = applied(fresh(None), cmd("facility"), at(10, 4)).state
    assert (state.period_start, state.period_start_reason) == (dt.date(2020, 2, 10), "today")
    assert state.period_end == dt.date(2020, 2, 24)


@pytest.mark.parametrize(
    ("now", "today"),
    [
        (dt.datetime(2020, 2, 9, 17, 30, tzinfo=UTC), dt.date(2020, 2, 10)),  # 00:30 local
        (dt.datetime(2020, 2, 9, 16, 59, tzinfo=UTC), dt.date(2020, 2, 9)),  # 23:59 local
        (dt.datetime(2019, 12, 31, 17, 0, tzinfo=UTC), dt.date(2020, 1, 1)),  # new year, local
    ],
)
def test_today_is_the_local_calendar_day(now: dt.datetime, today: dt.date) -> None:
    state = replace(fresh(None), received_at=now - dt.timedelta(hours=1))
    result = applied(state, cmd("home"), now)
    assert result.state.period_start == today
    assert result.state.period_end == today + dt.timedelta(days=14)


@pytest.mark.parametrize(
    ("start", "days", "end"),
    [
        ("2020-01-25", 14, dt.date(2020, 2, 8)),  # month end
        ("2020-02-20", 14, dt.date(2020, 3, 5)),  # leap February
        ("2019-02-20", 14, dt.date(2019, 3, 6)),  # ordinary February
        ("2019-12-25", 14, dt.date(2020, 1, 8)),  # year end
        ("2020-01-31", 1, dt.date(2020, 2, 1)),
        ("2020-04-30", 21, dt.date(2020, 5, 21)),
    ],
)
def test_period_end_across_month_and_year_ends(start: str, days: int, end: dt.date) -> None:
    rules = Rules(monitoring_days=days)
    state = new_case(at(10), "cdc", None, rules)
    result = applied(state, cmd("monitor", date=start), at(20, month=5), rules)
    assert result.state.period_end == end


def test_each_status_uses_its_own_period_length() -> None:
    rules = Rules(monitoring_days=10, home_isolation_days=14, facility_isolation_days=21)
    start = dt.date(2020, 2, 8)
    for action, days in (("monitor", 10), ("home", 14), ("facility", 21)):
        state = new_case(RECEIVED, "cdc", start, rules)
        result = applied(state, cmd(action), at(10, 4), rules)  # type: ignore[arg-type]
        assert result.state.period_end == start + dt.timedelta(days=days)


def test_facility_to_home_keeps_the_original_start() -> None:
    facility = applied(fresh(None), cmd("facility", date="2020-02-06"), at(10, 4)).state
    home = applied(facility, cmd("home"), at(18)).state
    assert home.status == "home_isolation"
    assert (home.period_start, home.period_start_reason) == (dt.date(2020, 2, 6), "command")
    assert home.period_end == dt.date(2020, 2, 20)


def test_facility_to_home_with_a_date_takes_that_date() -> None:
    facility = applied(fresh(), cmd("facility"), at(10, 4)).state
    result = applied(facility, cmd("home", date="2020-02-12"), at(18))
    assert result.state.period_start == dt.date(2020, 2, 12)
    assert result.state.period_start_reason == "command"
    assert result.details["previous_period_start"] == "2020-02-08"


def test_hospital_keeps_the_exposure_start_but_carries_no_period() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    hospital = applied(home, cmd("hospital"), at(11)).state
    assert hospital.period_start == dt.date(2020, 2, 8) and hospital.period_end is None
    back = applied(hospital, cmd("home"), at(14)).state
    assert back.period_end == dt.date(2020, 2, 22)


def test_hospital_from_new_then_home_applies_the_start_rule() -> None:
    hospital = applied(fresh(None), cmd("hospital"), at(10, 4)).state
    assert hospital.period_start is None
    home = applied(hospital, cmd("home"), at(13)).state
    assert (home.period_start, home.period_start_reason) == (dt.date(2020, 2, 13), "today")


def test_a_new_exposure_restarts_the_period() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    result = applied(home, cmd("home", date="2020-02-15"), at(16))
    assert result.state.period_start == dt.date(2020, 2, 15)
    assert result.state.period_end == dt.date(2020, 2, 29)
    assert result.details["restarted"] is True
    assert result.details["previous_period_end"] == "2020-02-22"
    assert result.state.next_followup_due == home.next_followup_due


def test_a_restart_needs_a_date() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    result = refused(home, cmd("home"), at(16))
    assert result.code == "needs_date"
    assert "cách ly tại nhà" in result.message_vi and "home isolation" in result.message_en


@pytest.mark.parametrize("value", ["2020-02-30", "tomorrow", "", 20200210])
def test_an_invalid_date_is_refused(value: object) -> None:
    assert refused(fresh(), cmd("monitor", date=value), at(10, 4)).code == "bad_date"


def test_a_date_after_today_is_refused_in_local_time() -> None:
    now = dt.datetime(2020, 2, 9, 17, 30, tzinfo=UTC)  # 00:30 on 10 February in Hà Nội
    assert isinstance(run(fresh(), cmd("home", date="2020-02-10"), now), Transition)
    assert refused(fresh(), cmd("home", date="2020-02-11"), now).code == "future_date"


# --- release -----------------------------------------------------------------------------------


def test_release_only_from_local_midnight_of_the_period_end() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    assert home.period_end == dt.date(2020, 2, 22)
    midnight = start_of_day(dt.date(2020, 2, 22), HCM)
    assert midnight == dt.datetime(2020, 2, 21, 17, 0, tzinfo=UTC)
    early = refused(home, cmd("release"), midnight - dt.timedelta(minutes=1))
    assert early.code == "not_due"
    assert "21/02/2020" in early.message_vi and "2020-02-22" in early.message_en
    result = applied(home, cmd("release"), midnight)
    assert result.state.outcome == "released"
    assert result.details == {"outcome": "released", "period_end": "2020-02-22"}


def test_hospital_release_needs_no_period() -> None:
    hospital = applied(fresh(), cmd("hospital"), at(10, 4)).state
    assert applied(hospital, cmd("release"), at(11)).state.outcome == "released"


def test_a_period_never_ends_silently() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    assert not is_due_for_release(home, dt.date(2020, 2, 21))
    for day in (dt.date(2020, 2, 22), dt.date(2020, 3, 22), dt.date(2021, 1, 1)):
        assert is_due_for_release(home, day)
    late = dt.datetime(2020, 6, 1, tzinfo=UTC)
    assert home.status == "home_isolation"
    assert is_overdue(home, late, HCM)
    released = applied(home, cmd("release"), late).state
    assert not is_due_for_release(released, dt.date(2020, 6, 1))
    assert not is_overdue(released, late, HCM)


def test_closing_clears_every_pending_deadline() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    closed = applied(home, cmd("positive"), at(12)).state
    assert closed.verify_by is None and closed.period_end is None
    assert closed.next_followup_due is None
    assert closed.period_start == dt.date(2020, 2, 8)  # the exposure stays on record


def test_clear_keeps_its_note() -> None:
    result = applied(fresh(), cmd("clear", note="  sai   số điện thoại "), at(10, 4))
    assert result.details == {"outcome": "cleared", "note": "sai số điện thoại"}


# --- follow-ups --------------------------------------------------------------------------------


def test_entering_a_status_schedules_the_first_follow_up() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    assert home.next_followup_due == at(11, 4)
    facility = applied(fresh(), cmd("facility"), at(10, 4)).state
    assert facility.next_followup_due == at(10, 16)
    assert applied(home, cmd("facility"), at(10, 6)).state.next_followup_due == at(10, 18)


@pytest.mark.parametrize(
    ("temperature", "note", "result", "symptoms"),
    [
        (36.6, None, "ok", ()),
        (37.4, None, "ok", ()),
        (37.5, None, "symptoms", ()),
        (38.2, "sốt cao", "symptoms", ("fever",)),
        (None, None, "ok", ()),
        (37.8, "ho nhẹ", "symptoms", ("cough",)),
        (36.5, "ho nhẹ", "symptoms", ("cough",)),
        (None, "Ho khan, đau họng", "symptoms", ("cough", "sore_throat")),
        (None, "khong sot, dau hong", "symptoms", ("sore_throat",)),
        (None, "không sốt, không có ho", "ok", ()),
        (None, "Họ đã về nhà, khỏe", "ok", ()),
        (None, "hết sốt", "ok", ()),
        (None, "khó thở về đêm", "symptoms", ("shortness_of_breath",)),
        (None, "kho tho", "symptoms", ("shortness_of_breath",)),
        (None, "chảy nước mũi, nhức đầu", "symptoms", ("runny_nose", "headache")),
        (None, "mệt mỏi, đau mỏi cơ", "symptoms", ("fatigue", "muscle_pain")),
        (None, "Sore throat and a headache", "symptoms", ("sore_throat", "headache")),
        (None, "no fever, no cough", "ok", ()),
        (None, "thoát khỏi hoàn cảnh", "ok", ()),
    ],
)
def test_check_result(
    temperature: float | None, note: str | None, result: str, symptoms: tuple[str, ...]
) -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    transition = applied(home, cmd("check", temperature=temperature, note=note), at(11, 2))
    assert transition.followup is not None
    assert transition.followup.result == result
    assert transition.followup.symptoms == symptoms
    assert transition.followup.temperature == temperature
    assert transition.alert == (result == "symptoms")
    assert transition.details["result"] == result
    assert transition.state.status == "home_isolation"


def test_a_follow_up_resets_the_follow_up_clock() -> None:
    facility = applied(fresh(), cmd("facility"), at(10, 4)).state
    assert is_followup_overdue(facility, at(10, 16, 1))
    checked = applied(facility, cmd("check", temperature=36.8), at(10, 16, 1)).state
    assert checked.last_followup_at == at(10, 16, 1)
    assert checked.next_followup_due == at(11, 4, 1)
    assert not is_followup_overdue(checked, at(11, 4, 1))
    assert is_followup_overdue(checked, at(11, 4, 2))


def test_a_missed_follow_up_is_recorded_without_alert() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    result = applied(home, cmd("missed", note="không nghe máy"), at(11, 5))
    assert result.followup is not None and result.followup.result == "missed"
    assert result.followup.note == "không nghe máy"
    assert not result.alert
    assert result.state.next_followup_due == at(12, 5)


def test_a_late_arriving_older_follow_up_does_not_move_deadlines_back() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    recent = applied(home, cmd("check"), at(12, 4)).state
    older = applied(recent, cmd("check"), at(11, 4)).state
    assert older.last_followup_at == at(12, 4)
    assert older.next_followup_due == at(13, 4)


@pytest.mark.parametrize("temperature", [99.5, 3.78, float("nan"), float("inf"), "38", True])
def test_an_implausible_temperature_is_refused(temperature: object) -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    assert refused(home, cmd("check", temperature=temperature), at(11)).code == "bad_temperature"


# --- transfer and notes ------------------------------------------------------------------------


def test_transfer_to_a_configured_unit_reassigns_and_stays_open() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    result = applied(home, cmd("transfer", to="YTDP-SonTinh"), at(11))
    assert result.reassign_to == "ytdp-sontinh"
    assert result.state.owner_unit == "ytdp-sontinh"
    assert result.state.status == result.to_status == "home_isolation"
    assert result.state.period_end == home.period_end
    assert result.details == {"to": "ytdp-sontinh", "from_unit": "cdc", "reassigned": True}


def test_transfer_elsewhere_closes_as_transferred() -> None:
    result = applied(fresh(), cmd("transfer", to="  Đà   Nẵng "), at(10, 4))
    assert result.reassign_to is None
    assert (result.state.status, result.state.outcome) == ("closed", "transferred")
    assert result.state.owner_unit == "cdc"
    assert result.details == {"outcome": "transferred", "to": "Đà Nẵng"}


def test_transfer_to_the_owner_or_nowhere_is_refused() -> None:
    assert refused(fresh(), cmd("transfer", to="CDC"), at(10, 4)).code == "same_unit"
    assert refused(fresh(), cmd("transfer", to=" "), at(10, 4)).code == "missing_target"
    assert refused(fresh(), cmd("transfer"), at(10, 4)).code == "missing_target"


def test_a_note_changes_nothing_but_is_recorded() -> None:
    for status in STATUSES:
        state = in_status(status)
        result = applied(state, cmd("note", note="đã gọi lúc 9h"), at(12))
        assert result.state == state
        assert result.details == {"note": "đã gọi lúc 9h"}
    assert refused(fresh(), cmd("note", note="  "), at(12)).code == "empty_note"


# --- due items and invariants ------------------------------------------------------------------


def test_due_items_for_a_new_case() -> None:
    state = fresh()
    assert [i.kind for i in due_items(state, at(10, 5), HCM)] == ["verification_due"]
    overdue = due_items(state, at(11, 5), HCM)
    assert [(i.kind, i.deadline, i.overdue) for i in overdue] == [
        ("verification_overdue", at(11, 3), True)
    ]


def test_due_items_follow_ups_due_today_and_overdue() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state  # next follow-up 11 Feb 04:00 UTC
    assert due_items(home, at(10, 5), HCM) == ()
    # 11 Feb 00:30 in Hà Nội: the follow-up falls today, not yet overdue
    today = due_items(home, dt.datetime(2020, 2, 10, 17, 30, tzinfo=UTC), HCM)
    assert [(i.kind, i.overdue) for i in today] == [("followup_due", False)]
    assert [i.kind for i in due_items(home, at(11, 5), HCM)] == ["followup_overdue"]


def test_due_items_release_tomorrow_then_due() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    home = replace(home, next_followup_due=at(28))
    kinds = [i.kind for i in due_items(home, at(21, 3), HCM)]
    assert kinds == ["release_tomorrow"]
    item = due_items(home, dt.datetime(2020, 2, 21, 17, 0, tzinfo=UTC), HCM)[0]
    assert (item.kind, item.deadline) == ("release_due", start_of_day(dt.date(2020, 2, 22), HCM))
    assert due_items(home, at(19, 3), HCM) == ()


def test_check_invariants_reports_impossible_states() -> None:
    home = applied(fresh(), cmd("home"), at(10, 4)).state
    closed = applied(home, cmd("lost"), at(12)).state
    assert check_invariants(replace(closed, next_followup_due=at(13)))
    assert check_invariants(replace(closed, outcome=None))
    assert check_invariants(replace(home, outcome="lost"))
    assert check_invariants(replace(home, period_end=dt.date(2020, 2, 1)))
    assert check_invariants(replace(home, period_end=None))
    assert check_invariants(replace(home, period_start_reason=None))
    assert check_invariants(replace(home, verify_by=at(11)))
    assert check_invariants(replace(home, next_followup_due=dt.datetime(2020, 2, 11)))
    assert check_invariants(replace(home, owner_unit=""))
    assert check_invariants(replace(fresh(), verify_by=at(1)))
