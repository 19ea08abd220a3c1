"""``mailtracker apply``: one command line as a staff member, end to end through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from store_support import ENVIRON, config_data, notification

from mailtracker.cli import main

LEAD = "staff@cdc.example.org"
MEMBER = "staff@med.example.org"
OBSERVER = "staff@obs.example.org"
LOCAL = ZoneInfo("Asia/Ho_Chi_Minh")


def toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Units ``cdc`` (lead, Vietnamese), ``med`` (member, English) and ``obs`` (observer), two
    cases received by ``cdc`` in February 2020, in a SQLite database beside the file."""
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    data = config_data("sqlite:///tracker.db")
    data["units"][1]["language"] = "en"
    data["units"].append(
        {"id": "obs", "role": "observer", "staff": [OBSERVER], "digest_to": [OBSERVER]}
    )
    lines = ["[tracker]"] + [f"{k} = {toml_value(v)}" for k, v in data["tracker"].items()]
    lines += ["[smtp]"] + [f"{k} = {toml_value(v)}" for k, v in data["smtp"].items()]
    for unit in data["units"]:
        lines.append("[[units]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in unit.items() if k != "mailboxes"]
        for box in unit.get("mailboxes", []):
            lines.append("[[units.mailboxes]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in box.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mail = tmp_path / "mail"
    mail.mkdir()
    (mail / "1.eml").write_bytes(notification(report_id="SKVN-1"))
    (mail / "2.eml").write_bytes(
        notification(report_id="SKVN-2", name="Lê Văn Nam", phone="0912345678")
    )
    assert main(["--config", str(path), "import", str(mail)]) == 0
    return path


def run(config_file: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["--config", str(config_file), *argv])
    return status, capsys.readouterr().out


def apply(
    config_file: Path, capsys: pytest.CaptureFixture[str], actor: str, line: str
) -> tuple[int, str]:
    return run(config_file, capsys, "apply", "--as", actor, line)


def test_an_operator_runs_a_case_from_new_to_closed(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apply(config_file, capsys, LEAD, "QN-1 home 10/02/2020") == (
        0,
        "đã áp dụng: QN-0001: cách ly tại nhà đến 24/02/2020\n",
    )
    status, out = apply(config_file, capsys, LEAD, "#1 check 36,8")
    assert status == 0 and out.startswith("đã áp dụng: QN-0001: theo dõi: bình thường, 36,8°C")
    # The period ended long ago (read against the current time): release is allowed.
    assert apply(config_file, capsys, LEAD, "qn1 kết thúc") == (
        0,
        "đã áp dụng: QN-0001: đã đóng (hoàn thành)\n",
    )
    status, out = apply(config_file, capsys, LEAD, "QN-0001 home")
    assert status == 1
    assert out.startswith("từ chối: QN-0001 đã đóng (released): không thể")

    status, out = run(config_file, capsys, "case", "QN-0001", "--json")
    assert status == 0
    case = json.loads(out)
    assert (case["status"], case["outcome"]) == ("closed", "released")
    assert (case["period_start"], case["period_start_reason"]) == ("2020-02-10", "command")
    assert case["closed_at"] is not None
    history = case["history"]
    assert [(e["action"], e["from_status"], e["to_status"]) for e in history] == [
        ("created", None, "new"),
        ("home", "new", "home_isolation"),
        ("check", "home_isolation", "home_isolation"),
        ("release", "home_isolation", "closed"),
        ("refused", "closed", "closed"),
    ]
    for event in history[1:]:
        assert (event["actor"], event["channel"], event["message_id"]) == (LEAD, "cli", None)
    assert history[1]["details"]["period_end"] == "2020-02-24"
    assert history[4]["details"]["code"] == "closed"
    (followup,) = case["followups"]
    assert (followup["result"], followup["temperature"], followup["channel"]) == (
        "ok",
        36.8,
        "cli",
    )


def test_refusals_exit_one_in_the_actors_language(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apply(config_file, capsys, MEMBER, "QN-1 home") == (
        1,
        "refused: QN-0001: unit med may only update its own cases; this one belongs to cdc\n",
    )
    status, out = apply(config_file, capsys, OBSERVER, "QN-1 clear")
    assert status == 1 and out.startswith("từ chối: QN-0001: đơn vị obs chỉ được xem")
    status, out = apply(config_file, capsys, "someone@example.net", "QN-1 clear")
    assert status == 1 and "someone@example.net" in out
    assert apply(config_file, capsys, LEAD, "QN-0042 clear") == (
        1,
        "từ chối: QN-0042: không có ca này\n",
    )
    status, out = apply(config_file, capsys, LEAD, "QN-2 home 31/02")
    assert status == 1 and out.startswith("từ chối: QN-0002: Không hiểu ngày")
    status, out = apply(config_file, capsys, LEAD, "QN-2 check")
    assert status == 1 and "không thể ghi nhận theo dõi" in out

    status, out = run(config_file, capsys, "cases", "--json")
    assert [case["status"] for case in json.loads(out)] == ["new", "new"]
    status, out = run(config_file, capsys, "case", "QN-1", "--json")
    refused = [e for e in json.loads(out)["history"] if e["action"] == "refused"]
    assert [(e["actor"], e["details"]["code"]) for e in refused] == [
        (MEMBER, "not_owner"),
        (OBSERVER, "observer"),
        ("someone@example.net", "not_staff"),
    ]


def test_relative_dates_are_read_against_the_current_time(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = dt.datetime.now(LOCAL).date()
    status, out = apply(config_file, capsys, LEAD, "QN-2 monitor hôm qua")
    after = dt.datetime.now(LOCAL).date()
    assert status == 0, out
    case = json.loads(run(config_file, capsys, "case", "QN-2", "--json")[1])
    start = dt.date.fromisoformat(case["period_start"])
    assert start in {before - dt.timedelta(days=1), after - dt.timedelta(days=1)}
    assert case["period_start_reason"] == "command"
    assert dt.date.fromisoformat(case["period_end"]) == start + dt.timedelta(days=14)


def test_transfer_and_overdue_listing(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both reports arrived in 2020: their verification is overdue.
    status, out = run(config_file, capsys, "cases", "--overdue", "--json")
    assert [case["ref"] for case in json.loads(out)] == ["QN-0001", "QN-0002"]
    assert apply(config_file, capsys, LEAD, "QN-1 transfer med")[0] == 0
    assert apply(config_file, capsys, MEMBER, "QN-1 clear")[0] == 0
    # A period that started today is neither over nor behind on its follow-ups.
    assert apply(config_file, capsys, LEAD, "QN-2 home hôm nay")[0] == 0
    status, out = run(config_file, capsys, "cases", "--overdue", "--json")
    assert json.loads(out) == []
    assert run(config_file, capsys, "cases", "--overdue")[0] == 0
    status, out = run(config_file, capsys, "cases", "--unit", "med", "--json")
    assert status == 0
    (case,) = json.loads(out)
    assert (case["ref"], case["owner_unit"], case["units"]) == ("QN-0001", "med", ["cdc", "med"])


def test_json_output_and_exit_status_in_a_separate_process(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [sys.executable, "-m", "mailtracker", "--config", str(config_file), "apply"]
    environment = {**os.environ, **ENVIRON}
    applied = subprocess.run(
        [*command, "--as", LEAD, "--json", "QN-2 check 38 sốt"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert applied.returncode == 1, applied.stderr  # a new case is not followed up yet
    outcome = json.loads(applied.stdout)
    assert (outcome["applied"], outcome["code"], outcome["ref"]) == (
        False,
        "not_allowed",
        "QN-0002",
    )
    assert outcome["status"] == "new" and outcome["alert"] is False
    subprocess.run([*command, "--as", LEAD, "QN-2 hospital"], env=environment, check=True)
    fever = subprocess.run(
        [*command, "--as", LEAD, "--json", "QN-2 check 38 sốt"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert fever.returncode == 0, fever.stderr
    outcome = json.loads(fever.stdout)
    assert (outcome["applied"], outcome["status"], outcome["alert"]) == (True, "hospital", True)
    assert outcome["message_en"].startswith("QN-0002: follow-up: symptoms, 38°C (alert); hospital")
    assert outcome["deadline"] is not None
