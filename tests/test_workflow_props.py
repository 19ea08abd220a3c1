"""Property: no sequence of commands, at any times, leaves a case in an impossible state."""

from __future__ import annotations

import datetime as dt
from typing import Any, get_args
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from mailtracker.domain.commands import Action, Command
from mailtracker.domain.workflow import (
    ALLOWED,
    Refusal,
    Rules,
    Transition,
    apply,
    check_invariants,
    due_items,
    is_due_for_release,
    local_day,
    new_case,
)

UNITS = ("cdc", "ytdp-sontinh", "observer-so")
ZONES = [ZoneInfo(name) for name in ("Asia/Ho_Chi_Minh", "UTC", "America/Sao_Paulo")]
START = dt.datetime(2019, 12, 1, tzinfo=dt.UTC)

moments = st.integers(min_value=0, max_value=120 * 24 * 60).map(
    lambda minutes: START + dt.timedelta(minutes=minutes)
)
durations = st.integers(min_value=1, max_value=72 * 60).map(lambda m: dt.timedelta(minutes=m))
rules_strategy = st.builds(
    Rules,
    verify_within=durations,
    monitoring_days=st.integers(1, 30),
    home_isolation_days=st.integers(1, 30),
    facility_isolation_days=st.integers(1, 30),
    followup_every=durations,
    facility_followup_every=durations,
)
dates = st.dates(min_value=dt.date(2019, 11, 1), max_value=dt.date(2020, 5, 1))
notes = st.one_of(
    st.none(),
    st.sampled_from(["", "ho nhẹ", "không sốt", "Họ khỏe", "khó thở", "no fever", "ok"]),
    st.text(max_size=30),
)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    action: Action = draw(st.sampled_from(get_args(Action)))
    args: dict[str, Any] = {}
    if action in ("monitor", "home", "facility"):
        args["date"] = draw(
            st.one_of(st.none(), dates.map(dt.date.isoformat), st.sampled_from(["", "31/02"]))
        )
    elif action == "check":
        args["temperature"] = draw(
            st.one_of(st.none(), st.floats(allow_nan=True), st.floats(35.0, 41.0))
        )
        args["note"] = draw(notes)
    elif action in ("clear", "missed", "note"):
        args["note"] = draw(notes)
    elif action == "transfer":
        args["to"] = draw(st.one_of(st.sampled_from([*UNITS, "CDC", "Đà Nẵng", ""]), st.text()))
    return Command("QN-0001", action, args, "")


@settings(max_examples=400, deadline=None)
@given(
    rules=rules_strategy,
    tz=st.sampled_from(ZONES),
    received=moments,
    arrival=st.one_of(st.none(), dates),
    steps=st.lists(st.tuples(commands(), moments), max_size=25),
)
def test_no_sequence_of_commands_reaches_an_impossible_state(
    rules: Rules,
    tz: ZoneInfo,
    received: dt.datetime,
    arrival: dt.date | None,
    steps: list[tuple[Command, dt.datetime]],
) -> None:
    state = new_case(received, "cdc", arrival, rules)
    assert check_invariants(state) == []
    for command, now in steps:
        result = apply(state, command, now=now, tz=tz, rules=rules, units=UNITS)
        if (state.status, command.action) not in ALLOWED:
            assert isinstance(result, Refusal)
        if isinstance(result, Refusal):
            assert result.message_vi and result.message_en
            continue
        assert isinstance(result, Transition)
        assert check_invariants(result.state) == [], (state, command, now)
        assert result.from_status == state.status
        assert result.to_status == result.state.status
        if state.status == "closed":
            assert result.state == state  # only notes, which change nothing
        if result.followup is not None:
            assert result.alert == (result.followup.result == "symptoms")
        else:
            assert not result.alert
        if result.reassign_to is not None:
            assert result.reassign_to in UNITS and result.state.status == state.status
        if command.action == "release" and state.period_end is not None:
            assert is_due_for_release(state, local_day(now, tz))
        state = result.state
        items = due_items(state, now, tz)
        if state.status == "closed":
            assert items == ()
        if state.period_end is not None and local_day(now, tz) >= state.period_end:
            assert any(item.kind == "release_due" for item in items)
