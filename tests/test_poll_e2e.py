"""End to end against a real Dovecot: ``poll --once`` and the poller's run loop, through crashes,
UIDVALIDITY changes, broken mail, IDLE and server outages."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailgen import notification, report_id
from servers import ImapServer, MakeConfig
from sqlalchemy import func, select

from mailtracker.config import Config, load_config
from mailtracker.domain.text import fold
from mailtracker.mail.imap import MailboxPoller
from mailtracker.parsing.message import ParsedMessage, parse_message
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseSource, MailboxState, Message

# database_url: every test runs on SQLite and on PostgreSQL (make_config uses it).
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("database_url"),
]

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "notifications"
CDC = "cdc@example.org"
SOYTE = "soyte@example.org"
ROOT = Path(__file__).resolve().parents[1]


def mailtracker(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def poll_once(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = mailtracker(config, "poll", "--once", *extra)
    assert result.returncode == 0, result.stderr
    return result


def cases_json(config: Path, *extra: str) -> list[dict[str, Any]]:
    result = mailtracker(config, "cases", "--json", *extra)
    assert result.returncode == 0, result.stderr
    cases: list[dict[str, Any]] = json.loads(result.stdout)
    return cases


@pytest.fixture
def database(make_config: MakeConfig) -> Iterator[Callable[[Path], Database]]:
    opened: list[Database] = []

    def open_for(config_path: Path) -> Database:
        db = open_database(load_config(config_path).tracker.database)
        opened.append(db)
        return db

    yield open_for
    for db in opened:
        db.dispose()


def count(db: Database, model: type[Any]) -> int:
    with db.session(read_only=True) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# -- the corpus -----------------------------------------------------------------------------


def expected_people() -> list[list[dict[str, Any]]]:
    """The corpus reports grouped by person (same report id, or same phone and folded name)."""
    reports = [
        report
        for path in sorted(CORPUS.glob("*.json"))
        for report in json.loads(path.read_text(encoding="utf-8"))["reports"]
    ]
    groups: list[list[dict[str, Any]]] = []
    for report in reports:
        joined = [g for g in groups if _keys(report) & {k for r in g for k in _keys(r)}]
        merged = [report] + [r for g in joined for r in g]
        groups = [g for g in groups if g not in joined] + [merged]
    return groups


def _keys(report: dict[str, Any]) -> set[tuple[str, str]]:
    keys = {("id", report["report_id"])} if report["report_id"] else set()
    if report["phone"] and report["full_name"]:
        keys.add(("person", f"{report['phone']} {fold(report['full_name'])}"))
    return keys


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"sample corpus not found at {CORPUS}")
def test_the_whole_corpus_gives_the_expected_cases_once(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    config = make_config({"cdc": [CDC]})
    samples = sorted(CORPUS.glob("*.eml"))
    for sample in samples:
        dovecot.append(CDC, sample.read_bytes())
    started = time.monotonic()
    result = poll_once(config)
    assert f"{load_config(config).mailboxes[0].name}: ok" in result.stdout
    cases = cases_json(config)
    people = expected_people()
    assert len(cases) == len(people)
    for group in people:
        keys = {k for report in group for k in _keys(report)}
        matching = [case for case in cases if _keys(case["report"]) & keys]
        assert len(matching) == 1, group
        if len(group) == 1:
            assert matching[0]["report"] == group[0]
        assert matching[0]["units"] == ["cdc"]
        assert matching[0]["status"] == "new"
    db = database(config)
    assert count(db, Message) == len(samples)
    with db.session(read_only=True) as session:
        kinds = dict(session.execute(select(Message.message_id, Message.kind)).all())
        assert all(message.processed_at is not None for message in session.scalars(select(Message)))
    expected_kinds = {
        json.loads(sample.with_suffix(".json").read_text(encoding="utf-8"))["kind"]
        for sample in samples
    }
    assert set(kinds.values()) == expected_kinds
    # Polling again adds nothing.
    poll_once(config)
    assert cases_json(config) == cases
    assert count(db, Message) == len(samples)
    assert time.monotonic() - started < 60


# -- several units ------------------------------------------------------------------------


def test_the_same_report_in_two_units_mailboxes_is_one_case_both_see(
    dovecot: ImapServer, make_config: MakeConfig
) -> None:
    config = make_config({"cdc": [CDC], "soyte": [SOYTE]})
    dovecot.append(CDC, notification(1, to=CDC))
    dovecot.append(SOYTE, notification(1, to=SOYTE))
    dovecot.append(SOYTE, notification(2, to=SOYTE))
    poll_once(config)
    cases = cases_json(config)
    assert sorted(case["report"]["report_id"] for case in cases) == [report_id(1), report_id(2)]
    shared = next(case for case in cases if case["report"]["report_id"] == report_id(1))
    assert shared["owner_unit"] == "cdc"
    assert sorted(shared["units"]) == ["cdc", "soyte"]
    assert len(shared["sources"]) == 2
    assert [case["report"]["report_id"] for case in cases_json(config, "--unit", "cdc")] == [
        report_id(1)
    ]
    assert len(cases_json(config, "--unit", "soyte")) == 2


# -- crashes --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_poll_loses_and_duplicates_nothing(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    total = 2000
    config = make_config({"cdc": [CDC]})
    dovecot.deliver_maildir(CDC, (notification(number) for number in range(total)))
    db = database(config)  # creates the schema before the first poll starts
    rng = random.Random(int(os.environ.get("MT_TEST_SEED", "3")))
    stored_after_kill: list[int] = []
    command = [sys.executable, "-m", "mailtracker", "--config", str(config)]
    for _round in range(4):
        before = count(db, Message)
        process = subprocess.Popen(
            [*command, "poll", "--once", "--batch-size", "50"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill at a random point once this round has stored something (mid-batch, mid-run).
        assert wait_for(
            lambda b=before, p=process: count(db, Message) > b or p.poll() is not None, 60
        )
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stored_after_kill.append(count(db, Message))
    assert any(0 < stored < total for stored in stored_after_kill), stored_after_kill
    poll_once(config, "--batch-size", "50")
    with db.session(read_only=True) as session:
        uids = list(session.scalars(select(Message.uid)))
        message_ids = list(session.scalars(select(Message.message_id)))
        unprocessed = session.scalar(
            select(func.count()).select_from(Message).where(Message.processed_at.is_(None))
        )
        sources = session.scalar(select(func.count()).select_from(CaseSource))
        state = session.get(MailboxState, load_config(config).mailboxes[0].name)
    assert sorted(uids) == dovecot.uids(CDC) and len(uids) == total
    assert len(set(message_ids)) == total
    assert unprocessed == 0
    assert count(db, Case) == total
    assert sources == total
    assert state is not None and state.last_uid == max(uids)


# -- UIDVALIDITY ----------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["INBOX", "Reports"])
def test_a_changed_uidvalidity_duplicates_nothing(
    dovecot: ImapServer,
    make_config: MakeConfig,
    database: Callable[[Path], Database],
    folder: str,
) -> None:
    if folder == "INBOX" and dovecot.name != "dovecot":
        pytest.skip("only Dovecot lets the tests recreate the INBOX")
    config = make_config({"cdc": [CDC]}, folder=folder)
    for number in range(5):
        dovecot.append(CDC, notification(number), folder=folder)
    poll_once(config)
    db = database(config)
    name = load_config(config).mailboxes[0].name
    with db.session(read_only=True) as session:
        first = session.get(MailboxState, name)
        assert first is not None and first.last_uid == dovecot.uids(CDC, folder)[-1]
        old_validity = first.uidvalidity
    dovecot.recreate_folder(CDC, folder)
    for number in (5, 0, 2, 4, 1, 3):  # one new message first, the others in a new order
        dovecot.append(CDC, notification(number), folder=folder)
    poll_once(config)
    with db.session(read_only=True) as session:
        state = session.get(MailboxState, name)
        assert state is not None and state.uidvalidity != old_validity
        assert state.last_uid == dovecot.uids(CDC, folder)[-1]
    assert count(db, Message) == 6
    assert sorted(case["report"]["report_id"] for case in cases_json(config)) == [
        report_id(number) for number in range(6)
    ]
    poll_once(config)
    assert count(db, Message) == 6


# -- bad mail -------------------------------------------------------------------------------


BROKEN = [
    b"\x00\xff\xfe garbage that is not an e-mail at all \x81\x82\r\n" * 20,
    (
        b"From: a@example.org\r\nSubject: =?utf-8?B?broken\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!! not base64 ####\r\n--zz\r\nContent-Type: application/vnd.openxmlformats-"
        b"officedocument.spreadsheetml.sheet\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"UEsDBBQAAAAIAAAAAAAAAAAAAAAA\r\n"
    ),
]


def test_mail_that_cannot_be_understood_is_quarantined_and_the_poll_carries_on(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    config = make_config({"cdc": [CDC]})
    dovecot.append(CDC, notification(1))
    for raw in BROKEN:
        dovecot.append(CDC, raw)
    dovecot.append(CDC, notification(2))
    poll_once(config)
    db = database(config)
    with db.session(read_only=True) as session:
        messages = list(session.scalars(select(Message).order_by(Message.uid)))
    assert [message.uid for message in messages] == dovecot.uids(CDC)
    assert [message.quarantined for message in messages] == [False, True, True, False]
    assert all(message.raw is not None and message.error for message in messages[1:3])
    assert [case["report"]["report_id"] for case in cases_json(config)] == [
        report_id(1),
        report_id(2),
    ]


def test_a_parser_crash_quarantines_that_message_only(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    config_path = make_config({"cdc": [CDC]})
    config = load_config(config_path)
    db = database(config_path)
    ingestor = Ingestor(db, config)
    real_parse = ingestor.parse

    def parse_crashing_on_marker(raw: bytes) -> ParsedMessage:
        if b"<crash-the-parser@" in raw:
            raise RecursionError("parser blew up")
        return real_parse(raw)

    ingestor.parse = parse_crashing_on_marker
    dovecot.append(CDC, notification(1))
    dovecot.append(CDC, notification(2, message_id="<crash-the-parser@example.org>"))
    dovecot.append(CDC, notification(3))
    assert MailboxPoller(config.mailboxes[0], ingestor).poll_once() == 3
    with db.session(read_only=True) as session:
        messages = list(session.scalars(select(Message).order_by(Message.uid)))
        reports = sorted(session.scalars(select(Case.report_id)))
    assert [message.quarantined for message in messages] == [False, True, False]
    assert messages[1].error and "RecursionError" in messages[1].error
    assert reports == [report_id(1), report_id(3)]
    assert parse_message(messages[1].raw or b"").reports  # kept intact for a later reparse


# -- the run loop ---------------------------------------------------------------------------


class Running:
    """A poller's run loop in a thread, stopped (and checked to stop) at the end."""

    def __init__(self, poller: MailboxPoller) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(poller,), daemon=True)

    def _run(self, poller: MailboxPoller) -> None:
        try:
            poller.run(self.stop)
        except BaseException as error:
            self.errors.append(error)
            raise

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the poller did not honour stop"
        assert self.errors == []


def poller_for(
    config_path: Path, db: Database, **options: Any
) -> tuple[Config, Ingestor, MailboxPoller]:
    config = load_config(config_path)
    ingestor = Ingestor(db, config)
    return config, ingestor, MailboxPoller(config.mailboxes[0], ingestor, **options)


def test_with_idle_a_new_message_becomes_a_case_within_two_seconds(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    config_path = make_config({"cdc": [CDC]}, idle=True, poll_every="1h")
    db = database(config_path)
    _, _, poller = poller_for(config_path, db)
    dovecot.append(CDC, notification(1))
    with Running(poller) as running:
        assert wait_for(lambda: count(db, Case) == 1, 10)
        for number in (2, 3):
            time.sleep(0.3)  # the loop is in IDLE by now
            dovecot.append(CDC, notification(number))
            appended = time.monotonic()
            assert wait_for(lambda n=number: count(db, Case) == n, 2.0)
            assert time.monotonic() - appended < 2.0
        stop_asked = time.monotonic()
        running.stop.set()
        running.thread.join(timeout=5)
        assert time.monotonic() - stop_asked < 2.0


def test_without_idle_the_loop_sweeps_every_poll_every(
    dovecot: ImapServer, make_config: MakeConfig, database: Callable[[Path], Database]
) -> None:
    config_path = make_config({"cdc": [CDC]}, idle=False, poll_every="1s")
    db = database(config_path)
    _, _, poller = poller_for(config_path, db)
    with Running(poller):
        time.sleep(0.5)
        dovecot.append(CDC, notification(1))
        assert wait_for(lambda: count(db, Case) == 1, 3.0)


@pytest.mark.slow
def test_the_server_going_away_mid_poll_is_retried_with_backoff_and_recovers(
    dovecot: ImapServer,
    make_config: MakeConfig,
    database: Callable[[Path], Database],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if dovecot.name != "dovecot":
        pytest.skip("pymap keeps its mail in memory: a restart empties it")
    total = 1500
    config_path = make_config({"cdc": [CDC]}, idle=True, poll_every="1h")
    dovecot.deliver_maildir(CDC, (notification(number) for number in range(total)))
    db = database(config_path)
    config, _, poller = poller_for(config_path, db, batch_size=20, backoff_cap=0.5, timeout=5)
    caplog.set_level(logging.INFO, logger="mailtracker.mail.imap")
    with Running(poller) as running:
        assert wait_for(lambda: count(db, Message) > 0, 30)
        dovecot.stop()
        at_outage = count(db, Message)
        assert 0 < at_outage < total
        assert wait_for(lambda: "reconnecting in" in caplog.text, 10)
        time.sleep(1.5)  # a few failed reconnections
        assert running.thread.is_alive()
        with db.session(read_only=True) as session:
            state = session.get(MailboxState, config.mailboxes[0].name)
            assert state is not None and state.last_error and state.last_error_at
        dovecot.start()
        assert wait_for(lambda: count(db, Case) == total, 60)
        time.sleep(0.3)
        dovecot.append(CDC, notification(total))
        assert wait_for(lambda: count(db, Case) == total + 1, 5)
    failures = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert len(failures) >= 2 and all(r.levelno == logging.ERROR for r in failures)
    with db.session(read_only=True) as session:
        uids = list(session.scalars(select(Message.uid)))
    assert sorted(uids) == dovecot.uids(CDC) and len(uids) == total + 1


def test_poll_once_fails_clearly_when_the_server_is_down(
    dovecot: ImapServer, make_config: MakeConfig
) -> None:
    config = make_config({"cdc": [CDC], "soyte": [SOYTE]})
    dovecot.stop()
    result = mailtracker(config, "poll", "--once")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(lines) == 2
    assert all("ConnectionRefusedError" in line for line in lines)
    assert "cdc:cdc@example.org" in lines[0] and "soyte:soyte@example.org" in lines[1]
