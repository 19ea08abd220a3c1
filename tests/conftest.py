"""Shared fixtures: a real IMAP server (Dovecot), configurations pointing at it, and the
databases (SQLite, PostgreSQL) the store-backed tests run on."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from servers import (
    IN_CI,
    POSTGRES_URL_ENV,
    ImapServer,
    MakeConfig,
    PostgresCluster,
    PostgresServer,
    ServerUnavailable,
    imap_server,
)

from mailtracker.store.db import Database, open_database


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real servers, bulk)")
    config.addinivalue_line("markers", "postgresql: runs on the throwaway PostgreSQL cluster")


@pytest.fixture
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A private IMAP server for one test: Dovecot; pymap where Dovecot is not installed
    (never in CI, where a missing Dovecot fails the test)."""
    if IN_CI and shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        pytest.fail("Dovecot is required in CI: apt-get install dovecot-imapd", pytrace=False)
    try:
        with imap_server() as server:
            yield server
    except ServerUnavailable as error:
        if IN_CI:
            pytest.fail(f"IMAP test server unavailable: {error}", pytrace=False)
        pytest.skip(f"IMAP test server unavailable: {error}")


@pytest.fixture
def make_config(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    dovecot: ImapServer,
    monkeypatch: pytest.MonkeyPatch,
) -> MakeConfig:
    """Write ``config.toml`` whose units' mailboxes live on the ``dovecot`` server.

    ``make_config(units={"cdc": ["cdc@example.org"], "soyte": ["soyte@example.org"]})`` creates
    each mailbox user with a random password passed through an ``env:`` secret (so subprocesses
    see it too); the first unit is ``lead``, the others ``member``. Keyword options set every
    mailbox's ``folder``, ``idle`` and ``poll_every``. Returns the file's path. The database is
    the test's ``database_url`` when the test uses that fixture (so it runs on SQLite and on
    PostgreSQL), else the SQLite file ``mailtracker.db`` beside the config.
    """
    monkeypatch.setenv("MT_TEST_SECRET", secrets.token_hex(16))
    database = (
        request.getfixturevalue("database_url")
        if "database_url" in request.fixturenames
        else "sqlite:///mailtracker.db"
    )

    def make(
        units: Mapping[str, Sequence[str]] | None = None,
        *,
        folder: str = "INBOX",
        idle: bool = True,
        poll_every: str = "60s",
        name: str = "config.toml",
    ) -> Path:
        units = units if units is not None else {"cdc": ["cdc@example.org"]}
        lines = [
            "[tracker]",
            f'database = "{database}"',
            'timezone = "Asia/Ho_Chi_Minh"',
            'case_prefix = "QN"',
            'secret_key = "env:MT_TEST_SECRET"',
            "",
        ]
        for position, (unit_id, usernames) in enumerate(units.items()):
            lines += [
                "[[units]]",
                f'id = "{unit_id}"',
                f'name = "Unit {unit_id}"',
                f'role = "{"lead" if position == 0 else "member"}"',
                f'staff = ["staff-{unit_id}@example.org"]',
                f'digest_to = ["staff-{unit_id}@example.org"]',
                "",
            ]
            for number, username in enumerate(usernames):
                variable = f"MT_TEST_IMAP_{unit_id.upper()}_{number}".replace("-", "_")
                password = secrets.token_hex(8)
                if username not in dovecot.passwords:
                    try:
                        dovecot.add_user(username, password)
                    except ServerUnavailable as error:
                        pytest.skip(str(error))
                monkeypatch.setenv(variable, dovecot.passwords[username])
                lines += [
                    "  [[units.mailboxes]]",
                    f'  host = "{dovecot.host}"',
                    f"  port = {dovecot.port}",
                    '  security = "none"',
                    f'  username = "{username}"',
                    f'  password = "env:{variable}"',
                    f'  folder = "{folder}"',
                    f"  idle = {'true' if idle else 'false'}",
                    f'  poll_every = "{poll_every}"',
                    "",
                ]
        path = tmp_path / name
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    return make


# --- SMTP: a real in-process aiosmtpd server (tests/smtp_capture.py) -------------------------

from smtp_capture import SmtpCapture  # noqa: E402


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """A running aiosmtpd server on a free 127.0.0.1 port that keeps every message it accepts;
    ``stop()``/``start()`` simulate an outage on the same port."""
    server = SmtpCapture()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- Databases: every store-backed test runs on SQLite and on PostgreSQL --------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session, started by the first test that
    needs it; or the server named by ``$MAILTRACKER_TEST_DATABASE_URL`` (whose role may
    create databases). Missing PostgreSQL fails those tests (never skips them): the suite's
    promise is that it runs on both databases."""
    external = os.environ.get(POSTGRES_URL_ENV)
    if external:
        yield PostgresServer(external)
        return
    try:
        with PostgresCluster.running() as cluster:
            yield cluster
    except ServerUnavailable as error:
        pytest.fail(f"PostgreSQL test cluster unavailable: {error}", pytrace=False)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: a new SQLite file under ``tmp_path``, or a new
    database on the session's PostgreSQL cluster (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracker.db'}"
        return
    cluster: PostgresServer = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """``database_url`` opened with its schema created, disposed after the test."""
    db = open_database(database_url)
    yield db
    db.dispose()


# --- Daemons: ``mailtracker run`` subprocesses (tests/daemon_support.py) ---------------------

from daemon_support import RunningDaemon  # noqa: E402


@pytest.fixture
def daemons() -> Iterator[list[RunningDaemon]]:
    """Daemons a test started (it appends them); any still running at the end is killed."""
    started: list[RunningDaemon] = []
    yield started
    for daemon in started:
        daemon.kill()
