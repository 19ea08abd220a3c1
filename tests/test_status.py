"""``mailtracker status`` (mailbox health, outbox, quarantine, next digests; exit status as a
health check) and the login checks of ``check-config``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from servers import ImapServer, MakeConfig, free_port
from smtp_capture import SmtpCapture
from store_support import ENVIRON, config_data, make_config, personal_mail

from mailtracker.cli import main
from mailtracker.cli.status import render
from mailtracker.config import Config, config_from_dict, load_config
from mailtracker.mail.lease import MailboxLease
from mailtracker.mail.outbox import enqueue
from mailtracker.services.ingest import Ingestor
from mailtracker.services.status import (
    check_mailbox,
    check_smtp,
    collect_status,
    login_results,
    next_digest,
    stale_after,
    status_json,
)
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import DigestSent, OutboxMessage

NOW = dt.datetime(2020, 2, 14, 1, 0, tzinfo=dt.UTC)  # 08:00 in Quảng Ngãi
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def tracker(tmp_path: Path) -> tuple[Config, Database]:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    return make_config(url), open_database(url)


def test_fresh_mailboxes_are_healthy_and_show_their_position(
    tracker: tuple[Config, Database],
) -> None:
    config, db = tracker
    ingestor = Ingestor(db, config)
    cdc, med = config.mailboxes
    ingestor.store_batch(cdc, 77, [(5, personal_mail())], now=NOW)
    for box in (cdc, med):
        ingestor.record_poll(box.name, now=NOW - dt.timedelta(minutes=2), error=None)
    with db.session(read_only=True) as session:
        status = collect_status(session, config, NOW)
    assert status.healthy and status.problems == ()
    first = status.mailboxes[0]
    assert (first.name, first.uidvalidity, first.last_uid) == (cdc.name, 77, 5)
    assert first.last_success_at == NOW - dt.timedelta(minutes=2)
    assert status.mailboxes[1].uidvalidity is None and status.mailboxes[1].last_uid == 0


def test_the_instance_holding_a_mailbox_is_shown_while_its_lease_lasts(
    tracker: tuple[Config, Database],
) -> None:
    config, db = tracker
    cdc = config.mailboxes[0]
    lease = MailboxLease(db, cdc.name, "host-a/1234", duration=MINUTE, clock=lambda: NOW)
    assert lease.acquire()
    with db.session(read_only=True) as session:
        held = collect_status(session, config, NOW + dt.timedelta(seconds=30))
        expired = collect_status(session, config, NOW + dt.timedelta(minutes=2))
    first, second = held.mailboxes
    assert (first.polled_by, first.lease_expires_at) == ("host-a/1234", NOW + MINUTE)
    assert (second.polled_by, second.lease_expires_at) == (None, None)
    assert "polled by:    host-a/1234 (lease until 2020-02-14 08:01:00)" in render(
        held, config.tracker.timezone
    )
    report = status_json(held, config.tracker.timezone)["mailboxes"][0]
    assert (report["polled_by"], report["lease_expires_at"]) == (
        "host-a/1234",
        "2020-02-14T08:01:00+07:00",
    )
    assert expired.mailboxes[0].polled_by is None  # a lease past its time is nobody's
    assert "polled by" not in render(expired, config.tracker.timezone)


def test_a_mailbox_is_stale_after_three_polls_and_five_minutes(
    tracker: tuple[Config, Database],
) -> None:
    config, db = tracker
    ingestor = Ingestor(db, config)
    cdc, med = config.mailboxes
    assert stale_after(cdc) == dt.timedelta(minutes=8)  # poll_every 60s
    ingestor.record_poll(cdc.name, now=NOW - dt.timedelta(minutes=7, seconds=59), error=None)
    ingestor.record_poll(med.name, now=NOW - dt.timedelta(minutes=8, seconds=1), error=None)
    with db.session(read_only=True) as session:
        status = collect_status(session, config, NOW)
    assert [box.problem is not None for box in status.mailboxes] == [False, True]
    assert status.problems == (f"mailbox {med.name}: no successful poll for 8 min",)


def test_an_error_newer_than_the_last_success_is_a_problem(
    tracker: tuple[Config, Database],
) -> None:
    config, db = tracker
    ingestor = Ingestor(db, config)
    cdc, med = config.mailboxes
    ingestor.record_poll(cdc.name, now=NOW - dt.timedelta(minutes=3), error=None)
    ingestor.record_poll(cdc.name, now=NOW - dt.timedelta(minutes=1), error="LoginError: bad")
    ingestor.record_poll(med.name, now=NOW - dt.timedelta(minutes=3), error="timeout")
    ingestor.record_poll(med.name, now=NOW - dt.timedelta(minutes=1), error=None)
    with db.session(read_only=True) as session:
        status = collect_status(session, config, NOW)
    assert status.problems == (f"mailbox {cdc.name}: last poll failed: LoginError: bad",)
    assert status.mailboxes[1].last_error == "timeout" and status.mailboxes[1].problem is None


def test_never_polled_is_a_problem(tracker: tuple[Config, Database]) -> None:
    config, db = tracker
    with db.session(read_only=True) as session:
        status = collect_status(session, config, NOW)
    assert len(status.problems) == 2
    assert all("never polled successfully" in problem for problem in status.problems)


def test_outbox_quarantine_and_digests(tracker: tuple[Config, Database]) -> None:
    config, db = tracker
    ingestor = Ingestor(db, config)
    for box in config.mailboxes:
        ingestor.record_poll(box.name, now=NOW, error=None)
    ingestor.import_messages("cdc", [("p.eml", personal_mail())], now=NOW)
    ingestor.process_pending(now=NOW)
    with db.session() as session:
        for key in ("due", "later", "retrying", "failed", "sent"):
            enqueue(session, dedup_key=key, recipients=["a@example.org"], raw=b"x", now=NOW)
        rows = {row.dedup_key: row for row in session.query(OutboxMessage)}
        rows["later"].next_attempt_at = NOW + dt.timedelta(minutes=5)
        rows["retrying"].attempts = 2
        rows["retrying"].next_attempt_at = NOW + dt.timedelta(minutes=1)
        rows["failed"].attempts = 40
        rows["failed"].next_attempt_at = None
        rows["sent"].sent_at = NOW
        session.add(DigestSent(unit_id="cdc", date=dt.date(2020, 2, 14), sent_at=NOW))
        session.add(DigestSent(unit_id="med", date=dt.date(2020, 2, 12), sent_at=NOW))
    with db.session(read_only=True) as session:
        status = collect_status(session, config, NOW)
    outbox = status.outbox
    assert (outbox.queued, outbox.due, outbox.retrying, outbox.failed) == (3, 1, 1, 1)
    assert status.problems == ("outbox: 1 message(s) failed permanently",)
    assert status.quarantined == 1
    cdc, med = status.digests
    tz = config.tracker.timezone
    # digest_at defaults to 07:00; at 08:00 cdc has had today's, med has not (late)
    assert cdc.last_date == dt.date(2020, 2, 14) and not cdc.late
    assert cdc.next_at == dt.datetime(2020, 2, 15, 7, 0, tzinfo=tz)
    assert med.last_date == dt.date(2020, 2, 12) and med.late
    assert med.next_at == dt.datetime(2020, 2, 14, 7, 0, tzinfo=tz)


def test_next_digest_before_digest_at(tracker: tuple[Config, Database]) -> None:
    config, _ = tracker
    tz = config.tracker.timezone
    unit = config.units[0]
    early = dt.datetime(2020, 2, 14, 6, 59, tzinfo=tz)
    assert next_digest(unit, None, early, tz) == (dt.datetime(2020, 2, 14, 7, 0, tzinfo=tz), False)
    assert next_digest(unit, dt.date(2020, 2, 13), early, tz)[1] is False


def test_cli_exit_status_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    data = config_data(f"sqlite:///{tmp_path / 'tracker.db'}")
    config_file = tmp_path / "config.toml"
    lines = [f'[tracker]\ndatabase = "{data["tracker"]["database"]}"', 'secret_key = "x"']
    for unit in data["units"]:
        box = unit["mailboxes"][0]
        lines += [
            f'[[units]]\nid = "{unit["id"]}"\nname = "U"\nrole = "{unit["role"]}"',
            f'[[units.mailboxes]]\nhost = "127.0.0.1"\nusername = "{box["username"]}"',
            'password = "env:MT_TEST_IMAP"\nsecurity = "none"',
        ]
    config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--config", str(config_file), "status"]
    assert main(args) == 1  # never polled
    out = capsys.readouterr().out
    assert "never polled successfully" in out and "quarantined mail: 0" in out
    config = load_config(config_file)
    db = open_database(config.tracker.database)
    for box in config.mailboxes:
        Ingestor(db, config).record_poll(box.name, now=dt.datetime.now(dt.UTC), error=None)
    db.dispose()
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is True and report["problems"] == []
    assert [box["unit"] for box in report["mailboxes"]] == ["cdc", "med"]
    assert report["outbox"] == {
        "queued": 0, "due": 0, "retrying": 0, "failed": 0, "oldest_due_at": None,
    }  # fmt: skip
    assert {digest["unit"] for digest in report["digests"]} == {"cdc", "med"}
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip().endswith("healthy")


# -- logins against real servers ---------------------------------------------------------------


@pytest.mark.integration
def test_logins_say_what_failed(
    make_config: MakeConfig, dovecot: ImapServer, smtp_server: SmtpCapture
) -> None:
    config = load_config(make_config(units={"cdc": ["cdc@example.org"]}))
    (mailbox,) = config.mailboxes
    assert check_mailbox(mailbox).ok
    wrong = dataclasses.replace(
        mailbox, password=dataclasses.replace(mailbox.password, source="literal", value="nope")
    )
    assert "credentials refused" in check_mailbox(wrong).message
    missing = check_mailbox(dataclasses.replace(mailbox, folder="Nowhere"))
    assert not missing.ok and "folder 'Nowhere' does not exist" in missing.message
    refused = check_mailbox(dataclasses.replace(mailbox, port=free_port()))
    assert not refused.ok and "connection refused" in refused.message
    unknown = check_mailbox(dataclasses.replace(mailbox, host="no-such-host.invalid"))
    assert not unknown.ok and unknown.message.startswith("DNS: cannot resolve")
    tls = check_mailbox(dataclasses.replace(mailbox, security="ssl"))
    assert not tls.ok and "TLS" in tls.message
    unset = check_mailbox(
        dataclasses.replace(
            mailbox, password=dataclasses.replace(mailbox.password, source="env:MT_UNSET_X")
        )
    )
    assert not unset.ok and "MT_UNSET_X is not set" in unset.message

    smtp = config_from_dict(
        {
            "tracker": {"secret_key": "x"},
            "smtp": {
                "host": smtp_server.host,
                "port": smtp_server.port,
                "security": "none",
                "from": "t@example.org",
            },
            "units": [{"id": "cdc", "name": "CDC", "role": "lead"}],
        }
    ).smtp
    assert smtp is not None
    assert check_smtp(smtp).ok
    starttls = check_smtp(dataclasses.replace(smtp, security="starttls"))
    assert not starttls.ok and "does not offer" in starttls.message
    gone = check_smtp(dataclasses.replace(smtp, port=free_port()))
    assert not gone.ok and "connection refused" in gone.message

    results = login_results(dataclasses.replace(config, smtp=smtp))
    assert [result.ok for result in results] == [True, True]
    assert results[1].server == f"SMTP 127.0.0.1:{smtp.port}"


@pytest.mark.integration
def test_check_config_tries_every_login(
    make_config: MakeConfig,
    dovecot: ImapServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = make_config(units={"cdc": ["cdc@example.org"]})
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "logged in as cdc@example.org; folder INBOX ok" in out
    assert out.rstrip().endswith("OK (1 unit(s), 1 mailbox(es))")

    monkeypatch.setenv("MT_TEST_IMAP_CDC_0", "wrong-password")
    assert main(["--config", str(path), "check-config"]) == 1
    err = capsys.readouterr().err
    assert "credentials refused" in err and "1 problem(s)" in err
    assert "wrong-password" not in err
    assert main(["--config", str(path), "check-config", "--no-login"]) == 0
