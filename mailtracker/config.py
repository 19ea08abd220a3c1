"""Configuration: ``config.toml`` turned into typed, validated settings, with secret references.

Every problem found is reported at once, each naming the file and the key path
(``units[1].mailboxes[0].password``). Secrets are references (``env:NAME``, ``file:/path``)
resolved only when revealed; a secret written in the file itself is accepted with a warning.
Relative paths (a SQLite database, a ``file:`` secret) are relative to the config file's directory.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from mailtracker.domain.workflow import Rules

log = logging.getLogger(__name__)

Language = Literal["vi", "en"]
Role = Literal["lead", "member", "observer"]
SmtpSecurity = Literal["starttls", "ssl", "none"]
ImapSecurity = Literal["ssl", "starttls", "none"]
ImapAuth = Literal["password", "xoauth2"]

LANGUAGES: tuple[Language, ...] = ("vi", "en")
ROLES: tuple[Role, ...] = ("lead", "member", "observer")
SMTP_SECURITY: tuple[SmtpSecurity, ...] = ("starttls", "ssl", "none")
IMAP_SECURITY: tuple[ImapSecurity, ...] = ("ssl", "starttls", "none")
IMAP_AUTH: tuple[ImapAuth, ...] = ("password", "xoauth2")

SMTP_PORTS: Mapping[str, int] = {"starttls": 587, "ssl": 465, "none": 25}
IMAP_PORTS: Mapping[str, int] = {"ssl": 993, "starttls": 143, "none": 143}

DEFAULT_DATABASE = "sqlite:///mailtracker.db"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
DEFAULT_CONFIG_FILE = "config.toml"
CONFIG_ENV_VAR = "MAILTRACKER_CONFIG"

_DURATION_UNITS: Mapping[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION_SHAPE = re.compile(r"(?:\d+\s*[wdhms]\s*)+")
_DURATION_PART = re.compile(r"(\d+)\s*([wdhms])")
_MAX_DURATION = dt.timedelta(days=3650)
_DURATION_HINT = (
    'write a number and a unit (s, m, h, d, w), e.g. "90s", "15m", "24h", "14d", "1h30m"'
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_CASE_PREFIX = re.compile(r"[A-Z]{1,6}")
_HH_MM = re.compile(r"(\d{1,2}):(\d{2})")
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\.][^@\s<>()\[\],;:\"\\]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """An invalid or unusable configuration.

    ``problems`` holds ``(key path, message)`` pairs; ``str()`` gives one line per problem,
    each naming the file (when known), the key path and what is wrong.
    """

    def __init__(self, problems: str | Iterable[tuple[str, str]], path: Path | None = None):
        self.path = path
        self.problems: tuple[tuple[str, str], ...] = (
            (("", problems),) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(_locate(path, key, message) for key, message in self.problems))


def _locate(path: Path | None, key: str, message: str) -> str:
    """``file: key: message``, leaving out what is unknown."""
    return ": ".join(part for part in (str(path) if path else "", key, message) if part)


@dataclass(frozen=True, slots=True)
class Secret:
    """A reference to a secret, resolved only when revealed.

    ``source`` is ``"env:NAME"``, ``"file:/path"`` or ``"literal"`` (the value written in the
    config file itself, kept in ``value`` and never shown by ``repr``).
    """

    key: str
    source: str
    value: str | None = field(default=None, repr=False)
    config_path: Path | None = field(default=None, compare=False)
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def is_reference(self) -> bool:
        """True for an ``env:`` or ``file:`` reference, False for a literal."""
        return self.source.startswith(("env:", "file:"))

    def reveal(self) -> str:
        """The secret; ConfigError naming the key and the variable or file when unresolvable."""
        if self.source.startswith("env:"):
            name = self.source[len("env:") :]
            environ = os.environ if self.environ is None else self.environ
            value = environ.get(name)
            if value is None:
                self._fail(f"environment variable {name} is not set")
            if not value:
                self._fail(f"environment variable {name} is empty")
            return value
        if self.source.startswith("file:"):
            secret_file = Path(self.source[len("file:") :])
            try:
                text = secret_file.read_text(encoding="utf-8")
            except OSError as error:
                self._fail(f"cannot read secret file {secret_file}: {error.strerror or error}")
            except UnicodeDecodeError:
                self._fail(f"secret file {secret_file} is not UTF-8 text")
            text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
            if not text:
                self._fail(f"secret file {secret_file} is empty")
            return text
        if self.value:
            return self.value
        self._fail("the secret is empty")

    def _fail(self, message: str) -> NoReturn:
        raise ConfigError([(self.key, message)], self.config_path)


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """The ``[tracker]`` section."""

    database: str
    timezone: zoneinfo.ZoneInfo
    case_prefix: str
    language: Language
    secret_key: Secret | None
    reply_token_days: int
    max_message_bytes: int
    retention_days: int | None
    mailbox_lease: dt.timedelta
    previous_secret_keys: tuple[Secret, ...] = ()
    """Former ``secret_key`` values whose reply tokens are still accepted (a rotation's grace)."""
    parse_workers: int = 0
    """Worker processes parsing a backlog of mail while the cases are written; 0: none."""


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The ``[smtp]`` section (``from`` is ``sender``)."""

    host: str
    port: int
    security: SmtpSecurity
    username: str | None
    password: Secret | None
    sender: str


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    """One ``[[units.mailboxes]]`` entry; ``index`` is its position within the unit."""

    unit_id: str
    index: int
    host: str
    port: int
    security: ImapSecurity
    username: str
    auth: ImapAuth
    password: Secret | None
    oauth2_token: Secret | None
    folder: str
    idle: bool
    poll_every: dt.timedelta

    @property
    def name(self) -> str:
        """A stable identifier of the mailbox, used to track the polling position."""
        return f"{self.unit_id}:{self.username}@{self.host}/{self.folder}"


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """One ``[[units]]`` entry."""

    id: str
    name: str
    role: Role
    staff: frozenset[str]
    digest_to: tuple[str, ...]
    digest_at: dt.time
    language: Language
    mailboxes: tuple[MailboxSettings, ...]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path | None
    tracker: TrackerSettings
    smtp: SmtpSettings | None
    rules: Rules
    units: tuple[UnitSettings, ...]
    warnings: tuple[str, ...] = ()

    def unit(self, unit_id: str) -> UnitSettings:
        """The unit with this id (case-insensitive); ConfigError when there is none."""
        wanted = unit_id.strip().lower()
        for unit in self.units:
            if unit.id == wanted:
                return unit
        known = [unit.id for unit in self.units]
        raise ConfigError(
            [("units", f"unknown unit id {unit_id!r}{_suggest(wanted, known)}")], self.path
        )

    def lead_unit(self) -> UnitSettings:
        """The first unit with role ``lead`` (validation guarantees there is one)."""
        return next(unit for unit in self.units if unit.role == "lead")

    @property
    def mailboxes(self) -> tuple[MailboxSettings, ...]:
        """Every mailbox of every unit, in file order."""
        return tuple(mailbox for unit in self.units for mailbox in unit.mailboxes)


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"24h"``, ``"14d"``, ``"2w"`` or combinations like ``"1h30m"``.

    Units: s(econds), m(inutes), h(ours), d(ays), w(eeks), largest first, each at most once.
    The result is positive and at most ten years; anything else raises ValueError.
    """
    normalised = text.strip().lower()
    if not _DURATION_SHAPE.fullmatch(normalised):
        raise ValueError(f"invalid duration {text!r}: {_DURATION_HINT}")
    parts = _DURATION_PART.findall(normalised)
    order = [list(_DURATION_UNITS).index(unit) for _, unit in parts]
    if order != sorted(set(order)):
        raise ValueError(f"invalid duration {text!r}: give each unit once, largest first")
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds == 0:
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    if seconds > _MAX_DURATION.total_seconds():
        raise ValueError(f"invalid duration {text!r}: longer than {_MAX_DURATION.days} days")
    return dt.timedelta(seconds=seconds)


def load_config(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file (default: ``$MAILTRACKER_CONFIG``, else ``./config.toml``).

    ``environ`` (default ``os.environ``) is where ``env:`` secrets are looked up.
    """
    environment = os.environ if environ is None else environ
    config_path = Path(path or environment.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)
    try:
        with config_path.open("rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(
            "file not found (copy config.example.toml to start one)", config_path
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror or error}", config_path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", config_path) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"TOML syntax error: {error}", config_path) from None
    return config_from_dict(data, path=config_path, environ=environ)


def config_from_dict(
    data: Mapping[str, Any],
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate already-parsed TOML data; ``path`` names the file in messages and anchors
    relative paths (without it, relative paths stay relative to the working directory)."""
    reader = _Reader(path, environ)
    config = reader.config(data)
    if reader.problems:
        raise ConfigError(reader.problems, path)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def default_parse_workers() -> int:
    """``tracker.parse_workers`` by default: one per usable core but one (the main process
    writes the cases meanwhile), up to four; none on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cores or 1) < 2 else min((cores or 1) - 1, 4)


def _suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: object) -> str:
    """How a TOML value is called in messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"


def _bare_address(text: str) -> str | None:
    """The address part of ``text`` (``a@b`` or ``Name <a@b>``), or None when it is not one."""
    if _CONTROL.search(text):
        return None
    _, address = parseaddr(text)
    return address if _ADDRESS.fullmatch(address) else None


_TOP_LEVEL = ("tracker", "smtp", "rules", "units")
_TRACKER_KEYS = (
    "database",
    "timezone",
    "case_prefix",
    "language",
    "secret_key",
    "reply_token_days",
    "max_message_bytes",
    "retention_days",
    "mailbox_lease",
    "previous_secret_keys",
    "parse_workers",
)
_SMTP_KEYS = ("host", "port", "security", "username", "password", "from")
_RULES_KEYS = tuple(rule.name for rule in fields(Rules))
_UNIT_KEYS = ("id", "name", "role", "staff", "digest_to", "digest_at", "language", "mailboxes")
_MAILBOX_KEYS = (
    "host",
    "port",
    "security",
    "username",
    "auth",
    "password",
    "oauth2_token",
    "folder",
    "idle",
    "poll_every",
)

_MISSING = object()
_Option = TypeVar("_Option", bound=str)


class _Reader:
    """Walks the TOML data, collecting every problem and warning with its key path."""

    def __init__(self, path: Path | None, environ: Mapping[str, str] | None):
        self.path = path
        self.base_dir = path.resolve().parent if path is not None else None
        self.environ = environ
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(_locate(self.path, key, message))

    # -- structure -------------------------------------------------------------------------

    def known_keys(self, table: Mapping[str, Any], where: str, known: Sequence[str]) -> None:
        for name in table:
            if name not in known:
                self.error(_join(where, name), f"unknown key{_suggest(name, known)}")

    def table(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if isinstance(value, Mapping):
            return value
        self.error(name, f"must be a table ([{name}]), not {_kind(value)}")
        return {}

    def tables(self, data: Mapping[str, Any], where: str, name: str) -> list[Mapping[str, Any]]:
        value = data.get(name, [])
        key = _join(where, name)
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.error(key, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
            return []
        return value

    # -- scalar values ---------------------------------------------------------------------

    def raw(self, table: Mapping[str, Any], where: str, name: str, *, required: bool) -> Any:
        value = table.get(name, _MISSING)
        if value is _MISSING and required:
            self.error(_join(where, name), "is required")
        return value

    def string(
        self, table: Mapping[str, Any], where: str, name: str, default: str | None = None
    ) -> str | None:
        """A stripped string without control characters; None when absent without a default."""
        value = self.raw(table, where, name, required=default is None)
        if value is _MISSING:
            return default
        key = _join(where, name)
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {_kind(value)}")
            return default
        if _CONTROL.search(value):
            self.error(key, "contains a line break or another control character")
            return default
        value = value.strip()
        if not value and default is None:
            self.error(key, "must not be empty")
        return value or default

    def choice(
        self,
        table: Mapping[str, Any],
        where: str,
        name: str,
        options: Sequence[_Option],
        default: _Option,
    ) -> _Option:
        value = self.string(table, where, name, default)
        for option in options:
            if value is not None and value.lower() == option:
                return option
        self.error(_join(where, name), f"must be one of {', '.join(options)} (got {value!r})")
        return default

    def integer(
        self,
        table: Mapping[str, Any],
        where: str,
        name: str,
        default: int | None,
        low: int,
        high: int,
    ) -> int | None:
        value = self.raw(table, where, name, required=False)
        if value is _MISSING:
            return default
        key = _join(where, name)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, not {_kind(value)}")
        elif not low <= value <= high:
            self.error(key, f"must be between {low} and {high} (got {value})")
        else:
            return value
        return default

    def boolean(self, table: Mapping[str, Any], where: str, name: str, default: bool) -> bool:
        value = self.raw(table, where, name, required=False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.error(_join(where, name), f"must be true or false, not {_kind(value)}")
            return default
        return value

    def duration(
        self, table: Mapping[str, Any], where: str, name: str, default: dt.timedelta
    ) -> dt.timedelta:
        value = self.raw(table, where, name, required=False)
        if value is _MISSING:
            return default
        key = _join(where, name)
        if not isinstance(value, str):
            self.error(key, f"must be a duration string, not {_kind(value)}: {_DURATION_HINT}")
            return default
        try:
            return parse_duration(value)
        except ValueError as error:
            self.error(key, str(error))
            return default

    def port(self, table: Mapping[str, Any], where: str, default: int) -> int:
        return self.integer(table, where, "port", default, 1, 65535) or default

    def host(self, table: Mapping[str, Any], where: str) -> str:
        value = self.string(table, where, "host") or ""
        if value and re.search(r"[\s/@]", value):
            self.error(_join(where, "host"), f"not a host name: {value!r}")
        return value.lower()

    def secret(self, table: Mapping[str, Any], where: str, name: str) -> Secret | None:
        """A secret reference; None when absent or empty; a literal is kept with a warning."""
        value = self.raw(table, where, name, required=False)
        key = _join(where, name)
        if value is _MISSING or value == "":
            return None
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {_kind(value)}")
            return None
        if value.startswith("env:"):
            variable = value[len("env:") :].strip()
            if not _ENV_NAME.fullmatch(variable):
                self.error(key, f"not a valid environment variable name: {variable!r}")
            return Secret(key, f"env:{variable}", config_path=self.path, environ=self.environ)
        if value.startswith("file:"):
            location = value[len("file:") :].strip()
            if not location:
                self.error(key, 'a file reference needs a path: "file:/path/to/secret"')
            secret_path = Path(location).expanduser()
            if self.base_dir is not None and not secret_path.is_absolute():
                secret_path = self.base_dir / secret_path
            return Secret(key, f"file:{secret_path}", config_path=self.path)
        self.warn(
            key,
            "a secret is written in the config file itself; anyone who can read the file can "
            'read it: use "env:NAME" or "file:/path" instead',
        )
        return Secret(key, "literal", value=value, config_path=self.path)

    def secrets(self, table: Mapping[str, Any], where: str, name: str) -> tuple[Secret, ...]:
        """An array of secret references, each read as :meth:`secret` reads one."""
        value = self.raw(table, where, name, required=False)
        if value is _MISSING:
            return ()
        if not isinstance(value, list):
            self.error(_join(where, name), f"must be an array of strings, not {_kind(value)}")
            return ()
        items = {str(index): item for index, item in enumerate(value)}
        found = (self.secret(items, _join(where, name), index) for index in items)
        return tuple(secret for secret in found if secret is not None)

    def addresses(self, table: Mapping[str, Any], where: str, name: str) -> tuple[str, ...]:
        """An array of e-mail addresses, returned bare and lower-cased."""
        value = self.raw(table, where, name, required=False)
        key = _join(where, name)
        if value is _MISSING:
            return ()
        if not isinstance(value, list):
            self.error(key, f"must be an array of e-mail addresses, not {_kind(value)}")
            return ()
        found: list[str] = []
        for position, entry in enumerate(value):
            address = _bare_address(entry) if isinstance(entry, str) else None
            if address is None:
                self.error(f"{key}[{position}]", f"not an e-mail address: {entry!r}")
            elif address.lower() not in found:
                found.append(address.lower())
        return tuple(found)

    # -- sections --------------------------------------------------------------------------

    def config(self, data: Mapping[str, Any]) -> Config:
        for name in data:
            if name not in _TOP_LEVEL:
                close = difflib.get_close_matches(name, _TOP_LEVEL, n=1, cutoff=0.6)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                self.error(name, f"unknown section{hint}")
        tracker_table = self.table(data, "tracker")
        tracker = self.tracker(tracker_table)
        smtp = self.smtp(self.table(data, "smtp")) if "smtp" in data else None
        rules = self.rules(self.table(data, "rules"))
        units = self.units(data, tracker.language)
        if tracker.secret_key is None and any(unit.staff for unit in units):
            self.error(
                "tracker.secret_key",
                "is required when a unit has staff: replies are accepted only with signed "
                'tokens (e.g. secret_key = "env:MAILTRACKER_SECRET")',
            )
        return Config(self.path, tracker, smtp, rules, units, tuple(self.warnings))

    def tracker(self, table: Mapping[str, Any]) -> TrackerSettings:
        self.known_keys(table, "tracker", _TRACKER_KEYS)
        where = "tracker"
        database = self.database(self.string(table, where, "database", DEFAULT_DATABASE))
        prefix = (self.string(table, where, "case_prefix", "QN") or "QN").upper()
        if not _CASE_PREFIX.fullmatch(prefix):
            self.error("tracker.case_prefix", f"must be 1 to 6 letters A-Z (got {prefix!r})")
        return TrackerSettings(
            database=database,
            timezone=self.timezone(self.string(table, where, "timezone", DEFAULT_TIMEZONE)),
            case_prefix=prefix,
            language=self.choice(table, where, "language", LANGUAGES, "vi"),
            secret_key=self.secret(table, where, "secret_key"),
            reply_token_days=self.integer(table, where, "reply_token_days", 14, 1, 365) or 14,
            max_message_bytes=self.integer(
                table, where, "max_message_bytes", 25 * 1024 * 1024, 1024, 2**31 - 1
            )
            or 25 * 1024 * 1024,
            retention_days=self.integer(table, where, "retention_days", None, 1, 36500),
            mailbox_lease=self.mailbox_lease(table),
            previous_secret_keys=self.secrets(table, where, "previous_secret_keys"),
            parse_workers=self.integer(
                table, where, "parse_workers", default_parse_workers(), 0, 16
            )
            or 0,
        )

    def mailbox_lease(self, table: Mapping[str, Any]) -> dt.timedelta:
        """How long an instance holds a mailbox without renewing it: 3 seconds to 1 hour."""
        default = dt.timedelta(seconds=60)
        lease = self.duration(table, "tracker", "mailbox_lease", default)
        if not dt.timedelta(seconds=3) <= lease <= dt.timedelta(hours=1):
            self.error("tracker.mailbox_lease", f"must be between 3s and 1h (got {lease})")
            return default
        return lease

    def database(self, text: str | None) -> str:
        """A SQLAlchemy URL; a relative SQLite path is anchored at the config file's directory."""
        key = "tracker.database"
        text = text or DEFAULT_DATABASE
        try:
            url = make_url(text)
            url.get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError):
            self.error(key, "not a valid SQLAlchemy URL (e.g. sqlite:///var/mailtracker.db)")
            return text
        if url.password:
            self.warn(
                key,
                "the URL holds a password; give it to the database client through the service "
                "environment instead (PGPASSWORD or PGPASSFILE for PostgreSQL)",
            )
        database = url.database
        if (
            url.get_backend_name() == "sqlite"
            and database
            and database != ":memory:"
            and not database.startswith("file:")
            and not Path(database).is_absolute()
            and self.base_dir is not None
        ):
            return url.set(database=str(self.base_dir / database)).render_as_string(
                hide_password=False
            )
        return text

    def timezone(self, name: str | None) -> zoneinfo.ZoneInfo:
        name = name or DEFAULT_TIMEZONE
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            hint = _suggest(name, zoneinfo.available_timezones())
            self.error("tracker.timezone", f"unknown time zone {name!r}{hint}")
            return zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)

    def smtp(self, table: Mapping[str, Any]) -> SmtpSettings:
        where = "smtp"
        self.known_keys(table, where, _SMTP_KEYS)
        security = self.choice(table, where, "security", SMTP_SECURITY, "starttls")
        username = self.string(table, where, "username", "") or None
        password = self.secret(table, where, "password")
        if username and password is None:
            self.error("smtp.password", "is required when smtp.username is set")
        if password is not None and not username:
            self.error("smtp.password", "is given but smtp.username is not")
        sender = self.string(table, where, "from") or ""
        if sender and _bare_address(sender) is None:
            self.error(
                "smtp.from", f'not an e-mail address such as "Name <a@example.org>": {sender!r}'
            )
        return SmtpSettings(
            host=self.host(table, where),
            port=self.port(table, where, SMTP_PORTS[security]),
            security=security,
            username=username,
            password=password,
            sender=sender,
        )

    def rules(self, table: Mapping[str, Any]) -> Rules:
        self.known_keys(table, "rules", _RULES_KEYS)
        default = Rules()

        def days(name: str, fallback: int) -> int:
            return self.integer(table, "rules", name, fallback, 1, 365) or fallback

        return Rules(
            verify_within=self.duration(table, "rules", "verify_within", default.verify_within),
            monitoring_days=days("monitoring_days", default.monitoring_days),
            home_isolation_days=days("home_isolation_days", default.home_isolation_days),
            facility_isolation_days=days(
                "facility_isolation_days", default.facility_isolation_days
            ),
            followup_every=self.duration(table, "rules", "followup_every", default.followup_every),
            facility_followup_every=self.duration(
                table, "rules", "facility_followup_every", default.facility_followup_every
            ),
        )

    def units(self, data: Mapping[str, Any], language: Language) -> tuple[UnitSettings, ...]:
        known_problems = len(self.problems)
        entries = self.tables(data, "", "units")
        if not entries and len(self.problems) == known_problems:
            self.error("units", "no unit configured: add at least one [[units]] table")
        units: list[UnitSettings] = []
        first_use: dict[str, str] = {}
        mailbox_owners: dict[tuple[str, str, str], str] = {}
        for position, table in enumerate(entries):
            where = f"units[{position}]"
            unit = self.unit(table, where, language)
            if unit.id in first_use:
                self.error(
                    f"{where}.id", f"duplicate unit id {unit.id!r} (also {first_use[unit.id]})"
                )
            first_use.setdefault(unit.id, where)
            for mailbox in unit.mailboxes:
                identity = (mailbox.host, mailbox.username.lower(), mailbox.folder)
                mailbox_where = f"{where}.mailboxes[{mailbox.index}]"
                if identity in mailbox_owners:
                    self.error(
                        mailbox_where,
                        f"duplicate mailbox {mailbox.username}@{mailbox.host}/{mailbox.folder} "
                        f"(also {mailbox_owners[identity]})",
                    )
                mailbox_owners.setdefault(identity, mailbox_where)
            units.append(unit)
        role_problems = any(key.endswith(".role") for key, _ in self.problems)
        if units and not role_problems and not any(unit.role == "lead" for unit in units):
            self.error("units", 'no unit has role = "lead" (one is needed: it owns imports)')
        if units and not mailbox_owners:
            self.warn("units", "no [[units.mailboxes]]: nothing will be polled")
        return tuple(units)

    def unit(self, table: Mapping[str, Any], where: str, language: Language) -> UnitSettings:
        self.known_keys(table, where, _UNIT_KEYS)
        unit_id = (self.string(table, where, "id") or "").lower()
        if unit_id and not _UNIT_ID.fullmatch(unit_id):
            self.error(
                f"{where}.id",
                f"{unit_id!r}: use 1 to 32 letters a-z, digits, '-' or '_', starting with a "
                "letter or digit",
            )
        known_problems = len(self.problems)
        digest_to = self.addresses(table, where, "digest_to")
        if not digest_to and len(self.problems) == known_problems:
            self.warn(f"{where}.digest_to", "no address: this unit gets no digest")
        mailboxes = tuple(
            self.mailbox(mailbox_table, f"{where}.mailboxes[{index}]", unit_id, index)
            for index, mailbox_table in enumerate(self.tables(table, where, "mailboxes"))
        )
        return UnitSettings(
            id=unit_id,
            name=self.string(table, where, "name", unit_id) or unit_id,
            role=self.choice(table, where, "role", ROLES, "member"),
            staff=frozenset(self.addresses(table, where, "staff")),
            digest_to=digest_to,
            digest_at=self.digest_at(table, where),
            language=self.choice(table, where, "language", LANGUAGES, language),
            mailboxes=mailboxes,
        )

    def digest_at(self, table: Mapping[str, Any], where: str) -> dt.time:
        value = self.raw(table, where, "digest_at", required=False)
        default = dt.time(7, 0)
        if value is _MISSING:
            return default
        if isinstance(value, dt.time) and value.tzinfo is None:
            return value
        match = _HH_MM.fullmatch(value.strip()) if isinstance(value, str) else None
        if match and int(match[1]) < 24 and int(match[2]) < 60:
            return dt.time(int(match[1]), int(match[2]))
        self.error(
            f"{where}.digest_at",
            f'must be a local time "HH:MM" such as "07:00" (got {value!r})',
        )
        return default

    def mailbox(
        self, table: Mapping[str, Any], where: str, unit_id: str, index: int
    ) -> MailboxSettings:
        self.known_keys(table, where, _MAILBOX_KEYS)
        security = self.choice(table, where, "security", IMAP_SECURITY, "ssl")
        auth = self.choice(table, where, "auth", IMAP_AUTH, "password")
        password = self.secret(table, where, "password")
        token = self.secret(table, where, "oauth2_token")
        if auth == "password" and password is None:
            self.error(
                f"{where}.password",
                'is required with auth = "password" (e.g. password = "env:CDC_IMAP_PASSWORD")',
            )
        if auth == "password" and token is not None:
            self.error(f"{where}.oauth2_token", 'is only used with auth = "xoauth2"')
        if auth == "xoauth2" and token is None:
            self.error(
                f"{where}.oauth2_token",
                'is required with auth = "xoauth2" (e.g. oauth2_token = "env:CDC_OAUTH2_TOKEN")',
            )
        if auth == "xoauth2" and password is not None:
            self.error(f"{where}.password", 'is not used with auth = "xoauth2"')
        return MailboxSettings(
            unit_id=unit_id,
            index=index,
            host=self.host(table, where),
            port=self.port(table, where, IMAP_PORTS[security]),
            security=security,
            username=self.string(table, where, "username") or "",
            auth=auth,
            password=password,
            oauth2_token=token,
            folder=self.string(table, where, "folder", "INBOX") or "INBOX",
            idle=self.boolean(table, where, "idle", True),
            poll_every=self.duration(table, where, "poll_every", dt.timedelta(seconds=60)),
        )
