"""Mail that arrives while the poller is busy with a pass, before it enters IDLE again: an IDLE
started after it does not announce it (Dovecot), so the poller must notice it otherwise rather
than leave it for the next sweep (found by ``python -m bench``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mailgen import notification
from servers import ImapServer, MakeConfig
from sqlalchemy import func, select

from mailtracker.config import load_config
from mailtracker.mail.imap import MailboxPoller
from mailtracker.services.ingest import Ingestor, ProcessResult
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CDC = "cdc@example.org"


@pytest.fixture
def db(make_config: MakeConfig) -> Iterator[Database]:
    database = open_database(load_config(make_config({"cdc": [CDC]})).tracker.database)
    yield database
    database.dispose()


def cases(db: Database) -> int:
    with db.session(read_only=True) as session:
        return session.scalar(select(func.count()).select_from(Case)) or 0


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_mail_arriving_during_a_pass_is_not_left_for_the_sweep(
    dovecot: ImapServer, make_config: MakeConfig, db: Database
) -> None:
    config = load_config(make_config({"cdc": [CDC]}, idle=True, poll_every="1h"))

    class MailDuringThePass(Ingestor):
        """Delivers a second message while the first pass processes the first one."""

        def process_pending(self, **kwargs: Any) -> ProcessResult:
            result = super().process_pending(**kwargs)
            if result.created == ["QN-0001"]:
                dovecot.append(CDC, notification(2))
            return result

    poller = MailboxPoller(config.mailboxes[0], MailDuringThePass(db, config))
    dovecot.append(CDC, notification(1))
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: cases(db) >= 1, 10)
        assert wait_for(lambda: cases(db) == 2, 5), "the second message waits for the sweep"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
