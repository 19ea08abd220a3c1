"""The IMAP poller against a real server: positions, batches, flags, logins, TLS, errors."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from mailgen import notification, person_name, phone
from servers import IN_CI, DovecotServer, ImapServer, MakeConfig, ServerUnavailable
from sqlalchemy import func, select

from mailtracker.config import (
    Config,
    ConfigError,
    MailboxSettings,
    Secret,
    config_from_dict,
    load_config,
)
from mailtracker.mail.imap import (
    MailboxPoller,
    backoff_delay,
    connect,
    describe_error,
    poll_all_once,
    select_readonly,
)
from mailtracker.parsing.message import ParsedMessage
from mailtracker.parsing.pool import ParsePool
from mailtracker.services import ingest
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import open_database
from mailtracker.store.models import Case, MailboxState, Message

pytestmark = pytest.mark.timeout(120)

CDC = "cdc@example.org"


class RecordingIngestor(Ingestor):
    """The real ingestor, remembering the size of every batch it was given."""

    batches: list[int]

    def store_batch(
        self,
        mailbox: MailboxSettings,
        uidvalidity: int,
        messages: Sequence[tuple[int, bytes]],
        **kwargs: object,
    ) -> int:
        self.batches.append(len(messages))
        return super().store_batch(mailbox, uidvalidity, messages, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def setup(make_config: MakeConfig) -> Iterator[tuple[Config, RecordingIngestor]]:
    config = load_config(make_config({"cdc": [CDC]}))
    database = open_database(config.tracker.database)
    ingestor = RecordingIngestor(database, config)
    ingestor.batches = []
    yield config, ingestor
    database.dispose()


def stored_count(ingestor: Ingestor) -> int:
    with ingestor.db.session(read_only=True) as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def mailbox_state(ingestor: Ingestor, name: str) -> MailboxState | None:
    with ingestor.db.session(read_only=True) as session:
        return session.get(MailboxState, name)


# -- pure helpers ---------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for failures in range(1, 30):
        ceiling = min(300.0, 2.0 ** (failures - 1))
        samples = [backoff_delay(failures, rng=rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in samples)
        assert max(samples) > 0.8 * ceiling  # spread over the whole range...
        assert min(samples) < 0.2 * ceiling  # ...from near zero (full jitter)


def test_error_descriptions_never_carry_arbitrary_text() -> None:
    personal = f"{person_name(1)} {phone(1)}"
    assert personal not in describe_error(ValueError(personal))
    assert personal not in describe_error(RuntimeError(personal))
    assert describe_error(ConnectionResetError(104, "Connection reset by peer")) == (
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    )
    assert len(describe_error(OSError("x" * 5000))) <= 300


# -- polling --------------------------------------------------------------------------------


def test_poll_stores_each_message_once_and_newest_uid_is_not_refetched(
    dovecot: ImapServer, setup: tuple[Config, RecordingIngestor]
) -> None:
    config, ingestor = setup
    settings = config.mailboxes[0]
    for number in range(3):
        dovecot.append(CDC, notification(number))
    poller = MailboxPoller(settings, ingestor)
    assert poller.poll_once() == 3
    uidvalidity, last_uid = ingestor.position(settings.name)
    newest = dovecot.uids(CDC)[-1]
    assert uidvalidity is not None and last_uid == newest
    # The server answers "UID last+1:*" with the newest message: the poller must drop it.
    with dovecot.client(CDC) as client:
        client.select_folder("INBOX", readonly=True)
        assert client.search(["UID", f"{last_uid + 1}:*"]) == [newest]
    assert poller.poll_once() == 0
    assert ingestor.batches == [3]
    dovecot.append(CDC, notification(3))
    assert poller.poll_once() == 1
    assert ingestor.batches == [3, 1]
    assert stored_count(ingestor) == 4
    state = mailbox_state(ingestor, settings.name)
    assert state is not None and state.last_success_at is not None and state.last_error is None


def test_poll_fetches_in_batches_and_leaves_flags_and_mail_alone(
    dovecot: ImapServer, setup: tuple[Config, RecordingIngestor]
) -> None:
    config, ingestor = setup
    dovecot.deliver_maildir(CDC, [notification(number) for number in range(20)])
    poller = MailboxPoller(config.mailboxes[0], ingestor, batch_size=7)
    assert poller.poll_once() == 20
    assert ingestor.batches == [7, 7, 6]
    with dovecot.client(CDC) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        assert len(uids) == 20
        flags = client.get_flags(uids)
        assert all(b"\\Seen" not in flags[uid] for uid in uids)


def test_a_large_poll_is_parsed_by_the_workers_while_it_is_still_fetched(
    dovecot: ImapServer, setup: tuple[Config, RecordingIngestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``PARSE_AHEAD_MIN`` new messages on, each stored batch goes to the parsing workers
    at once (up to ``PARSE_AHEAD_MAX`` waiting); processing hands them the rest. Every message
    is parsed once, in a worker."""
    config, recording = setup
    monkeypatch.setattr(ingest, "PARSE_AHEAD_MIN", 10)
    monkeypatch.setattr(ingest, "PARSE_AHEAD_MAX", 12)
    one_worker = dataclasses.replace(config.tracker, parse_workers=1)
    ingestor = RecordingIngestor(recording.db, dataclasses.replace(config, tracker=one_worker))
    ingestor.batches = []
    handed: list[tuple[int, int]] = []  # (batches stored so far, messages handed to the workers)
    submit = ParsePool.submit

    def recorded_submit(pool: ParsePool, messages: Sequence[tuple[int, bytes]]) -> None:
        handed.append((len(ingestor.batches), len(messages)))
        submit(pool, messages)

    def parsed_here(raw: bytes) -> ParsedMessage:
        raise AssertionError("parsed in the main process")

    monkeypatch.setattr(ParsePool, "submit", recorded_submit)
    ingestor.parse = parsed_here
    dovecot.deliver_maildir(CDC, [notification(number) for number in range(20)])
    assert MailboxPoller(config.mailboxes[0], ingestor, batch_size=7).poll_once() == 20
    assert ingestor.batches == [7, 7, 6]
    assert handed == [(1, 7), (2, 5), (3, 8)]
    with ingestor.db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).where(Message.error.is_not(None))) == 0
        assert session.scalar(select(func.count()).where(Message.processed_at.is_(None))) == 0
        assert session.scalar(select(func.count()).select_from(Case)) == 20


def test_a_wrong_password_is_an_error_recorded_without_the_secret(
    dovecot: ImapServer,
    setup: tuple[Config, RecordingIngestor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, ingestor = setup
    settings = config.mailboxes[0]
    monkeypatch.setenv("MT_TEST_IMAP_CDC_0", "wrong-password-123")
    with pytest.raises(LoginError):
        MailboxPoller(settings, ingestor).poll_once()
    state = mailbox_state(ingestor, settings.name)
    assert state is not None and state.last_error and "LoginError" in state.last_error
    assert "wrong-password-123" not in state.last_error
    assert state.last_success_at is None


def test_a_missing_secret_is_a_configuration_error(
    dovecot: ImapServer,
    setup: tuple[Config, RecordingIngestor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, ingestor = setup
    monkeypatch.delenv("MT_TEST_IMAP_CDC_0")
    with pytest.raises(ConfigError, match="MT_TEST_IMAP_CDC_0"):
        MailboxPoller(config.mailboxes[0], ingestor).poll_once()


def test_one_failing_mailbox_does_not_stop_the_others(
    dovecot: ImapServer, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        make_config({"cdc": [CDC], "soyte": ["soyte@example.org", "other@example.org"]})
    )
    monkeypatch.setenv("MT_TEST_IMAP_SOYTE_0", "wrong")
    dovecot.append(CDC, notification(1))
    dovecot.append("other@example.org", notification(2))
    database = open_database(config.tracker.database)
    try:
        ingestor = Ingestor(database, config)
        results = poll_all_once(config, ingestor)
        names = [mailbox.name for mailbox in config.mailboxes]
        assert list(results) == names
        assert results[names[0]] is None and results[names[2]] is None
        assert results[names[1]] is not None and "LoginError" in results[names[1]]
        assert stored_count(ingestor) == 2
    finally:
        database.dispose()


def test_xoauth2_login_uses_the_token_mechanism(
    dovecot: ImapServer, setup: tuple[Config, RecordingIngestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup
    monkeypatch.setenv("MT_TEST_TOKEN", "ya29.token")
    settings = dataclasses.replace(
        config.mailboxes[0],
        auth="xoauth2",
        password=None,
        oauth2_token=Secret("units[0].mailboxes[0].oauth2_token", "env:MT_TEST_TOKEN"),
    )
    # This server offers no XOAUTH2: the refusal names the mechanism, proving it was asked for.
    with pytest.raises(LoginError, match=r"(?i)mechanism"):
        connect(settings, timeout=10)


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def dovecot_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DovecotServer]:
    try:
        with DovecotServer.running_in(tls=True) as server:
            assert server.ca_file is not None
            monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
            server.add_user(CDC, "secret-pw")
            yield server
    except ServerUnavailable as error:
        if IN_CI:
            pytest.fail(f"Dovecot unavailable: {error}", pytrace=False)
        pytest.skip(f"Dovecot unavailable: {error}")


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_modes_verify_the_certificate_and_log_in(
    dovecot_tls: DovecotServer, monkeypatch: pytest.MonkeyPatch, security: str
) -> None:
    monkeypatch.setenv("MT_TEST_PW", "secret-pw")
    port = dovecot_tls.ssl_port if security == "ssl" else dovecot_tls.port
    config = config_from_dict(
        {
            "units": [
                {
                    "id": "cdc",
                    "name": "CDC",
                    "role": "lead",
                    "mailboxes": [
                        {
                            "host": "127.0.0.1",
                            "port": port,
                            "security": security,
                            "username": CDC,
                            "password": "env:MT_TEST_PW",
                        }
                    ],
                }
            ]
        }
    )
    dovecot_tls.append(CDC, notification(1))
    client: IMAPClient = connect(config.mailboxes[0], timeout=10)
    try:
        assert select_readonly(client, "INBOX") > 0
        assert len(client.search("ALL")) == 1
    finally:
        client.logout()
    # Without the test CA the same certificate is refused.
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(OSError, match=r"(?i)certificate"):
        connect(config.mailboxes[0], timeout=10)


def test_polling_logs_counts_and_uids_but_no_personal_data(
    dovecot: ImapServer,
    setup: tuple[Config, RecordingIngestor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, ingestor = setup
    for number in range(4):
        dovecot.append(CDC, notification(number))
    with caplog.at_level(logging.INFO):
        MailboxPoller(config.mailboxes[0], ingestor).poll_once()
    text = caplog.text
    uids = dovecot.uids(CDC)
    assert f"4 new of 4 UID(s) {uids[0]}-{uids[-1]}" in text
    for number in range(4):
        assert person_name(number) not in text
        assert phone(number) not in text
