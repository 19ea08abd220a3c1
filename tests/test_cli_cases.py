"""The ``cases``, ``case``, ``import``, ``reparse`` and ``db upgrade`` commands."""

from __future__ import annotations

import datetime as dt
import json
import mailbox
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from store_support import ENVIRON, HO_CHI_MINH, config_data, notification, personal_mail

from mailtracker.cli import main

ISO_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d")
CASE_KEYS = {
    "ref", "status", "outcome", "owner_unit", "units", "risk", "received_at", "verify_by",
    "period_start", "period_start_reason", "period_end", "next_followup_due", "report", "sources",
}  # fmt: skip
HISTORY_KEYS = {
    "at", "actor", "channel", "action", "from_status", "to_status", "message_id", "details",
}  # fmt: skip


def toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config.toml with units ``cdc`` (lead) and ``med`` (member) and a SQLite database."""
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    data = config_data("sqlite:///tracker.db")
    lines = ["[tracker]"] + [f"{k} = {toml_value(v)}" for k, v in data["tracker"].items()]
    lines += ["[smtp]"] + [f"{k} = {toml_value(v)}" for k, v in data["smtp"].items()]
    for unit in data["units"]:
        lines.append("[[units]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in unit.items() if k != "mailboxes"]
        for box in unit["mailboxes"]:
            lines.append("[[units.mailboxes]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in box.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(config_file: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["--config", str(config_file), *argv])
    return status, capsys.readouterr().out


def run_json(config_file: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out = run(config_file, capsys, *argv, "--json")
    assert status == 0
    return json.loads(out)


@pytest.fixture
def mail_dir(tmp_path: Path) -> Path:
    """Two notifications (one of them twice) and a personal message, as .eml files."""
    folder = tmp_path / "mail"
    folder.mkdir()
    recent = dt.datetime.now(HO_CHI_MINH).replace(microsecond=0)
    (folder / "1.eml").write_bytes(notification(report_id="SKVN-1", date=recent))
    (folder / "2.eml").write_bytes(
        notification(report_id="SKVN-2", name="Lê Văn Nam", phone="0912345678")
    )
    (folder / "3.eml").write_bytes(personal_mail())
    return folder


def test_import_then_cases_json(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(config_file, capsys, "import", str(mail_dir))
    assert status == 0
    assert "3 new message(s)" in out and "2 case(s) created" in out and "1 quarantined" in out
    cases = run_json(config_file, capsys, "cases")
    assert [case["ref"] for case in cases] == ["QN-0001", "QN-0002"]
    for case in cases:
        assert set(case) >= CASE_KEYS
        assert case["status"] == "new" and case["outcome"] is None
        assert case["owner_unit"] == "cdc" and case["units"] == ["cdc"]
        assert ISO_WITH_OFFSET.fullmatch(case["received_at"])
        assert ISO_WITH_OFFSET.fullmatch(case["verify_by"])
        received = dt.datetime.fromisoformat(case["received_at"])
        assert dt.datetime.fromisoformat(case["verify_by"]) - received == dt.timedelta(hours=24)
        assert case["period_start"] is None and case["period_end"] is None
        assert case["report"]["arrival_date"] == "2020-02-08"
        (source,) = case["sources"]
        assert source["mailbox"] == "import:cdc"
        assert ISO_WITH_OFFSET.fullmatch(source["received_at"])
    assert cases[1]["report"]["full_name"] == "Lê Văn Nam"
    assert cases[1]["report"]["report_id"] == "SKVN-2"
    assert cases[1]["received_at"] == "2020-02-12T08:00:00+07:00"


def test_case_json_has_the_history(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    run(config_file, capsys, "import", str(mail_dir / "1.eml"), "--unit", "med")
    case = run_json(config_file, capsys, "case", "qn1")
    assert case["ref"] == "QN-0001"
    assert case["units"] == ["cdc", "med"]
    assert [source["mailbox"] for source in case["sources"]] == ["import:cdc", "import:med"]
    assert [event["action"] for event in case["history"]] == ["created", "merged"]
    for event in case["history"]:
        assert set(event) == HISTORY_KEYS
        assert event["channel"] == "system"
        assert ISO_WITH_OFFSET.fullmatch(event["at"])
        assert event["message_id"] == case["sources"][0]["message_id"]
    assert case["history"][0]["to_status"] == "new"
    assert case["followups"] == []


def test_case_text_and_unknown_references(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    status, out = run(config_file, capsys, "case", "#2")
    assert status == 0
    assert out.startswith("QN-0002  new")
    assert "Lê Văn Nam" in out and "history:" in out and "created" in out
    assert run(config_file, capsys, "case", "QN-0099") == (1, "")
    assert run(config_file, capsys, "case", "not-a-ref") == (2, "")


def test_cases_filters(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    run(config_file, capsys, "import", str(mail_dir / "2.eml"), "--unit", "med")
    assert [c["ref"] for c in run_json(config_file, capsys, "cases", "--unit", "med")] == [
        "QN-0002"
    ]
    assert len(run_json(config_file, capsys, "cases", "--status", "new")) == 2
    assert run_json(config_file, capsys, "cases", "--status", "closed") == []
    # Report 2 was received in 2020: its verification is overdue. Report 1 arrived just now.
    assert [c["ref"] for c in run_json(config_file, capsys, "cases", "--overdue")] == ["QN-0002"]
    status, _ = run(config_file, capsys, "cases", "--unit", "nosuch")
    assert status == 2


def test_cases_table(config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    status, out = run(config_file, capsys, "cases")
    lines = out.splitlines()
    assert status == 0
    assert lines[0].split()[:3] == ["REF", "STATUS", "OWNER"]
    assert lines[1].split()[:3] == ["QN-0001", "new", "cdc"]
    assert "verify by" in lines[1]
    assert lines[-1] == "2 case(s)"


def test_import_mbox_and_maildir_with_dedupe(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = notification(report_id="SKVN-10", phone="0905000010")
    second = notification(report_id="SKVN-11", phone="0905000011", name="Trần Văn Bình")
    box = mailbox.mbox(tmp_path / "inbox.mbox")
    for raw in (first, second):
        box.add(raw)
    box.flush()
    maildir = mailbox.Maildir(tmp_path / "Maildir")
    maildir.add(second)
    maildir.add(notification(report_id="SKVN-12", phone="0905000012", name="Phan Thị Cúc"))
    assert run(config_file, capsys, "import", str(tmp_path / "inbox.mbox"))[0] == 0
    status, out = run(config_file, capsys, "import", str(tmp_path / "Maildir"))
    assert status == 0
    assert out.startswith("1 new message(s)")
    cases = run_json(config_file, capsys, "cases")
    assert [case["report"]["report_id"] for case in cases] == ["SKVN-10", "SKVN-11", "SKVN-12"]


def test_import_of_a_missing_path_fails_clearly(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_file), "import", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_reparse_duplicates_nothing(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    before = run_json(config_file, capsys, "cases")
    status, out = run(config_file, capsys, "reparse")
    assert status == 0 and out.startswith("3 message(s) to parse again")
    status, out = run(config_file, capsys, "reparse", "--quarantined")
    assert status == 0 and out.startswith("1 message(s) to parse again")
    after = run_json(config_file, capsys, "cases")
    assert after == before
    history = run_json(config_file, capsys, "case", "QN-0001")["history"]
    assert [event["action"] for event in history] == ["created"]


def test_db_upgrade_creates_a_private_database(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(config_file, capsys, "db", "upgrade")
    assert (status, out) == (0, "database schema is up to date\n")
    database = config_file.parent / "tracker.db"
    assert database.stat().st_mode & 0o077 == 0


def test_the_installed_command_prints_json(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, capsys, "import", str(mail_dir))
    result = subprocess.run(
        [sys.executable, "-m", "mailtracker", "--config", str(config_file), "cases", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**ENVIRON, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert [case["ref"] for case in json.loads(result.stdout)] == ["QN-0001", "QN-0002"]


def test_output_cut_short_by_the_reader_is_no_crash(
    config_file: Path, mail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, capsys, "import", str(mail_dir))[0] == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte (``cases | head``)
    try:
        writer = subprocess.run(
            [sys.executable, "-m", "mailtracker", "--config", str(config_file), "cases", "--json"],
            cwd=config_file.parent,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert writer.returncode == 1
    assert "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr


def test_db_copy_moves_every_case_and_its_history(
    config_file: Path,
    mail_dir: Path,
    tmp_path: Path,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(config_file, capsys, "import", str(mail_dir))[0] == 0
    assert (
        run(config_file, capsys, "apply", "--as", "staff@cdc.example.org", "QN-0001 monitor")[0]
        == 0
    )
    before = run_json(config_file, capsys, "cases")
    history = run_json(config_file, capsys, "case", "QN-0001")["history"]
    # An empty PostgreSQL database, or a SQLite file beside the source (which is tracker.db).
    target = database_url.replace("tracker.db", "moved.db")

    status, out = run(config_file, capsys, "db", "copy", "--to", target)
    assert status == 0
    assert "cases: 2 row(s)" in out and "messages: 3 row(s)" in out

    moved = tmp_path / "moved.toml"
    moved.write_text(
        config_file.read_text(encoding="utf-8").replace("sqlite:///tracker.db", target),
        encoding="utf-8",
    )
    assert run_json(moved, capsys, "cases") == before
    assert run_json(moved, capsys, "case", "QN-0001")["history"] == history
    later = mail_dir / "4.eml"
    later.write_bytes(notification(report_id="SKVN-4", name="Đỗ Thị Lan", phone="0913000004"))
    assert run(moved, capsys, "import", str(later))[0] == 0
    assert [case["ref"] for case in run_json(moved, capsys, "cases")] == [
        "QN-0001",
        "QN-0002",
        "QN-0003",
    ]

    status = main(["--config", str(config_file), "db", "copy", "--to", target])
    assert status == 1
    assert "already has rows" in capsys.readouterr().err
