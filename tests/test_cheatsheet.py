"""Every example line of the staff cheat sheet (docs/cheatsheet.md) parses as the reply grammar
reads it and is applied to a fresh case by the same path as a reply."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from store_support import ENVIRON, config_data, notification

from mailtracker.config import Config, config_from_dict
from mailtracker.domain.commands import ALIASES, Command, parse_command_line
from mailtracker.services.cases import CaseService
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.queries import find_case

CHEATSHEET = Path(__file__).resolve().parents[1] / "docs" / "cheatsheet.md"
README = Path(__file__).resolve().parents[1] / "README.md"
TODAY = dt.date(2020, 2, 14)
NOW = dt.datetime(2020, 2, 14, 3, 0, tzinfo=dt.UTC)  # 10:00 in Quảng Ngãi
STAFF = "staff@cdc.example.org"
ALL_ACTIONS = set(ALIASES.values())
# What a case must have been through before the example can apply to it.
PREPARE = {
    "check": ["home 10/02/2020"],
    "missed": ["home 10/02/2020"],
    "release": ["home 01/01/2020"],  # the 14 days ended on 15/01/2020
}
REQUIRED_ARGUMENT = {"transfer": "soyte", "note": "text"}


def examples(language: str) -> list[str]:
    blocks = re.findall(rf"```reply-{language}\n(.*?)```", CHEATSHEET.read_text("utf-8"), re.S)
    assert len(blocks) == 1, f"one reply-{language} block expected"
    lines = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert lines
    return lines


def parse(line: str) -> Command:
    command = parse_command_line(line, prefix="QN", today=TODAY, default_ref=None)
    assert isinstance(command, Command), f"{line!r} does not parse: {command}"
    return command


@pytest.mark.parametrize("language", ["vi", "en"])
def test_every_example_parses_and_every_action_is_shown(language: str) -> None:
    actions = {parse(line).action for line in examples(language)}
    assert actions == ALL_ACTIONS


def test_every_alias_in_the_tables_is_one_the_grammar_knows() -> None:
    text = CHEATSHEET.read_text("utf-8")
    english_table = text[text.index("| action | aliases | effect |") :]
    for row in re.findall(r"^\| `(\w+)[^|]*\| ([^|]+) \|", english_table, re.M):
        action, aliases = row
        for alias in aliases.split(","):
            argument = REQUIRED_ARGUMENT.get(action, "")
            command = parse(f"QN-1 {alias.strip()} {argument}")
            assert command.action == action, (alias, command.action)


@pytest.fixture
def tracker(tmp_path: Path) -> tuple[Config, Database]:
    data = config_data(f"sqlite:///{tmp_path / 'tracker.db'}")
    data["units"][1]["id"] = "soyte"
    config = config_from_dict(data, environ=ENVIRON)
    return config, open_database(config.tracker.database)


@pytest.mark.parametrize("language", ["vi", "en"])
def test_every_example_applies_to_a_fresh_case(
    tracker: tuple[Config, Database], language: str
) -> None:
    config, db = tracker
    service = CaseService(config)
    ingestor = Ingestor(db, config)
    for number, line in enumerate(examples(language), start=1):
        raw = notification(report_id=f"SKVN-CS-{number}", phone=f"09050000{number:02d}")
        ingestor.import_messages("cdc", [(f"{number}.eml", raw)], now=NOW)
        ingestor.process_pending(now=NOW)
        ref = f"QN-{number:04d}"
        with db.session() as session:
            for step in PREPARE.get(parse(line).action, []):
                prepared = service.apply_line(session, f"{ref} {step}", actor=STAFF,
                                              channel="email", now=NOW)  # fmt: skip
                assert prepared.applied, prepared
            command = dataclasses.replace(parse(line), ref=ref)
            outcome = service.apply_command(session, command, actor=STAFF, channel="email", now=NOW)
            assert outcome.applied, f"{line!r}: {outcome.message_en}"
        with db.session(read_only=True) as session:
            case = find_case(session, ref)
            assert case is not None
            assert case.events[-1].action == command.action
            assert case.events[-1].actor == STAFF


def test_the_readme_links_the_cheat_sheet() -> None:
    assert "docs/cheatsheet.md" in README.read_text("utf-8")
