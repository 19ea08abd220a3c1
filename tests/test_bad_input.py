"""Hostile input through the real pipeline: HTML, script, header injection, terminal escapes and
spreadsheet formulas in every report field, escaped in every output (digest, alert,
acknowledgement, export, the ``case`` and ``cases`` commands); oversize mail through a real
poll; attachment names with path tricks; any bytes at all through ingest."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import io
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import openpyxl
import pytest
from fault_support import INBOX, check_invariants, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailgen import notification
from reply_support import EPI, NOW, SECRET, config_data, reply
from servers import ImapServer
from smtp_capture import SmtpCapture
from sqlalchemy import select
from test_parse_fuzz import SAMPLES, _mail_with_attachment, mutated_samples

from mailtracker.cli import main as cli_main
from mailtracker.config import config_from_dict
from mailtracker.services.alerts import queue_high_risk_alerts
from mailtracker.services.digest import DigestService
from mailtracker.services.export import export_cases, to_csv, to_xlsx
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import open_database
from mailtracker.store.models import Case, Message, OutboxMessage

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ESCAPE = "\x1b]0;owned\x07\x1b[2J"
INJECTED = "x@example.org\r\nBcc: evil@example.org"
FORMULA = '=HYPERLINK("http://evil.example","x")'


def hostile_notification() -> bytes:
    """A high-risk report whose every text field carries script, escapes or a formula."""
    fields = {
        "Mã khai báo": f"SKVN-666 {SCRIPT}",
        "Họ và tên": f"Nguyễn {SCRIPT} {ESCAPE}",
        "Số điện thoại": "0905 666 777",
        "CMND": f"21266 {SCRIPT}",
        "Địa chỉ": f"{FORMULA} {SCRIPT}",
        "Xã": f"{FORMULA}",
        "Huyện": f"{SCRIPT}",
        "Tỉnh": f"{ESCAPE}{SCRIPT}",
        "Triệu chứng": "Sốt, ho",
        "Đi về từ": f"Vũ Hán {SCRIPT}",
        "Tiếp xúc": f"{SCRIPT}",
    }
    message = EmailMessage()
    message["From"] = "Sức khỏe Việt Nam <thongbao@suckhoetoandan.vn>"
    message["To"] = "cdc-inbox@example.org"
    message["Subject"] = f"Thông báo {SCRIPT}"
    message["Date"] = "Fri, 14 Feb 2020 07:00:00 +0700"
    message["Message-ID"] = "<hostile@suckhoetoandan.vn>"
    message.set_content("\n".join(f"{label}: {value}" for label, value in fields.items()))
    return message.as_bytes()


def read(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def problems_in_mail(raw: bytes) -> list[str]:
    """Hostile text that reached a header, raw into HTML, or an escape into the text."""
    found = []
    message = read(raw)
    for name, value in message.items():
        text = str(value)
        if any(bad in text for bad in ("<script", "evil@", "\x1b", "Nguyễn", "onerror")):
            found.append(f"header {name}: {text!r}")
    if "Bcc" in message:
        found.append("a Bcc header")
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        content = part.get_content()
        if "\x1b" in content or "\x07" in content:
            found.append(f"control character in {part.get_content_type()}")
        if part.get_content_subtype() == "html" and ("<script" in content or "<img" in content):
            found.append("raw HTML from a report in the HTML part")
    return found


@pytest.mark.timeout(60)
def test_hostile_report_fields_are_escaped_in_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    data = config_data(url)
    config = config_from_dict(data, environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": "pw"})
    db = open_database(url)
    ingestor = Ingestor(db, config, reply_handler=ReplyService(config))
    ingestor.import_messages("cdc", [("hostile", hostile_notification())], now=NOW)
    ingestor.process_pending(now=NOW)
    with db.session() as session:
        assert queue_high_risk_alerts(session, config, NOW) == ["QN-0001"]
        case = session.scalars(select(Case)).one()
        assert "\x1b" not in (case.full_name or "") and "<script>" in (case.full_name or "")
    assert DigestService(config, db).send("cdc", NOW.date(), NOW)
    alert_raw = next(row.raw for row in _outbox(db) if row.dedup_key.startswith("alert:"))
    answer = reply(
        alert_raw,
        f"check 36,8 {SCRIPT}{ESCAPE}\nnote {SCRIPT} {INJECTED}\nQN-0001 {SCRIPT}",
        sender=EPI,
        date=NOW + dt.timedelta(minutes=5),
    )
    ingestor.import_messages("cdc", [("reply", answer)], now=NOW + dt.timedelta(minutes=5))
    ingestor.process_pending(now=NOW + dt.timedelta(minutes=5))
    outgoing = _outbox(db)
    assert sorted(row.dedup_key.split(":")[0] for row in outgoing) == ["ack", "alert", "digest"]
    for row in outgoing:
        html = read(row.raw).get_body(("html",))
        if not row.dedup_key.startswith("ack:"):  # acknowledgements are plain text
            assert html is not None and "&lt;script&gt;" in html.get_content(), row.dedup_key
        assert problems_in_mail(row.raw) == [], row.dedup_key
    # export: formulas neutralised in CSV and xlsx
    with db.session(read_only=True) as session:
        table = export_cases(session, config)
    db.dispose()
    csv_text = to_csv(table).decode("utf-8-sig")
    assert "'=HYPERLINK" in csv_text and ",=HYPERLINK" not in csv_text
    sheet = openpyxl.load_workbook(io.BytesIO(to_xlsx(table))).active
    assert sheet is not None
    cells = [cell for row in sheet.iter_rows() for cell in row]
    assert all(cell.data_type != "f" for cell in cells)
    assert any(str(cell.value).startswith("=HYPERLINK") and cell.data_type == "s" for cell in cells)
    # the command line: no control character reaches the terminal
    config_file = _config_file(tmp_path, url)
    for args in (["case", "QN-0001"], ["cases"], ["case", "QN-0001", "--json"]):
        assert cli_main(["--config", str(config_file), *args]) == 0
        shown = capsys.readouterr().out
        assert "\x1b" not in shown and "\x07" not in shown, args
        assert "Nguyễn" in shown


def _outbox(db: object) -> list[OutboxMessage]:
    from mailtracker.store.db import Database

    assert isinstance(db, Database)
    with db.session(read_only=True) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _config_file(tmp_path: Path, url: str) -> Path:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "secret").chmod(0o600)
    path = tmp_path / "config.toml"
    path.write_text(
        "\n".join(
            [
                "[tracker]",
                f'database = "{url}"',
                f'secret_key = "file:{tmp_path / "secret"}"',
                "[[units]]",
                'id = "cdc"',
                'name = "Unit cdc"',
                'role = "lead"',
                f'staff = ["{EPI}"]',
            ]
        ),
        encoding="utf-8",
    )
    return path


# -- oversize mail through a real poll -----------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_oversize_message_is_kept_as_metadata_and_quarantined_by_a_real_poll(
    tmp_path: Path, dovecot: ImapServer, smtp_server: SmtpCapture
) -> None:
    limit = 64 * 1024
    config, env = write_config(
        tmp_path, dovecot, smtp_server.port, extra_tracker=[f"max_message_bytes = {limit}"]
    )
    huge = notification(1, to=INBOX, body_extra="x" * (limit + 1000) + "\n")
    small = notification(2, to=INBOX)
    dovecot.append(INBOX, huge)
    dovecot.append(INBOX, small)
    command = [sys.executable, "-m", "mailtracker", "--config", str(config)]
    run_env = {**os.environ, **env}
    polled = subprocess.run(
        [*command, "poll", "--once"], capture_output=True, text=True, env=run_env, cwd=ROOT
    )
    assert polled.returncode == 0, polled.stderr
    assert "over the size limit" in polled.stderr
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    db = open_database(url, upgrade=False)
    try:
        with db.session(read_only=True) as session:
            rows = list(session.scalars(select(Message).order_by(Message.uid)))
            refs = list(session.scalars(select(Case.report_id)))
    finally:
        db.dispose()
    big, normal = rows
    assert big.raw is None and big.quarantined and big.processed_at is not None
    assert big.size >= limit and big.message_id == "report-1@suckhoe.example.vn"
    assert big.error and str(limit) in big.error
    assert normal.raw is not None and not normal.quarantined
    assert refs == ["SKVN-2020-7000002"]
    digest = subprocess.run(
        [*command, "digest", "--unit", "cdc", "--dry-run"],
        capture_output=True,
        text=True,
        env=run_env,
        cwd=ROOT,
    )
    assert digest.returncode == 0, digest.stderr
    assert "Thư chưa đọc được" in digest.stdout and str(limit) in digest.stdout
    assert check_invariants(url, []) == []


# -- attachment names ------------------------------------------------------------------------


TRICKS = [
    "../../../../tmp/mt-owned.csv",
    "/tmp/mt-owned-abs.csv",
    "..\\..\\mt-owned-win.csv",
    "mt-owned\x00.csv",
    "./.bashrc.csv",
    "CON.csv",
]


def test_attachment_names_with_path_tricks_are_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attachments are read in memory: nothing is created, whatever their names say."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    config = config_from_dict(
        config_data(url), environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": "pw"}
    )
    db = open_database(url)
    before_tmp = set(os.listdir("/tmp"))
    before_here = {str(p) for p in tmp_path.rglob("*")}
    rows = "Họ và tên,Số điện thoại,Mã khai báo\nLê Văn Tám,0905888999,SKVN-888\n"
    mails = [
        (name, _mail_with_attachment(name, "text/csv", rows.encode("utf-8"))) for name in TRICKS
    ]
    ingestor = Ingestor(db, config)
    ingestor.import_messages("cdc", mails, now=NOW)
    result = ingestor.process_pending(now=NOW)
    db.dispose()
    assert result.processed == len(TRICKS) and result.failed == 0
    assert len(result.created) + len(result.merged) == len(TRICKS)  # every list was read
    created_tmp = {name for name in set(os.listdir("/tmp")) - before_tmp if "owned" in name}
    created_here = {str(p) for p in tmp_path.rglob("*")} - before_here
    assert created_tmp == set()
    assert {Path(p).name for p in created_here} <= {"tracker.db-wal", "tracker.db-shm"}
    assert not any("owned" in p or "bashrc" in p for p in created_here)


# -- any bytes through ingest --------------------------------------------------------------


INGEST_FUZZ = settings(
    max_examples=max(10, int(os.environ.get("MAILTRACKER_FUZZ_EXAMPLES", "200")) // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


HOSTILE = st.sampled_from([hostile_notification()])
MAIL = st.one_of(st.binary(max_size=2048), HOSTILE, *([mutated_samples()] if SAMPLES else []))


@INGEST_FUZZ
@given(raws=st.lists(MAIL, min_size=1, max_size=4))
def test_any_bytes_are_stored_and_processed_never_lost(
    tmp_path_factory: pytest.TempPathFactory, raws: list[bytes]
) -> None:
    directory = tmp_path_factory.mktemp("ingest-fuzz")
    url = f"sqlite:///{directory / 'tracker.db'}"
    config = config_from_dict(
        config_data(url), environ={"MT_TEST_SECRET": SECRET, "MT_TEST_IMAP": "pw"}
    )
    db = open_database(url)
    ingestor = Ingestor(db, config, reply_handler=ReplyService(config))
    stored = ingestor.import_messages("cdc", [(str(n), raw) for n, raw in enumerate(raws)], now=NOW)
    result = ingestor.process_pending(now=NOW)
    db.dispose()
    assert stored == len({raw.replace(b"\r\n", b"\n") for raw in raws})
    assert result.failed == 0
    assert check_invariants(url, []) == []
