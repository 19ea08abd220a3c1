"""Personal data stays out of the logs: a full cycle of ``mailtracker run`` (the corpus ingested,
alerts, the digest, a staff reply with commands and a note naming the person, the
acknowledgement) at INFO and at DEBUG, with no name, phone or ID number from the corpus in any
record at INFO level or above."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_support import ROOT, RunningDaemon
from fault_support import INBOX, check_invariants, wait_until, write_config
from reply_support import reply
from servers import ImapServer
from smtp_capture import Captured, SmtpCapture
from sqlalchemy import select
from test_faults import fresh

from mailtracker.store.db import open_database
from mailtracker.store.models import Case, Message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SENDER = "epi@cdc.example.org"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def corpus_secrets() -> list[str]:
    """Every name, phone (as normalised and as written with spaces) and ID number."""
    found: set[str] = set()
    for path in sorted((CORPUS / "notifications").glob("*.json")):
        for report in json.loads(path.read_text(encoding="utf-8"))["reports"]:
            for field in ("full_name", "phone", "id_number"):
                if report[field]:
                    found.add(report[field])
            if report["phone"]:
                digits = report["phone"]
                found.add(f"{digits[:4]} {digits[4:7]} {digits[7:]}")
    return sorted(found)


def records_at_info_or_above(log: str) -> list[str]:
    """The log's records (a record's continuation lines included) of level INFO and above."""
    records: list[tuple[str, list[str]]] = []
    for line in log.splitlines():
        match = RECORD.match(line)
        if match:
            records.append((match.group(1), [line]))
        elif records:
            records[-1][1].append(line)
    return ["\n".join(lines) for level, lines in records if level != "DEBUG"]


def digests(messages: list[Captured]) -> list[Captured]:
    return [m for m in messages if "Bản tin" in m.subject]


def digest_of(messages: list[Captured]) -> Captured | None:
    return next(iter(digests(messages)), None)


def cli(
    config: Path, env: dict[str, str], level: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config), "--log-level", level,
         *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=ROOT,
    )  # fmt: skip


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"sample corpus not found at {CORPUS}")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_no_personal_data_in_the_log_at_info(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture, level: str
) -> None:
    secrets = corpus_secrets()
    assert len(secrets) > 40
    config, env = write_config(tmp_path, dovecot, smtp_server.port, staff=[SENDER])
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    samples = sorted(CORPUS.glob("*/*.eml"))
    for sample in samples:
        dovecot.append(INBOX, fresh(sample.read_bytes()))
    db = open_database(url)
    cli_logs: list[str] = []
    daemon = RunningDaemon(config, env, tmp_path / "run.log", level=level, started_within=None)
    try:
        assert wait_until(lambda: _count_processed(url) == len(samples), 60), daemon.text()[-3000:]
        smtp_server.wait_for(lambda ms: digest_of(ms) is not None, timeout=60)
        # today's digest went out at start, before the mail was read: tomorrow's lists the cases
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
        commands = [
            ["digest", "--unit", "cdc", "--date", tomorrow],
            ["cases"],
            ["export", "--format", "csv", "--output", str(tmp_path / "cases.csv")],
        ]
        for command in commands:
            result = cli(config, env, level, *command)
            assert result.returncode == 0, result.stderr
            cli_logs.append(result.stderr)
        sent = smtp_server.wait_for(lambda ms: len(digests(ms)) == 2, timeout=30)
        found = digests(sent)[-1]
        assert any(case_name in found.message.get_body(("plain",)).get_content()
                   for case_name in secrets)  # fmt: skip
        with db.session(read_only=True) as session:
            cases = list(session.scalars(select(Case).where(Case.full_name.is_not(None))))
        first, second = cases[0], cases[1]
        lines = [
            f"{first.ref} home",
            f"{first.ref} check 38,2 ho",
            f"{first.ref} note gọi cho {first.full_name} số {first.phone} CCCD {first.id_number}",
            f"{second.ref} hospital",
            f"{second.full_name} {second.phone} không rõ",  # not a command: refused, recorded
        ]
        answer = reply(found.raw, "\n".join(lines), sender=SENDER)
        dovecot.append(INBOX, answer)
        smtp_server.wait_for(lambda ms: any("Đã nhận" in m.subject for m in ms), timeout=60)
        time.sleep(1)
    finally:
        db.dispose()
        daemon.stop()
    log = "\n".join([daemon.text(), *cli_logs])
    assert "daemon stopped" in log
    if level == "DEBUG":
        assert " DEBUG " in log
    leaks = [
        (secret, record)
        for record in records_at_info_or_above(log)
        for secret in secrets
        if secret in record
    ]
    assert leaks == []
    assert check_invariants(url, smtp_server.messages) == []
    ack = next(m for m in smtp_server.messages if "Đã nhận" in m.subject)
    assert ack.subject.endswith("4 áp dụng, 1 từ chối"), ack.subject


def _count_processed(url: str) -> int:
    db = open_database(url, upgrade=False)
    try:
        with db.session(read_only=True) as session:
            return len(
                list(session.scalars(select(Message.id).where(Message.processed_at.is_not(None))))
            )
    finally:
        db.dispose()
