"""Several instances on one database: the mailbox lease, and ``mailtracker run`` processes
sharing PostgreSQL and the same mailboxes.

- the lease itself (on SQLite and PostgreSQL): one owner at a time, expiry, release, a race
  of many instances for one free lease, and the lease of a dead process of this machine taken
  over at once;
- three daemons on the same PostgreSQL database and the same two mailboxes: each mailbox polled
  by one of them, every message stored once, every digest, alert and acknowledgement sent once;
- ``kill -9`` of the instance polling a mailbox: another takes it over, without waiting for the
  lease to expire since the dead process ran on this machine (an instance of another machine
  waits for the expiry: see the lease tests); a clean stop hands it over at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from daemon_support import RunningDaemon, midday_zone, write_run_config
from mailgen import notification as old_notification
from reply_support import DOC, EPI, TRACKER, read, reply, text_of
from servers import ImapServer, MakeConfig, PostgresServer
from smtp_capture import SmtpCapture
from sqlalchemy import func, select

from mailtracker.config import ConfigError, config_from_dict, load_config
from mailtracker.mail.imap import MailboxPoller, poll_all_once
from mailtracker.mail.lease import (
    LeaseLost,
    MailboxLease,
    instance_id,
    lease_factory,
    machine_id,
)
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseEvent, DigestSent, MailboxState, Message

T0 = dt.datetime(2020, 2, 12, 1, 0, tzinfo=dt.UTC)
CDC_INBOX = "cdc-inbox@example.org"
MED_INBOX = "med-inbox@example.org"


# -- the lease ------------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = open_database(database_url)
    yield db
    db.dispose()


def test_one_owner_at_a_time_until_release(database: Database) -> None:
    clock = Clock(T0)
    first = MailboxLease(database, "cdc:box", "first", clock=clock)
    second = MailboxLease(database, "cdc:box", "second", clock=clock)
    assert first.acquire()
    assert not second.acquire()
    assert first.acquire()  # renewing
    assert first.holder() == ("first", T0 + dt.timedelta(seconds=60))
    clock.now += dt.timedelta(seconds=59)
    assert not second.acquire()
    with pytest.raises(LeaseLost):
        second.keep()
    first.release()
    assert first.holder() == (None, None)
    assert second.acquire()
    assert not first.acquire()
    first.release()  # not the holder: changes nothing
    assert second.holder()[0] == "second"


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it(database: Database) -> None:
    clock = Clock(T0)
    duration = dt.timedelta(seconds=10)
    old = MailboxLease(database, "cdc:box", "old", duration=duration, clock=clock)
    new = MailboxLease(database, "cdc:box", "new", duration=duration, clock=clock)
    assert old.acquire()
    clock.now += duration
    assert new.acquire()
    assert not old.acquire()
    assert not old.held
    with pytest.raises(LeaseLost):
        old.keep()
    # The new holder keeps it without touching the database until a renewal is due.
    new.keep()
    assert new.holder() == ("new", T0 + 2 * duration)


def test_the_lease_row_keeps_the_polling_position(database: Database) -> None:
    with database.session() as session:
        session.add(MailboxState(mailbox="cdc:box", uidvalidity=7, last_uid=42))
    lease = MailboxLease(database, "cdc:box", "me", clock=Clock(T0))
    assert lease.acquire()
    lease.release()
    with database.session(read_only=True) as session:
        state = session.get_one(MailboxState, "cdc:box")
        assert (state.uidvalidity, state.last_uid, state.lease_owner) == (7, 42, None)


def test_many_instances_racing_for_one_lease_get_one_holder(
    database: Database, database_url: str
) -> None:
    """Each instance has an engine of its own, as separate processes would."""
    instances, rounds = 6, 8
    databases = [open_database(database_url, upgrade=False) for _ in range(instances)]
    clock = Clock(T0)
    winners: list[list[str]] = [[] for _ in range(rounds)]
    barrier = threading.Barrier(instances)
    errors: list[BaseException] = []

    def contend(number: int) -> None:
        lease = MailboxLease(databases[number], "cdc:box", f"instance-{number}", clock=clock)
        try:
            for race in range(rounds):
                barrier.wait(timeout=30)
                if lease.acquire():
                    winners[race].append(lease.owner)
                barrier.wait(timeout=30)
                if number == 0:
                    clock.now += dt.timedelta(minutes=5)  # every lease has expired
                barrier.wait(timeout=30)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(instances)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for db in databases:
        db.dispose()
    assert not errors, errors
    assert [len(race) for race in winners] == [1] * rounds, winners


@contextlib.contextmanager
def polling(poller: MailboxPoller) -> Iterator[threading.Event]:
    """``poller.run`` in a thread until the block ends or the event it gives is set."""
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the poller did not honour stop"


def test_a_poller_polls_only_while_it_holds_the_lease(
    dovecot: ImapServer, make_config: MakeConfig, database: Database
) -> None:
    """Two pollers of one mailbox (without IDLE, sweeping less often than the lease lasts):
    the second waits while the first renews its lease between sweeps, and takes over as soon
    as the first stops."""
    user = "cdc@example.org"
    config = load_config(make_config({"cdc": [user]}, idle=False, poll_every="5s"))
    settings = config.mailboxes[0]
    ingestor = Ingestor(database, config)
    duration = dt.timedelta(seconds=3)

    def poller(owner: str) -> MailboxPoller:
        lease = MailboxLease(database, settings.name, owner, duration=duration)
        return MailboxPoller(settings, ingestor, lease=lease)

    first, second = poller("first"), poller("second")
    assert first.lease is not None and second.lease is not None
    dovecot.append(user, old_notification(1, to=user))
    with polling(first) as stop_first:
        wait_for(lambda: all_processed(database, 1), 15, "the first message")
        with polling(second):
            time.sleep(2 * duration.total_seconds())  # longer than the lease: it was renewed
            assert first.lease.held and not second.lease.held
            assert first.lease.holder()[0] == "first"
            dovecot.append(user, old_notification(2, to=user))
            wait_for(lambda: all_processed(database, 2), 15, "the second message")
            stop_first.set()
            wait_for(lambda: first.lease.holder()[0] != "first", 10, "the first to release")
            dovecot.append(user, old_notification(3, to=user))
            took = wait_for(lambda: all_processed(database, 3), 15, "the takeover")
            # Within a renewal period and a sweep; slack for a busy machine.
            assert took < duration.total_seconds() + 5
            assert second.lease.held and second.lease.holder()[0] == "second"
    assert first.lease.holder()[0] is None  # released by the second when it stopped
    with database.session(read_only=True) as session:
        uids = session.scalars(select(Message.uid).order_by(Message.uid)).all()
    assert list(uids) == dovecot.uids(user)


def test_a_poller_whose_lease_is_taken_stops_touching_the_mailbox(
    dovecot: ImapServer,
    make_config: MakeConfig,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As when this instance stalled past its lease and another one took the mailbox."""
    caplog.set_level(logging.INFO, logger="mailtracker.mail.imap")
    user = "cdc@example.org"
    config = load_config(make_config({"cdc": [user]}, idle=True, poll_every="1h"))
    settings = config.mailboxes[0]
    duration = dt.timedelta(seconds=3)
    lease = MailboxLease(database, settings.name, instance_id(), duration=duration)
    dovecot.append(user, old_notification(1, to=user))
    with polling(MailboxPoller(settings, Ingestor(database, config), lease=lease)):
        wait_for(lambda: all_processed(database, 1), 15, "the first message")
        with database.session() as session:  # another instance takes the lease for a minute
            state = session.get_one(MailboxState, settings.name)
            state.lease_owner = "elsewhere/0/1:1:0000"
            state.lease_expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        wait_for(lambda: "lease taken over by another instance" in caplog.text, 10, "the loss")
        dovecot.append(user, old_notification(2, to=user))
        time.sleep(2 * duration.total_seconds())
        assert scalar_count(database, Message) == 1
        assert not lease.held
    assert lease.holder()[0] == "elsewhere/0/1:1:0000"  # not released: it was not ours


def test_a_lease_left_by_an_instance_of_another_machine_is_taken_when_it_expires(
    dovecot: ImapServer, make_config: MakeConfig, database: Database
) -> None:
    """As after ``kill -9`` of an instance elsewhere: its lease is waited for, not broken."""
    user = "cdc@example.org"
    config = load_config(make_config({"cdc": [user]}))
    settings = config.mailboxes[0]
    duration = dt.timedelta(seconds=3)
    left = MailboxLease(database, settings.name, "elsewhere/0/1:1:0000", duration=duration)
    assert left.acquire()
    _, expires = left.holder()
    assert expires is not None
    dovecot.append(user, old_notification(1, to=user))
    lease = MailboxLease(database, settings.name, instance_id(), duration=duration)
    with polling(MailboxPoller(settings, Ingestor(database, config), lease=lease)):
        took = wait_for(lambda: all_processed(database, 1), 20, "the takeover")
    assert took < duration.total_seconds() + lease.renew_every + 5
    with database.session(read_only=True) as session:
        stored_at = session.scalar(select(Message.received_at))
    assert stored_at is not None and stored_at >= expires


def test_a_single_pass_leaves_a_mailbox_held_by_a_running_instance_to_it(
    dovecot: ImapServer, make_config: MakeConfig, database: Database
) -> None:
    user = "cdc@example.org"
    config = load_config(make_config({"cdc": [user]}))
    name = config.mailboxes[0].name
    ingestor = Ingestor(database, config)
    running = MailboxLease(database, name, "elsewhere/0/1:1:0000")
    assert running.acquire()
    dovecot.append(user, old_notification(1, to=user))
    leases = lease_factory(database, owner="poll-once")
    assert poll_all_once(config, ingestor, lease_for=leases) == {name: None}
    assert scalar_count(database, Message) == 0
    running.release()
    assert poll_all_once(config, ingestor, lease_for=leases) == {name: None}
    assert all_processed(database, 1)
    assert running.holder() == (None, None)  # the pass gave its lease back


def dead_pid() -> int:
    """The id of a process that has just exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_lease_of_a_dead_process_of_this_machine_is_taken_at_once(
    database: Database,
) -> None:
    clock = Clock(T0)
    dead = MailboxLease(database, "cdc:box", f"{machine_id()}:{dead_pid()}:0000", clock=clock)
    assert dead.acquire()
    successor = MailboxLease(database, "cdc:box", instance_id(), clock=clock)
    assert successor.acquire()
    assert successor.holder() == (successor.owner, T0 + dt.timedelta(seconds=60))


@pytest.mark.parametrize("holder", ["another-machine", "a-live-process", "a-plain-name"])
def test_a_lease_whose_owner_may_be_alive_is_waited_for(database: Database, holder: str) -> None:
    owner = {
        "another-machine": f"elsewhere/0/1:{dead_pid()}:0000",
        "a-live-process": f"{machine_id()}:{os.getpid()}:0000",
        "a-plain-name": "node-a",
    }[holder]
    clock = Clock(T0)
    assert MailboxLease(database, "cdc:box", owner, clock=clock).acquire()
    successor = MailboxLease(database, "cdc:box", instance_id(), clock=clock)
    assert not successor.acquire()
    clock.now += dt.timedelta(seconds=60)
    assert successor.acquire()


def lease_config(**tracker: object) -> dt.timedelta:
    unit = {"id": "cdc", "name": "CDC", "role": "lead"}
    data = {"tracker": {"database": "sqlite:///t.db", **tracker}, "units": [unit]}
    return config_from_dict(data, environ={}).tracker.mailbox_lease


def test_the_lease_duration_is_configurable_within_bounds() -> None:
    assert lease_config() == dt.timedelta(seconds=60)
    assert lease_config(mailbox_lease="2m") == dt.timedelta(minutes=2)
    assert lease_config(mailbox_lease="3s") == dt.timedelta(seconds=3)
    for bad, message in (("1s", "between 3s and 1h"), ("2h", "between 3s and 1h"), (60, "")):
        with pytest.raises(ConfigError, match=f"tracker.mailbox_lease.*{message}"):
            lease_config(mailbox_lease=bad)


# -- daemons sharing PostgreSQL ---------------------------------------------------------------


def notification(number: int, *, to: str) -> bytes:
    """A high-risk report (symptoms and travel) about person ``number``, sent just now, so
    that it raises an urgent alert."""
    message = email.message_from_bytes(old_notification(number, to=to), policy=email.policy.default)
    del message["Date"]
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    return message.as_bytes()


STAFF = {"cdc": EPI, "med": DOC}
"""The staff of each unit: the epidemiologist at the CDC, the doctor at Medical Affairs."""


@pytest.fixture
def postgres_url(postgres_cluster: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL cluster."""
    name = postgres_cluster.create_database()
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``condition()`` holds; the seconds it took (AssertionError on timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def scalar_count(db: Database, model: type[object], *where: object) -> int:
    with db.session(read_only=True) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def all_processed(db: Database, total: int) -> bool:
    return scalar_count(db, Message) == total and (
        scalar_count(db, Message, Message.processed_at.is_(None)) == 0
    )


def is_digest(subject: str) -> bool:
    return subject.startswith(("[QN] Bản tin ", "[QN] Digest "))


@pytest.mark.integration
@pytest.mark.postgresql
@pytest.mark.timeout(240)
def test_three_daemons_share_mailboxes_and_send_everything_once(
    tmp_path: Path,
    postgres_url: str,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    daemons: list[RunningDaemon],
) -> None:
    zone = midday_zone()
    digest_at = (dt.datetime.now(ZoneInfo(zone)) + dt.timedelta(seconds=25)).time()
    config = tmp_path / "config.toml"
    env = write_run_config(
        config,
        database=postgres_url,
        dovecot=dovecot,
        staff=STAFF,
        smtp_port=smtp_server.port,
        sender=TRACKER,
        zone=zone,
        digest_at=digest_at.replace(microsecond=0),
        tracker_extra=['mailbox_lease = "20s"'],
    )
    db = open_database(postgres_url)  # the schema exists before three daemons start at once
    try:
        dovecot.deliver_maildir(CDC_INBOX, (notification(n, to=CDC_INBOX) for n in range(30)))
        dovecot.deliver_maildir(MED_INBOX, (notification(n, to=MED_INBOX) for n in range(100, 115)))
        for number in range(3):
            daemons.append(RunningDaemon(config, env, tmp_path / f"daemon-{number}.log"))
        wait_for(lambda: all_processed(db, 45), 60, "the first 45 messages")
        for number in range(30, 36):  # new mail while all three run
            dovecot.append(CDC_INBOX, notification(number, to=CDC_INBOX))
            dovecot.append(MED_INBOX, notification(number + 100, to=MED_INBOX))
        wait_for(lambda: all_processed(db, 57), 60, "the 12 new messages")

        # Each mailbox is polled by exactly one instance; the others wait for its lease.
        for user in (CDC_INBOX, MED_INBOX):
            pollers = [instance for instance in daemons if instance.polls(user)]
            assert len(pollers) == 1, [instance.text() for instance in daemons]
        waiting = sum("polled by instance" in instance.text() for instance in daemons)
        assert waiting >= 2

        with db.session(read_only=True) as session:
            message_ids = session.scalars(select(Message.message_id)).all()
            report_ids = session.scalars(select(Case.report_id)).all()
        assert len(message_ids) == len(set(message_ids)) == 57
        assert len(report_ids) == len(set(report_ids)) == 57

        # Every case is high-risk: one alert each, whichever instance processed it.
        smtp_server.wait_for(lambda messages: len(messages) >= 57, timeout=60)
        # The digest: the three cron jobs fire at the same second; one digest per unit.
        smtp_server.wait_for(
            lambda messages: sum(is_digest(m.subject) for m in messages) >= 2, timeout=60
        )
        digest = next(m for m in smtp_server.messages if is_digest(m.subject) and EPI in m.rcpt_tos)
        with db.session(read_only=True) as session:
            cdc_ref = session.scalar(
                select(Case.ref).where(Case.owner_unit == "cdc").order_by(Case.id).limit(1)
            )
        assert cdc_ref is not None and cdc_ref in text_of(digest.message)

        # A reply delivered to both mailboxes (so to two different instances, perhaps).
        now = dt.datetime.now(dt.UTC)
        answer = reply(digest.raw, f"{cdc_ref} home", date=now)
        dovecot.append(CDC_INBOX, answer)
        dovecot.append(MED_INBOX, answer)
        reply_id = str(read(answer)["Message-ID"])
        smtp_server.wait_for(
            lambda messages: any(m.message["In-Reply-To"] == reply_id for m in messages),
            timeout=60,
        )
        wait_for(lambda: all_processed(db, 59), 30, "both copies of the reply")
        time.sleep(6)  # every instance has flushed its outbox at least once since
        messages = smtp_server.messages
        for instance in daemons:
            instance.stop()
        with db.session(read_only=True) as session:
            applied = session.scalars(
                select(CaseEvent.action)
                .join(Case, Case.id == CaseEvent.case_id)
                .where(Case.ref == cdc_ref, CaseEvent.action != "created")
            ).all()
            digests_recorded = session.scalar(select(func.count()).select_from(DigestSent))
            leases = session.scalars(select(MailboxState.lease_owner)).all()
    finally:
        db.dispose()

    assert list(applied) == ["home"]
    assert digests_recorded == 2
    assert leases and all(owner is None for owner in leases)  # released on SIGTERM
    sent = Counter((m.rcpt_tos, m.subject) for m in messages)
    assert all(count == 1 for count in sent.values()), sent.most_common(3)
    digests = [m for m in messages if is_digest(m.subject)]
    assert sorted(m.rcpt_tos for m in digests) == sorted([(EPI,), (DOC,)])
    acks = [m for m in messages if m.message["Auto-Submitted"] == "auto-replied"]
    assert len(acks) == 1 and acks[0].rcpt_tos == (EPI,)
    assert acks[0].message["In-Reply-To"] == reply_id
    assert f"✓ {cdc_ref} home" in text_of(acks[0].message)
    alerts = [m for m in messages if m not in digests and m not in acks]
    alert = re.compile(r"\[QN-\d{4}\] (Cảnh báo: nguy cơ cao|Alert: high risk)")
    assert len(alerts) == 57
    assert all(alert.fullmatch(m.subject) for m in alerts), [m.subject for m in alerts]
    for instance in daemons:
        assert "Traceback" not in instance.text(), instance.text()


@pytest.mark.integration
@pytest.mark.postgresql
@pytest.mark.timeout(180)
def test_a_killed_poller_is_taken_over_at_once_by_an_instance_of_its_machine(
    tmp_path: Path, postgres_url: str, dovecot: ImapServer, daemons: list[RunningDaemon]
) -> None:
    lease = 10.0
    config = tmp_path / "config.toml"
    env = write_run_config(
        config,
        database=postgres_url,
        dovecot=dovecot,
        staff=STAFF,
        units=("cdc",),
        tracker_extra=[f'mailbox_lease = "{lease:.0f}s"'],
    )
    db = open_database(postgres_url)
    try:
        holder = RunningDaemon(config, env, tmp_path / "holder.log")
        daemons.append(holder)
        holder.wait_for_log("connected; waiting", timeout=30)
        standby = RunningDaemon(config, env, tmp_path / "standby.log")
        daemons.append(standby)
        standby.wait_for_log("polled by instance", timeout=30)
        dovecot.append(CDC_INBOX, notification(1, to=CDC_INBOX))
        wait_for(lambda: all_processed(db, 1), 30, "the first message")
        assert not standby.polls(CDC_INBOX)

        # kill -9: the lease stays recorded, but its owner is a dead process of this machine.
        holder.kill()
        killed_at = time.monotonic()
        dovecot.append(CDC_INBOX, notification(2, to=CDC_INBOX))
        wait_for(lambda: all_processed(db, 2), 60, "the standby to take over")
        took = time.monotonic() - killed_at
        assert took < lease, took
        assert f"lease of stopped instance {holder.instance} taken over" in standby.text()
        assert standby.polls(CDC_INBOX)
        assert owner_of(db) == standby.instance

        # A clean stop releases the lease: a third instance takes over without waiting.
        third = RunningDaemon(config, env, tmp_path / "third.log")
        daemons.append(third)
        third.wait_for_log("polled by instance", timeout=30)
        standby.stop()
        assert "lease released" in standby.text()
        assert owner_of(db) in (None, third.instance)
        dovecot.append(CDC_INBOX, notification(3, to=CDC_INBOX))
        took = wait_for(lambda: all_processed(db, 3), 30, "the third instance to take over")
        assert took < lease, took
        assert owner_of(db) == third.instance
        third.stop()
        with db.session(read_only=True) as session:
            uids = session.scalars(select(Message.uid).order_by(Message.uid)).all()
        assert list(uids) == dovecot.uids(CDC_INBOX) and len(uids) == 3
        assert scalar_count(db, Case) == 3
    finally:
        db.dispose()


def owner_of(db: Database) -> str | None:
    with db.session(read_only=True) as session:
        return session.scalar(select(MailboxState.lease_owner))
