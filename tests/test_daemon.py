"""``mailtracker run`` as a subprocess against Dovecot and aiosmtpd: digests once a day (late
when missed), outbox retries across an SMTP outage, urgent alerts, clean stop on SIGTERM.

The digest and alert tests run on SQLite and on PostgreSQL (``database_url``); the slow outage
test on SQLite only (the outbox is the same code on both; tests/test_instances.py sends
through it from several daemons on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from daemon_support import RunningDaemon, midday_zone, write_run_config
from outgoing_support import NOW, make_config
from servers import ImapServer
from smtp_capture import Captured, SmtpCapture
from sqlalchemy import select
from store_support import notification

from mailtracker.daemon import Daemon, digest_day
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import DigestSent, OutboxMessage

STOP_WITHIN = 5.0
PERSONAL = ("Nguyễn Thị Hoa", "0905111222", "0905 111 222")


def local_now(zone: str) -> dt.datetime:
    return dt.datetime.now(ZoneInfo(zone))


def write_config(
    tmp_path: Path,
    dovecot: ImapServer,
    smtp_port: int,
    zone: str,
    digest_at: dt.time,
    database: str | None = None,
) -> tuple[Path, dict[str, str]]:
    """Units ``cdc`` (lead, vi) and ``med`` (member, en), a mailbox each on ``dovecot``;
    the database is ``database``, by default ``tracker.db`` in ``tmp_path``."""
    path = tmp_path / "config.toml"
    env = write_run_config(
        path,
        database=database or f"sqlite:///{tmp_path / 'tracker.db'}",
        dovecot=dovecot,
        staff={unit_id: f"staff@{unit_id}.example.org" for unit_id in ("cdc", "med")},
        smtp_port=smtp_port,
        zone=zone,
        digest_at=digest_at,
    )
    return path, env


def digests(messages: list[Captured]) -> dict[str, list[str]]:
    """Digest subjects by recipient."""
    found: dict[str, list[str]] = {}
    for message in messages:
        if "Bản tin" in message.subject or "Digest" in message.subject:
            for recipient in message.rcpt_tos:
                found.setdefault(recipient, []).append(message.subject)
    return found


def one_digest_each(messages: list[Captured]) -> bool:
    return len(digests(messages)) == 2


def assert_one_digest_per_unit(messages: list[Captured]) -> None:
    found = digests(messages)
    assert sorted(found) == ["staff@cdc.example.org", "staff@med.example.org"]
    assert len(found["staff@cdc.example.org"]) == 1
    assert found["staff@cdc.example.org"][0].startswith("[QN] Bản tin ")
    assert len(found["staff@med.example.org"]) == 1
    assert found["staff@med.example.org"][0].startswith("[QN] Digest ")
    assert len(messages) == 2


def restart_sends_nothing(
    config: Path,
    env: dict[str, str],
    tmp_path: Path,
    smtp: SmtpCapture,
    daemons: list[RunningDaemon],
) -> None:
    before = len(smtp.messages)
    again = RunningDaemon(config, env, tmp_path / "second.log")
    daemons.append(again)
    time.sleep(6)  # catch-up and several outbox flushes have run by now
    assert again.stop() < STOP_WITHIN
    assert len(smtp.messages) == before
    assert "sending it late" not in again.text()


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_digest_at_sends_one_per_unit_and_none_after_a_restart(
    tmp_path: Path,
    database_url: str,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    daemons: list[RunningDaemon],
) -> None:
    zone = midday_zone()
    digest_at = (local_now(zone) + dt.timedelta(seconds=15)).time().replace(microsecond=0)
    config, env = write_config(tmp_path, dovecot, smtp_server.port, zone, digest_at, database_url)
    daemon = RunningDaemon(config, env, tmp_path / "first.log")
    daemons.append(daemon)
    assert not digests(smtp_server.messages)  # nothing before digest_at
    smtp_server.wait_for(one_digest_each, timeout=45)
    sent_at = local_now(zone)
    assert sent_at.time() >= digest_at
    time.sleep(4)
    assert_one_digest_per_unit(smtp_server.messages)
    assert "sending it late" not in daemon.text()
    assert daemon.stop() < STOP_WITHIN
    restart_sends_nothing(config, env, tmp_path, smtp_server, daemons)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_daemon_started_after_digest_at_sends_the_late_digest_once(
    tmp_path: Path,
    database_url: str,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    daemons: list[RunningDaemon],
) -> None:
    zone = midday_zone()
    digest_at = (local_now(zone) - dt.timedelta(hours=1)).time().replace(microsecond=0)
    config, env = write_config(tmp_path, dovecot, smtp_server.port, zone, digest_at, database_url)
    daemon = RunningDaemon(config, env, tmp_path / "first.log")
    daemons.append(daemon)
    smtp_server.wait_for(one_digest_each, timeout=30)
    time.sleep(4)
    assert_one_digest_per_unit(smtp_server.messages)
    assert "sending it late" in daemon.text()
    assert daemon.stop() < STOP_WITHIN
    restart_sends_nothing(config, env, tmp_path, smtp_server, daemons)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_smtp_outage_keeps_digests_queued_then_delivers_each_once(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture, daemons: list[RunningDaemon]
) -> None:
    zone = midday_zone()
    digest_at = (local_now(zone) - dt.timedelta(minutes=5)).time().replace(microsecond=0)
    config, env = write_config(tmp_path, dovecot, smtp_server.port, zone, digest_at)
    smtp_server.stop()
    daemon = RunningDaemon(config, env, tmp_path / "first.log")
    daemons.append(daemon)
    database = open_database(f"sqlite:///{tmp_path / 'tracker.db'}", upgrade=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            with database.session(read_only=True) as session:
                rows = session.scalars(select(OutboxMessage)).all()
                recorded = session.scalars(select(DigestSent)).all()
            if len(rows) == 2 and all(row.attempts >= 1 and row.last_error for row in rows):
                break
            assert time.monotonic() < deadline, f"no failed attempt recorded: {daemon.text()}"
            time.sleep(0.5)
        assert all(row.sent_at is None and row.next_attempt_at is not None for row in rows)
        assert sorted(r.unit_id for r in recorded) == ["cdc", "med"]
        smtp_server.start()
        smtp_server.wait_for(one_digest_each, timeout=90)  # the first retry is within a minute
        time.sleep(4)
        assert_one_digest_per_unit(smtp_server.messages)
        with database.session(read_only=True) as session:
            rows = session.scalars(select(OutboxMessage)).all()
        assert all(row.sent_at is not None for row in rows)
    finally:
        database.dispose()
    assert daemon.stop() < STOP_WITHIN


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_urgent_report_reaches_the_unit_as_an_alert_while_running(
    tmp_path: Path,
    database_url: str,
    dovecot: ImapServer,
    smtp_server: SmtpCapture,
    daemons: list[RunningDaemon],
) -> None:
    zone = midday_zone()
    digest_at = (local_now(zone) + dt.timedelta(hours=3)).time().replace(microsecond=0)
    config, env = write_config(tmp_path, dovecot, smtp_server.port, zone, digest_at, database_url)
    daemon = RunningDaemon(config, env, tmp_path / "first.log")
    daemons.append(daemon)
    daemon.wait_for_log("connected; waiting", timeout=30)
    now = dt.datetime.now(dt.UTC)
    dovecot.append(
        "med-inbox@example.org",
        notification(name="Trần Văn Bình", phone="0905333444", report_id="SKVN-2020-0090002",
                     came_from=None, date=now, to="med-inbox@example.org"),
    )  # fmt: skip
    dovecot.append(
        "cdc-inbox@example.org",
        notification(symptoms="Sốt, ho", date=now, to="cdc-inbox@example.org"),
    )
    (alert,) = smtp_server.wait_for(lambda messages: len(messages) >= 1, timeout=45)
    assert alert.subject.startswith("[QN-") and alert.subject.endswith("] Cảnh báo: nguy cơ cao")
    assert alert.rcpt_tos == ("staff@cdc.example.org",)
    assert alert.message["Auto-Submitted"] == "auto-generated"
    body = alert.message.get_body(("plain",))
    assert body is not None and "Nguyễn Thị Hoa" in body.get_content()
    time.sleep(4)
    assert len(smtp_server.messages) == 1  # the low-risk report raised none
    assert daemon.stop() < STOP_WITHIN
    log = daemon.text()
    assert all(personal not in log for personal in PERSONAL)


def test_digest_day_is_the_latest_digest_at() -> None:
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    seven = dt.time(7, 0)
    assert digest_day(dt.datetime(2020, 2, 14, 0, 0, tzinfo=dt.UTC), seven, tz) == dt.date(
        2020, 2, 14
    )
    assert digest_day(dt.datetime(2020, 2, 14, 10, 0, tzinfo=dt.UTC), seven, tz) == dt.date(
        2020, 2, 14
    )
    # 06:59 local on the 14th: the latest 07:00 was the day before
    assert digest_day(dt.datetime(2020, 2, 13, 23, 59, tzinfo=dt.UTC), seven, tz) == dt.date(
        2020, 2, 13
    )


@pytest.mark.timeout(30)
def test_a_failing_job_is_logged_without_its_text_and_the_daemon_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database: Database = open_database(f"sqlite:///{tmp_path / 'tracker.db'}")
    daemon = Daemon(make_config(str(database.url)), database, clock=lambda: NOW)
    ran = threading.Event()

    def boom() -> None:
        raise ValueError("Nguyễn Thị Hoa 0905111222")

    caplog.set_level(logging.INFO, logger="mailtracker")
    daemon.scheduler.start()
    try:
        daemon.scheduler.add_job(boom, id="boom")
        daemon.scheduler.add_job(ran.set, "interval", seconds=0.2, id="after")
        assert ran.wait(10)
        deadline = time.monotonic() + 10
        while "job boom failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "job boom failed: ValueError (details at DEBUG level)" in caplog.text
        assert "0905111222" not in caplog.text
        assert daemon.scheduler.running
    finally:
        daemon.stop()
        database.dispose()
    assert not daemon.scheduler.running
