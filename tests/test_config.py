"""Configuration loading: defaults, validation messages, durations, secrets, the example file."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailtracker.cli import main
from mailtracker.config import (
    Config,
    ConfigError,
    Secret,
    config_from_dict,
    load_config,
    parse_duration,
)
from mailtracker.domain.workflow import Rules

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"
BRIEF = Path(__file__).resolve().parents[2] / "shared" / "design.md"


def minimal() -> dict[str, Any]:
    """The smallest valid configuration: one lead unit with one mailbox."""
    return {
        "tracker": {"secret_key": "env:MT_SECRET"},
        "units": [
            {
                "id": "cdc",
                "role": "lead",
                "staff": ["epi@example.org"],
                "digest_to": ["epi@example.org"],
                "mailboxes": [
                    {
                        "host": "imap.example.org",
                        "username": "cdc@example.org",
                        "password": "env:CDC_PW",
                    }
                ],
            }
        ],
    }


def second_unit(data: dict[str, Any]) -> dict[str, Any]:
    unit: dict[str, Any] = {
        "id": "soyte",
        "role": "member",
        "mailboxes": [
            {"host": "imap.example.org", "username": "soyte@example.org", "password": "env:S"}
        ],
    }
    data["units"].append(unit)
    return unit


def problems_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return dict(caught.value.problems)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL_TOML = """
[tracker]
secret_key = "env:MT_SECRET"

[[units]]
id = "cdc"
role = "lead"
staff = ["epi@example.org"]
digest_to = ["epi@example.org"]

  [[units.mailboxes]]
  host = "imap.example.org"
  username = "cdc@example.org"
  password = "env:CDC_PW"
"""


# -- defaults ----------------------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = config_from_dict(minimal())
    tracker = config.tracker
    assert tracker.database == "sqlite:///mailtracker.db"
    assert tracker.timezone == ZoneInfo("Asia/Ho_Chi_Minh")
    assert tracker.case_prefix == "QN"
    assert tracker.language == "vi"
    assert tracker.reply_token_days == 14
    assert tracker.max_message_bytes == 25 * 1024 * 1024
    assert tracker.retention_days is None
    cores = len(os.sched_getaffinity(0))
    assert tracker.parse_workers == (0 if cores < 2 else min(cores - 1, 4))
    assert config.rules == Rules()
    assert config.rules.verify_within == dt.timedelta(hours=24)
    assert config.rules.facility_followup_every == dt.timedelta(hours=12)
    assert config.smtp is None
    unit = config.units[0]
    assert unit.name == "cdc"
    assert unit.digest_at == dt.time(7, 0)
    assert unit.language == "vi"
    mailbox = unit.mailboxes[0]
    assert (mailbox.port, mailbox.security, mailbox.auth) == (993, "ssl", "password")
    assert (mailbox.folder, mailbox.idle) == ("INBOX", True)
    assert mailbox.poll_every == dt.timedelta(seconds=60)
    assert config.warnings == ()  # no [smtp] is a state check-config and run report


def test_unit_language_defaults_to_the_tracker_language() -> None:
    data = minimal()
    data["tracker"]["language"] = "en"
    assert config_from_dict(data).units[0].language == "en"


@pytest.mark.parametrize(("security", "port"), [("ssl", 993), ("starttls", 143), ("none", 143)])
def test_imap_port_defaults_by_security(security: str, port: int) -> None:
    data = minimal()
    data["units"][0]["mailboxes"][0]["security"] = security
    assert config_from_dict(data).mailboxes[0].port == port


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_smtp_port_defaults_by_security(security: str, port: int) -> None:
    data = minimal()
    data["smtp"] = {"host": "smtp.example.org", "security": security, "from": "t@example.org"}
    smtp = config_from_dict(data).smtp
    assert smtp is not None
    assert (smtp.port, smtp.security, smtp.username, smtp.password) == (port, security, None, None)


def test_values_are_read_and_normalised() -> None:
    data = minimal()
    data["tracker"].update(case_prefix="qn", reply_token_days=7, retention_days=400)
    data["smtp"] = {
        "host": "SMTP.Example.org",
        "username": "tracker@example.org",
        "password": "env:SMTP_PW",
        "from": "Mailtracker QN <tracker@example.org>",
    }
    unit = data["units"][0]
    unit.update(
        name="Trung tâm Kiểm soát bệnh tật",
        staff=["Epi@Example.ORG", "Duty Officer <duty@example.org>", "epi@example.org"],
        digest_at="6:05",
    )
    unit["mailboxes"][0].update(idle=False, poll_every="2m", folder="Reports", port=1993)
    config = config_from_dict(data)
    assert config.tracker.case_prefix == "QN"
    assert (config.tracker.reply_token_days, config.tracker.retention_days) == (7, 400)
    assert config.smtp is not None
    assert config.smtp.host == "smtp.example.org"
    assert config.smtp.sender == "Mailtracker QN <tracker@example.org>"
    assert config.smtp.password == Secret("smtp.password", "env:SMTP_PW")
    settings = config.units[0]
    assert settings.name == "Trung tâm Kiểm soát bệnh tật"
    assert settings.staff == frozenset({"epi@example.org", "duty@example.org"})
    assert settings.digest_at == dt.time(6, 5)
    mailbox = settings.mailboxes[0]
    assert (mailbox.idle, mailbox.poll_every, mailbox.folder, mailbox.port) == (
        False,
        dt.timedelta(minutes=2),
        "Reports",
        1993,
    )
    assert mailbox.name == "cdc:cdc@example.org@imap.example.org/Reports"


def test_digest_at_accepts_a_toml_local_time(tmp_path: Path) -> None:
    text = MINIMAL_TOML.replace('role = "lead"', 'role = "lead"\ndigest_at = 18:30:00')
    config = load_config(write(tmp_path, text))
    assert config.units[0].digest_at == dt.time(18, 30)


# -- units, lookups ----------------------------------------------------------------------------


def test_unit_lookup_lead_unit_and_mailboxes() -> None:
    data = minimal()
    data["units"].insert(0, {"id": "bgd", "role": "observer", "digest_to": ["d@example.org"]})
    second_unit(data)
    data["units"].append({"id": "cdc2", "role": "lead", "digest_to": ["x@example.org"]})
    config = config_from_dict(data)
    assert config.unit("SOYTE").id == "soyte"
    assert config.lead_unit().id == "cdc"
    assert [mailbox.unit_id for mailbox in config.mailboxes] == ["cdc", "soyte"]
    assert [mailbox.index for mailbox in config.mailboxes] == [0, 0]
    with pytest.raises(ConfigError, match=r"units: unknown unit id 'sooyte'; did you mean 'soyte'"):
        config.unit("sooyte")


# -- validation errors, each naming its key ----------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]


def mailbox0(data: dict[str, Any]) -> dict[str, Any]:
    box: dict[str, Any] = data["units"][0]["mailboxes"][0]
    return box


def with_smtp(**values: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["smtp"] = {"host": "smtp.example.org", "from": "t@example.org", **values}

    return mutate


def duplicate_mailbox(data: dict[str, Any]) -> None:
    unit = second_unit(data)
    unit["mailboxes"][0].update(host="IMAP.example.org", username="CDC@example.org")


ERROR_CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown section", lambda d: d.update(trackr={}), "trackr", "did you mean [tracker]?"),
    ("unknown section far", lambda d: d.update(zzz=1), "zzz", "unknown section"),
    (
        "unknown tracker key",
        lambda d: d["tracker"].update(timezon="UTC"),
        "tracker.timezon",
        "did you mean 'timezone'?",
    ),
    (
        "unknown mailbox key",
        lambda d: mailbox0(d).update(pasword="env:X"),
        "units[0].mailboxes[0].pasword",
        "did you mean 'password'?",
    ),
    (
        "unknown unit key",
        lambda d: d["units"][0].update(digest_too=[]),
        "units[0].digest_too",
        "did you mean 'digest_to'?",
    ),
    (
        "unknown rules key",
        lambda d: d.update(rules={"verify_whithin": "1h"}),
        "rules.verify_whithin",
        "did you mean 'verify_within'?",
    ),
    (
        "unknown smtp key",
        with_smtp(sender="t@example.org"),
        "smtp.sender",
        "unknown key",
    ),
    (
        "integer as string",
        lambda d: d["tracker"].update(reply_token_days="14"),
        "tracker.reply_token_days",
        "must be an integer, not a string",
    ),
    (
        "too many parsing workers",
        lambda d: d["tracker"].update(parse_workers=17),
        "tracker.parse_workers",
        "must be between 0 and 16 (got 17)",
    ),
    (
        "boolean as integer",
        lambda d: mailbox0(d).update(port=True),
        "units[0].mailboxes[0].port",
        "must be an integer, not a boolean",
    ),
    (
        "string as array",
        lambda d: d["units"][0].update(staff="epi@example.org"),
        "units[0].staff",
        "must be an array",
    ),
    (
        "boolean as string",
        lambda d: mailbox0(d).update(idle="yes"),
        "units[0].mailboxes[0].idle",
        "must be true or false",
    ),
    (
        "section not a table",
        lambda d: d.update(smtp="smtp.example.org"),
        "smtp",
        "must be a table",
    ),
    (
        "bad duration",
        lambda d: d.update(rules={"verify_within": "24 hours"}),
        "rules.verify_within",
        "invalid duration '24 hours'",
    ),
    (
        "duration as integer",
        lambda d: mailbox0(d).update(poll_every=60),
        "units[0].mailboxes[0].poll_every",
        "must be a duration string, not an integer",
    ),
    (
        "zero duration",
        lambda d: d.update(rules={"followup_every": "0h"}),
        "rules.followup_every",
        "longer than zero",
    ),
    (
        "rules days out of range",
        lambda d: d.update(rules={"monitoring_days": 0}),
        "rules.monitoring_days",
        "between 1 and 365",
    ),
    (
        "bad time zone",
        lambda d: d["tracker"].update(timezone="Asia/Ho_Chi_Min"),
        "tracker.timezone",
        "unknown time zone 'Asia/Ho_Chi_Min'; did you mean 'Asia/Ho_Chi_Minh'?",
    ),
    (
        "malformed time zone",
        lambda d: d["tracker"].update(timezone="../../etc/passwd"),
        "tracker.timezone",
        "unknown time zone",
    ),
    (
        "digest_at not HH:MM",
        lambda d: d["units"][0].update(digest_at="7am"),
        "units[0].digest_at",
        '"HH:MM"',
    ),
    (
        "digest_at out of range",
        lambda d: d["units"][0].update(digest_at="24:00"),
        "units[0].digest_at",
        '"HH:MM"',
    ),
    (
        "tracker language",
        lambda d: d["tracker"].update(language="fr"),
        "tracker.language",
        "must be one of vi, en (got 'fr')",
    ),
    (
        "unit language",
        lambda d: d["units"][0].update(language="de"),
        "units[0].language",
        "must be one of vi, en",
    ),
    (
        "role",
        lambda d: d["units"][0].update(role="boss"),
        "units[0].role",
        "must be one of lead, member, observer",
    ),
    (
        "imap security",
        lambda d: mailbox0(d).update(security="tls"),
        "units[0].mailboxes[0].security",
        "must be one of ssl, starttls, none",
    ),
    (
        "imap auth",
        lambda d: mailbox0(d).update(auth="oauth"),
        "units[0].mailboxes[0].auth",
        "must be one of password, xoauth2",
    ),
    (
        "smtp security",
        with_smtp(security="tls"),
        "smtp.security",
        "must be one of starttls, ssl, none",
    ),
    ("smtp port zero", with_smtp(port=0), "smtp.port", "between 1 and 65535 (got 0)"),
    (
        "imap port too high",
        lambda d: mailbox0(d).update(port=70000),
        "units[0].mailboxes[0].port",
        "between 1 and 65535 (got 70000)",
    ),
    (
        "duplicate unit id",
        lambda d: second_unit(d).update(id="CDC"),
        "units[1].id",
        "duplicate unit id 'cdc' (also units[0])",
    ),
    (
        "duplicate mailbox",
        duplicate_mailbox,
        "units[1].mailboxes[0]",
        "duplicate mailbox CDC@example.org@imap.example.org/INBOX (also units[0].mailboxes[0])",
    ),
    (
        "missing mailbox password",
        lambda d: mailbox0(d).pop("password"),
        "units[0].mailboxes[0].password",
        'is required with auth = "password"',
    ),
    (
        "empty mailbox password",
        lambda d: mailbox0(d).update(password=""),
        "units[0].mailboxes[0].password",
        'is required with auth = "password"',
    ),
    (
        "missing oauth2 token",
        lambda d: mailbox0(d).update(auth="xoauth2", password=None) or mailbox0(d).pop("password"),
        "units[0].mailboxes[0].oauth2_token",
        'is required with auth = "xoauth2"',
    ),
    (
        "password with xoauth2",
        lambda d: mailbox0(d).update(auth="xoauth2", oauth2_token="env:TOKEN"),
        "units[0].mailboxes[0].password",
        'is not used with auth = "xoauth2"',
    ),
    (
        "token with password auth",
        lambda d: mailbox0(d).update(oauth2_token="env:TOKEN"),
        "units[0].mailboxes[0].oauth2_token",
        'is only used with auth = "xoauth2"',
    ),
    (
        "missing mailbox host",
        lambda d: mailbox0(d).pop("host"),
        "units[0].mailboxes[0].host",
        "is required",
    ),
    (
        "mailbox host with a space",
        lambda d: mailbox0(d).update(host="imap example.org"),
        "units[0].mailboxes[0].host",
        "not a host name",
    ),
    (
        "missing mailbox username",
        lambda d: mailbox0(d).pop("username"),
        "units[0].mailboxes[0].username",
        "is required",
    ),
    (
        "control character in folder",
        lambda d: mailbox0(d).update(folder="INBOX\r\nA1 DELETE INBOX"),
        "units[0].mailboxes[0].folder",
        "control character",
    ),
    (
        "bad environment variable name",
        lambda d: mailbox0(d).update(password="env:1-BAD"),
        "units[0].mailboxes[0].password",
        "not a valid environment variable name: '1-BAD'",
    ),
    (
        "empty file reference",
        lambda d: mailbox0(d).update(password="file:"),
        "units[0].mailboxes[0].password",
        "a file reference needs a path",
    ),
    (
        "staff entry not an address",
        lambda d: d["units"][0].update(staff=["epi@example.org", "duty officer"]),
        "units[0].staff[1]",
        "not an e-mail address: 'duty officer'",
    ),
    (
        "staff entry not a string",
        lambda d: d["units"][0].update(staff=[42]),
        "units[0].staff[0]",
        "not an e-mail address: 42",
    ),
    (
        "digest_to entry not an address",
        lambda d: d["units"][0].update(digest_to=["epi@"]),
        "units[0].digest_to[0]",
        "not an e-mail address: 'epi@'",
    ),
    (
        "digest_to entry with a line break",
        lambda d: d["units"][0].update(digest_to=["a@example.org\nBcc: x@example.org"]),
        "units[0].digest_to[0]",
        "not an e-mail address",
    ),
    (
        "case prefix with a digit",
        lambda d: d["tracker"].update(case_prefix="Q1"),
        "tracker.case_prefix",
        "must be 1 to 6 letters A-Z (got 'Q1')",
    ),
    (
        "case prefix too long",
        lambda d: d["tracker"].update(case_prefix="QUANGNG"),
        "tracker.case_prefix",
        "must be 1 to 6 letters A-Z",
    ),
    (
        "case prefix with a diacritic",
        lambda d: d["tracker"].update(case_prefix="QNĐ"),
        "tracker.case_prefix",
        "must be 1 to 6 letters A-Z",
    ),
    ("no units", lambda d: d.pop("units"), "units", "no unit configured"),
    ("empty units", lambda d: d.update(units=[]), "units", "no unit configured"),
    (
        "units as a table",
        lambda d: d.update(units={"id": "cdc"}),
        "units",
        "must be an array of tables ([[units]])",
    ),
    (
        "mailboxes as a table",
        lambda d: d["units"][0].update(mailboxes={"host": "x"}),
        "units[0].mailboxes",
        "must be an array of tables ([[units[0].mailboxes]])",
    ),
    (
        "no lead unit",
        lambda d: d["units"][0].update(role="member"),
        "units",
        'no unit has role = "lead"',
    ),
    ("missing unit id", lambda d: d["units"][0].pop("id"), "units[0].id", "is required"),
    (
        "bad unit id",
        lambda d: d["units"][0].update(id="cdc unit"),
        "units[0].id",
        "'cdc unit': use 1 to 32 letters a-z",
    ),
    (
        "secret key needed for staff",
        lambda d: d["tracker"].pop("secret_key"),
        "tracker.secret_key",
        "is required when a unit has staff",
    ),
    (
        "database not a URL",
        lambda d: d["tracker"].update(database="/var/lib/mailtracker.db"),
        "tracker.database",
        "not a valid SQLAlchemy URL",
    ),
    (
        "database dialect misspelt",
        lambda d: d["tracker"].update(database="sqllite:///x.db"),
        "tracker.database",
        "not a valid SQLAlchemy URL",
    ),
    (
        "retention days zero",
        lambda d: d["tracker"].update(retention_days=0),
        "tracker.retention_days",
        "between 1 and",
    ),
    (
        "smtp from not an address",
        with_smtp(**{"from": "Mailtracker"}),
        "smtp.from",
        "not an e-mail address",
    ),
    (
        "smtp from with a line break",
        with_smtp(**{"from": "t@example.org\r\nBcc: all@example.org"}),
        "smtp.from",
        "control character",
    ),
    ("smtp from missing", with_smtp(**{"from": None}), "smtp.from", "must be a string"),
    ("smtp host missing", lambda d: d.update(smtp={"from": "t@x.org"}), "smtp.host", "required"),
    (
        "smtp login without password",
        with_smtp(username="tracker@example.org"),
        "smtp.password",
        "is required when smtp.username is set",
    ),
    (
        "smtp password without login",
        with_smtp(password="env:SMTP_PW"),
        "smtp.password",
        "is given but smtp.username is not",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_validation_error_names_the_key(mutate: Mutation, key: str, message: str) -> None:
    data = minimal()
    mutate(data)
    problems = problems_of(data)
    assert key in problems, problems
    assert message in problems[key]


def test_every_problem_is_reported_at_once() -> None:
    data = minimal()
    data["tracker"]["language"] = "fr"
    mailbox0(data).pop("password")
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    lines = str(caught.value).splitlines()
    assert lines == [
        "tracker.language: must be one of vi, en (got 'fr')",
        'units[0].mailboxes[0].password: is required with auth = "password" '
        '(e.g. password = "env:CDC_IMAP_PASSWORD")',
    ]


def test_a_bad_role_is_not_also_reported_as_a_missing_lead() -> None:
    data = minimal()
    data["units"][0]["role"] = "Lead unit"
    assert list(problems_of(data)) == ["units[0].role"]


def test_choices_ignore_case() -> None:
    data = minimal()
    data["units"][0].update(role="LEAD", language="EN")
    mailbox0(data)["security"] = "StartTLS"
    config = config_from_dict(data)
    assert (config.units[0].role, config.units[0].language) == ("lead", "en")
    assert config.mailboxes[0].security == "starttls"


def test_an_unlikely_key_gets_no_suggestion() -> None:
    data = minimal()
    data["tracker"]["colour"] = "blue"
    assert problems_of(data) == {"tracker.colour": "unknown key"}


def test_the_valid_base_really_is_valid() -> None:
    assert config_from_dict(copy.deepcopy(minimal())).units[0].id == "cdc"


# -- files -------------------------------------------------------------------------------------


def test_error_from_a_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TOML.replace('password = "env:CDC_PW"', ""))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f'{path}: units[0].mailboxes[0].password: is required with auth = "password" '
        '(e.g. password = "env:CDC_IMAP_PASSWORD")'
    )
    assert caught.value.path == path


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[tracker]\ntimezone = "Asia/Ho_Chi_Minh\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: TOML syntax error: .*line 2"):
        load_config(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: file not found"):
        load_config(path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(MINIMAL_TOML.replace("cdc", "c\xf0c").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8|TOML syntax error"):
        load_config(path)


def test_default_path_comes_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TOML, "elsewhere.toml")
    config = load_config(environ={"MAILTRACKER_CONFIG": str(path)})
    assert config.path == path


def test_default_path_is_config_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL_TOML)
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}).path == Path("config.toml")


def test_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    text = '[tracker]\ndatabase = "sqlite:///var/mt.db"\n' + MINIMAL_TOML.replace("[tracker]", "")
    config = load_config(write(tmp_path, text))
    assert config.tracker.database == f"sqlite:///{tmp_path.resolve()}/var/mt.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////srv/mailtracker/mt.db",
        "sqlite:///:memory:",
        "sqlite://",
        "postgresql+psycopg://tracker@db.example.org/mailtracker",
    ],
)
def test_other_database_urls_are_kept(tmp_path: Path, url: str) -> None:
    text = f'[tracker]\ndatabase = "{url}"\n' + MINIMAL_TOML.replace("[tracker]", "")
    assert load_config(write(tmp_path, text)).tracker.database == url


def test_without_a_file_a_relative_sqlite_path_stays_relative() -> None:
    data = minimal()
    data["tracker"]["database"] = "sqlite:///var/mt.db"
    assert config_from_dict(data).tracker.database == "sqlite:///var/mt.db"


def test_password_in_database_url_warns_without_showing_it() -> None:
    data = minimal()
    data["tracker"]["database"] = "postgresql+psycopg://tracker:hunter2@db/mt"
    config = config_from_dict(data)
    warnings = [w for w in config.warnings if w.startswith("tracker.database")]
    assert len(warnings) == 1
    assert "hunter2" not in warnings[0]


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", dt.timedelta(seconds=90)),
        ("15m", dt.timedelta(minutes=15)),
        ("24h", dt.timedelta(hours=24)),
        ("14d", dt.timedelta(days=14)),
        ("2w", dt.timedelta(weeks=2)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("1d 12h", dt.timedelta(days=1, hours=12)),
        (" 12H ", dt.timedelta(hours=12)),
        ("0h45m", dt.timedelta(minutes=45)),
    ],
)
def test_parse_duration(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "write a number and a unit"),
        ("90", "write a number and a unit"),
        ("h", "write a number and a unit"),
        ("1.5h", "write a number and a unit"),
        ("-5m", "write a number and a unit"),
        ("24 hours", "write a number and a unit"),
        ("3y", "write a number and a unit"),
        ("30m1h", "largest first"),
        ("1h1h", "largest first"),
        ("0s", "longer than zero"),
        ("3651d", "longer than 3650 days"),
        ("9" * 40 + "s", "longer than 3650 days"),
    ],
)
def test_parse_duration_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(text)


# -- secrets -----------------------------------------------------------------------------------


def test_env_secret_is_resolved_lazily_from_the_given_environment() -> None:
    environ = {"MT_SECRET": "s3cret"}
    config = config_from_dict(minimal(), environ=environ)
    secret = config.tracker.secret_key
    assert secret is not None
    assert (secret.key, secret.source, secret.is_reference) == (
        "tracker.secret_key",
        "env:MT_SECRET",
        True,
    )
    environ["MT_SECRET"] = "rotated"
    assert secret.reveal() == "rotated"


def test_unset_env_secret_names_the_key_and_variable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL_TOML), environ={"MT_SECRET": "x"})
    password = config.mailboxes[0].password
    assert password is not None
    with pytest.raises(ConfigError) as caught:
        password.reveal()
    assert str(caught.value) == (
        f"{tmp_path / 'config.toml'}: units[0].mailboxes[0].password: "
        "environment variable CDC_PW is not set"
    )


def test_empty_env_secret_is_refused() -> None:
    config = config_from_dict(minimal(), environ={"MT_SECRET": ""})
    assert config.tracker.secret_key is not None
    with pytest.raises(
        ConfigError, match=re.escape("tracker.secret_key: environment variable MT_SECRET is empty")
    ):
        config.tracker.secret_key.reveal()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("app-password\n", "app-password"),
        ("app-password\r\n", "app-password"),
        ("app-password", "app-password"),
        ("app-password\n\n", "app-password\n"),
        (" spaced \n", " spaced "),
    ],
)
def test_file_secret_strips_one_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    secret_file = tmp_path / "imap.secret"
    secret_file.write_bytes(content.encode())
    data = minimal()
    mailbox0(data)["password"] = f"file:{secret_file}"
    password = config_from_dict(data).mailboxes[0].password
    assert password is not None
    assert password.source == f"file:{secret_file}"
    assert password.reveal() == expected


def test_relative_file_secret_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("k3y\n", encoding="utf-8")
    text = MINIMAL_TOML.replace('"env:MT_SECRET"', '"file:secrets/key"')
    config = load_config(write(tmp_path, text))
    assert config.tracker.secret_key is not None
    assert config.tracker.secret_key.reveal() == "k3y"


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read"), ("\n", "is empty")])
def test_unusable_file_secret_names_the_key_and_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    secret_file = tmp_path / "missing.secret"
    if content is not None:
        secret_file.write_text(content, encoding="utf-8")
    data = minimal()
    mailbox0(data)["password"] = f"file:{secret_file}"
    password = config_from_dict(data).mailboxes[0].password
    assert password is not None
    with pytest.raises(ConfigError) as caught:
        password.reveal()
    text = str(caught.value)
    assert text.startswith("units[0].mailboxes[0].password: ")
    assert message in text
    assert str(secret_file) in text


def test_literal_secret_is_accepted_with_a_warning_that_hides_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    text = MINIMAL_TOML.replace('"env:CDC_PW"', '"Tr0ub4dor&3"')
    path = write(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="mailtracker.config"):
        config: Config = load_config(path)
    password = config.mailboxes[0].password
    assert password is not None
    assert (password.source, password.is_reference) == ("literal", False)
    assert password.reveal() == "Tr0ub4dor&3"
    literal_warnings = [w for w in config.warnings if "units[0].mailboxes[0].password" in w]
    assert len(literal_warnings) == 1
    assert literal_warnings[0].startswith(f"{path}: units[0].mailboxes[0].password: ")
    assert "env:NAME" in literal_warnings[0]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert literal_warnings[0] in logged
    for shown in (*config.warnings, *logged, repr(password), str(config)):
        assert "Tr0ub4dor&3" not in shown


def test_reference_configs_have_no_secret_warnings() -> None:
    config = config_from_dict(minimal())
    assert not [w for w in config.warnings if "secret" in w]


# -- the example file and the brief ------------------------------------------------------------

EXAMPLE_ENV = {
    "MAILTRACKER_SECRET": "example-secret",
    "MAILTRACKER_SMTP_PASSWORD": "smtp-password",
    "CDC_IMAP_PASSWORD": "cdc-password",
    "SOYTE_OAUTH2_TOKEN": "soyte-token",
}

CONTRACT_KEYS = {
    "tracker": {
        "database",
        "timezone",
        "case_prefix",
        "language",
        "secret_key",
        "reply_token_days",
    },
    "smtp": {"host", "port", "security", "username", "password", "from"},
    "rules": {
        "verify_within",
        "monitoring_days",
        "home_isolation_days",
        "facility_isolation_days",
        "followup_every",
        "facility_followup_every",
    },
    "units": {"id", "name", "role", "staff", "digest_to", "digest_at", "language", "mailboxes"},
    "mailboxes": {
        "host",
        "port",
        "security",
        "username",
        "password",
        "folder",
        "idle",
        "poll_every",
    },
}


def secrets_of(config: Config) -> list[Secret]:
    found = [config.tracker.secret_key, config.smtp.password if config.smtp else None]
    for mailbox in config.mailboxes:
        found += [mailbox.password, mailbox.oauth2_token]
    return [secret for secret in found if secret is not None]


def test_example_config_loads_and_every_secret_resolves_from_the_environment() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    assert config.warnings == ()
    assert [unit.id for unit in config.units] == ["cdc", "soyte"]
    assert config.lead_unit().id == "cdc"
    assert config.unit("soyte").mailboxes[0].auth == "xoauth2"
    secrets = secrets_of(config)
    assert len(secrets) == 4
    assert all(secret.source.startswith(("env:", "file:")) for secret in secrets)
    assert sorted(secret.reveal() for secret in secrets) == sorted(EXAMPLE_ENV.values())


def test_check_config_on_the_example_offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["--config", str(EXAMPLE), "check-config", "--no-login"]) == 0
    assert capsys.readouterr().out.endswith(": OK (2 unit(s), 2 mailbox(es))\n")
    monkeypatch.delenv("CDC_IMAP_PASSWORD")
    assert main(["--config", str(EXAMPLE), "check-config", "--no-login"]) == 1
    err = capsys.readouterr().err
    assert "units[0].mailboxes[0].password" in err and "CDC_IMAP_PASSWORD" in err
    assert "1 problem(s)" in err


def test_example_config_holds_every_contract_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for section in ("tracker", "smtp", "rules"):
        assert CONTRACT_KEYS[section] <= set(data[section]), section
    for unit in data["units"]:
        assert CONTRACT_KEYS["units"] <= set(unit)
    assert CONTRACT_KEYS["mailboxes"] <= set(data["units"][0]["mailboxes"][0])


def test_example_config_documents_every_key_with_a_comment() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    keyed = [line for line in lines if re.match(r"\s*#?\s*[a-z_0-9]+ = ", line)]
    first_definition: dict[str, str] = {}
    for line in keyed:
        key = line.lstrip(" #").split(" = ")[0]
        first_definition.setdefault(key, line)
    undocumented = {
        key: line
        for key, line in first_definition.items()
        if "#" not in line.lstrip(" #") and key not in {"name", "host", "username", "folder"}
    }
    assert undocumented == {}


def test_the_brief_configuration_example_loads(tmp_path: Path) -> None:
    if not BRIEF.exists():
        pytest.skip(f"the product brief is not beside the checkout ({BRIEF})")
    blocks = re.findall(r"```toml\n(.*?)```", BRIEF.read_text(encoding="utf-8"), re.S)
    assert blocks, "no toml block in the brief"
    path = write(tmp_path, blocks[0])
    config = load_config(path, environ={})
    assert config.tracker.database == f"sqlite:///{tmp_path.resolve()}/var/mailtracker.db"
    assert config.smtp is not None and config.smtp.sender.endswith("<tracker@example.org>")
    assert config.units[0].mailboxes[0].name == "cdc:cdc-inbox@example.org@imap.gmail.com/INBOX"
    assert config.rules == Rules()
