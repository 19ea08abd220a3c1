"""Retention: ``purge`` empties the personal data of cases closed longer ago than
``retention_days`` and deletes their raw mail, keeping statuses, counts and the anonymous
history; the daemon runs it daily and ``mailtracker purge`` on demand."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reply_support import NOW, PEOPLE, SECRET, config_data, seed_cases
from sqlalchemy import func, select

from mailtracker.config import Config, config_from_dict
from mailtracker.daemon import RETENTION_JOB, Daemon
from mailtracker.services.cases import CaseService
from mailtracker.services.ingest import Ingestor
from mailtracker.services.retention import PERSONAL_FIELDS, purge
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseSource, Followup, Message

ROOT = Path(__file__).resolve().parents[1]
DAYS = 30
EPI = "epi@cdc.example.org"
DOC = "doc@med.example.org"


def retention_config(url: str, days: int | None = DAYS) -> Config:
    data: dict[str, Any] = config_data(url)
    if days is not None:
        data["tracker"]["retention_days"] = days
    return config_from_dict(data, environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": "pw"})


def apply(db: Database, config: Config, actor: str, line: str, now: dt.datetime) -> None:
    with db.session() as session:
        outcome = CaseService(config).apply_line(session, line, actor=actor, channel="cli", now=now)
    assert outcome.applied, outcome


def seeded(url: str) -> tuple[Database, Config]:
    """QN-0001 closed on day 0 (with a follow-up note), QN-0002 closed on day 50, QN-0003 open."""
    config = retention_config(url)
    db = open_database(url)
    seed_cases(Ingestor(db, config))
    apply(db, config, EPI, "QN-0001 home", NOW)
    apply(db, config, EPI, "QN-0001 check 36,8 gọi cho Nguyễn Thị Hoa", NOW)
    apply(db, config, EPI, "QN-0001 clear", NOW)
    apply(db, config, EPI, "QN-0002 clear gặp Trần Văn Bình", NOW + dt.timedelta(days=50))
    apply(db, config, DOC, "QN-0003 monitor", NOW)
    return db, config


def snapshot(db: Database) -> dict[str, Any]:
    with db.session(read_only=True) as session:
        cases = {c.ref: c for c in session.scalars(select(Case))}
        raws = {
            ref: [
                s.message.raw
                for s in session.scalars(
                    select(CaseSource).where(CaseSource.case_id == case.id)
                ).all()
            ]
            for ref, case in cases.items()
        }
        events = {
            ref: [(e.action, e.from_status, e.to_status, dict(e.details)) for e in case.events]
            for ref, case in cases.items()
        }
        notes = list(session.scalars(select(Followup.note)))
        return {"cases": cases, "raws": raws, "events": events, "notes": notes}


def test_purge_empties_personal_data_of_long_closed_cases_only(database_url: str) -> None:
    db, config = seeded(database_url)
    try:
        later = NOW + dt.timedelta(days=60)  # QN-0001 closed 60 days ago, QN-0002 10 days ago
        before = snapshot(db)
        dry = purge(db, config, now=later, dry_run=True)
        assert (dry.cases, dry.messages) == (1, 1)
        assert snapshot(db)["raws"] == before["raws"]

        result = purge(db, config, now=later)
        assert (result.cases, result.messages) == (1, 1)
        after = snapshot(db)
        purged = after["cases"]["QN-0001"]
        assert all(getattr(purged, name) is None for name in PERSONAL_FIELDS)
        assert (purged.status, purged.outcome) == ("closed", "cleared")
        assert purged.closed_at is not None and purged.risk and purged.symptoms is not None
        assert after["raws"]["QN-0001"] == [None]
        # the anonymous history stays: every event, without the text staff wrote
        old_events = before["events"]["QN-0001"]
        new_events = after["events"]["QN-0001"]
        assert [e[:3] for e in new_events[:-1]] == [e[:3] for e in old_events]
        assert new_events[-1][:3] == ("purged", "closed", "closed")
        assert all("line" not in details and "note" not in details for *_, details in new_events)
        assert "Nguyễn Thị Hoa" not in json.dumps(new_events, ensure_ascii=False, default=str)
        assert None in after["notes"] and not any("Hoa" in (n or "") for n in after["notes"])
        # the others are untouched
        for ref in ("QN-0002", "QN-0003"):
            kept, was = after["cases"][ref], before["cases"][ref]
            assert [getattr(kept, n) for n in PERSONAL_FIELDS] == [
                getattr(was, n) for n in PERSONAL_FIELDS
            ]
            assert after["raws"][ref] == before["raws"][ref] and None not in after["raws"][ref]
            assert after["events"][ref] == before["events"][ref]
        assert after["cases"]["QN-0002"].full_name == PEOPLE[1][1]
        # counts are kept; a second run does nothing more
        with db.session(read_only=True) as session:
            assert session.scalar(select(func.count()).select_from(Case)) == 3
            assert session.scalar(select(func.count()).select_from(Message)) == 3
        again = purge(db, config, now=later)
        assert again.total == 0
        assert snapshot(db)["events"] == after["events"]
        # once QN-0002 has been closed long enough, it goes too
        assert purge(db, config, now=later + dt.timedelta(days=25)).cases == 1
    finally:
        db.dispose()


def test_the_daemon_purges_at_start_and_daily_when_retention_is_set(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    db, config = seeded(url)
    unset = Daemon(retention_config(url, None), db)
    unset.start()
    try:
        assert unset.scheduler.get_job(RETENTION_JOB) is None
    finally:
        unset.stop()
    daemon = Daemon(config, db)  # the real clock: the cases were closed in 2020
    daemon.start()
    try:
        job = daemon.scheduler.get_job(RETENTION_JOB)
        assert job is not None and job.trigger.interval == dt.timedelta(days=1)
        deadline = time.monotonic() + 15
        while snapshot(db)["cases"]["QN-0001"].full_name is not None:
            assert time.monotonic() < deadline, "the daemon did not purge"
            time.sleep(0.1)
    finally:
        daemon.stop()
        db.dispose()


def mailtracker(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize("days", [None, 1])
def test_purge_command(tmp_path: Path, days: int | None) -> None:
    path = tmp_path / "config.toml"
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    lines = [
        "[tracker]",
        f'database = "{url}"',
        'secret_key = "file:' + str(tmp_path / "secret") + '"',
        *([f"retention_days = {days}"] if days else []),
        "[[units]]",
        'id = "cdc"',
        'name = "Unit cdc"',
        'role = "lead"',
        f'staff = ["{EPI}"]',
    ]
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "secret").chmod(0o600)
    path.write_text("\n".join(lines), encoding="utf-8")
    db = open_database(url)
    config = retention_config(url)
    seed_cases(Ingestor(db, config), now=dt.datetime.now(dt.UTC) - dt.timedelta(days=5))
    apply(db, config, EPI, "QN-0001 clear", dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    db.dispose()
    if days is None:
        refused = mailtracker(path, "purge")
        assert refused.returncode == 2 and "retention_days" in refused.stderr
        dry = mailtracker(path, "purge", "--dry-run", "--days", "2")
    else:
        dry = mailtracker(path, "purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would purge" in dry.stdout and "1 case(s), 1 stored message(s)" in dry.stdout
    done = mailtracker(path, "purge", *(["--days", "2"] if days is None else []))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged") and "1 case(s)" in done.stdout
    shown = mailtracker(path, "case", "QN-0001", "--json")
    assert shown.returncode == 0, shown.stderr
    case = json.loads(shown.stdout)
    assert case["report"]["full_name"] is None and case["report"]["phone"] is None
    assert case["status"] == "closed" and case["history"][-1]["action"] == "purged"
    assert PEOPLE[0][1] not in shown.stdout
    listed = mailtracker(path, "cases", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 3
    again = mailtracker(path, "purge", *(["--days", "2"] if days is None else []))
    assert "0 case(s), 0 stored message(s)" in again.stdout
