"""Shared fixtures: a real IMAP server (Dovecot) and configurations pointing at it."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from servers import IN_CI, ImapServer, MakeConfig, ServerUnavailable, imap_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real servers, bulk)")


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
def make_config(tmp_path: Path, dovecot: ImapServer, monkeypatch: pytest.MonkeyPatch) -> MakeConfig:
    """Write ``config.toml`` whose units' mailboxes live on the ``dovecot`` server.

    ``make_config(units={"cdc": ["cdc@example.org"], "soyte": ["soyte@example.org"]})`` creates
    each mailbox user with a random password passed through an ``env:`` secret (so subprocesses
    see it too); the first unit is ``lead``, the others ``member``. Keyword options set every
    mailbox's ``folder``, ``idle`` and ``poll_every``. Returns the file's path; the SQLite
    database is ``mailtracker.db`` beside it.
    """
    monkeypatch.setenv("MT_TEST_SECRET", secrets.token_hex(16))

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
            'database = "sqlite:///mailtracker.db"',
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
