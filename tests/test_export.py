"""``mailtracker export``: CSV and .xlsx of cases with their deadlines, no more personal data
than a digest carries."""

from __future__ import annotations

import csv
import datetime as dt
import io
import stat
import zipfile
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from openpyxl import load_workbook
from store_support import ENVIRON, HO_CHI_MINH, make_config, notification

from mailtracker.cli import main
from mailtracker.services.cases import CaseService
from mailtracker.services.export import Export, build_export, export_cases, to_csv, to_xlsx
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.queries import list_cases

NOW = dt.datetime(2020, 2, 12, 3, 0, tzinfo=dt.UTC)  # 10:00 in Quảng Ngãi


def with_id_number() -> bytes:
    """A notification carrying an ID number and an address, which no export may show."""
    message = EmailMessage()
    message["From"] = "Sức khỏe Việt Nam <thongbao@suckhoetoandan.vn>"
    message["To"] = "cdc-inbox@example.org"
    message["Subject"] = "[Sức khỏe Việt Nam] Thông báo trường hợp có nguy cơ"
    message["Date"] = format_datetime(dt.datetime(2020, 2, 12, 9, 0, tzinfo=HO_CHI_MINH))
    message["Message-ID"] = make_msgid(domain="suckhoetoandan.vn")
    message.set_content(
        "Mã khai báo: SKVN-EXP-2\n"
        "Họ và tên: Trần Văn Bình\n"
        "Số điện thoại: 0912 345 678\n"
        "CMND/CCCD: 212999888\n"
        "Địa chỉ: Thôn Phú Lộc, xã Tịnh Khê, huyện Sơn Tịnh, tỉnh Quảng Ngãi\n"
        "Triệu chứng: Sốt, ho\n"
        "Đi về từ: Vũ Hán, Trung Quốc\n"
        "Ngày về: 09/02/2020\n"
    )
    return message.as_bytes()


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """Two cases: QN-0001 received by cdc only, QN-0002 (with an ID number) by cdc and med,
    QN-0001 then put in home isolation."""
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    config = make_config(url)
    db = open_database(url)
    ingestor = Ingestor(db, config)
    first = notification(report_id="SKVN-EXP-1", address="12 Lê Lợi, phường Nghĩa Chánh")
    ingestor.import_messages("cdc", [("1.eml", first), ("2.eml", with_id_number())], now=NOW)
    ingestor.import_messages("med", [("2.eml", with_id_number())], now=NOW)
    ingestor.process_pending(now=NOW)
    with db.session() as session:
        outcome = CaseService(config).apply_line(
            session, "QN-1 home 08/02/2020", actor="staff@cdc.example.org", channel="cli", now=NOW
        )
    assert outcome.applied, outcome
    return db


def test_columns_values_and_filters(database: Database) -> None:
    config = make_config(str(database.url))
    with database.session(read_only=True) as session:
        table = export_cases(session, config, language="en")
        med = export_cases(session, config, unit="med")
        home = export_cases(session, config, status="home_isolation")
    assert table.headers[:3] == ("Ref", "Status", "Outcome")
    assert med.headers[:2] == ("Mã", "Trạng thái")  # the unit's language by default
    rows = [dict(zip(table.keys, row, strict=True)) for row in table.rows]
    assert [row["ref"] for row in rows] == ["QN-0001", "QN-0002"]
    first, second = rows
    assert first["status"] == "home_isolation" and first["owner_unit"] == "cdc"
    assert first["period_start"] == dt.date(2020, 2, 8)
    assert first["period_end"] == dt.date(2020, 2, 22)
    assert first["verify_by"] is None
    assert first["next_followup_due"] is not None
    assert second["full_name"] == "Trần Văn Bình" and second["phone"] == "0912345678"
    assert second["commune"] == "Tịnh Khê" and second["district"] == "Sơn Tịnh"
    assert second["risk"] == "high" and second["status"] == "new"
    # an imported message counts as received at its Date (09:00 +07:00), exported as local time
    assert second["received_at"] == dt.datetime(2020, 2, 12, 9, 0)
    assert second["verify_by"] == second["received_at"] + dt.timedelta(hours=24)
    assert [row[0] for row in med.rows] == ["QN-0002"]
    assert [row[0] for row in home.rows] == ["QN-0001"]


def test_no_id_number_or_address_anywhere(database: Database) -> None:
    config = make_config(str(database.url))
    with database.session(read_only=True) as session:
        table = export_cases(session, config)
        stored = {case.ref: (case.id_number, case.address) for case in list_cases(session)}
    assert stored["QN-0002"][0] == "212999888"  # the data is there, and stays out
    for data in (to_csv(table), to_xlsx(table)):
        assert b"212999888" not in data
    text = to_csv(table).decode("utf-8-sig")
    assert "Phú Lộc" not in text and "Lê Lợi" not in text
    workbook = load_workbook(io.BytesIO(to_xlsx(table)))
    values = [str(cell) for row in workbook.active.iter_rows(values_only=True) for cell in row]
    assert not any("212999888" in value or "Phú Lộc" in value for value in values)


def test_csv_is_utf8_with_bom_for_excel(database: Database) -> None:
    config = make_config(str(database.url))
    with database.session(read_only=True) as session:
        data = to_csv(export_cases(session, config, language="vi"))
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0][0] == "Mã" and "Họ tên" in rows[0] and "Theo dõi tiếp trước" in rows[0]
    assert rows[1][0] == "QN-0001" and rows[2][0] == "QN-0002"
    assert "Trần Văn Bình" in rows[2]
    header = rows[0]
    assert rows[1][header.index("Kết thúc")] == "2020-02-22"
    assert rows[2][header.index("Nhận lúc")] == "2020-02-12 09:00"
    assert data.count(b"\r\n") == 3


def test_xlsx_header_frozen_panes_and_real_dates(database: Database) -> None:
    config = make_config(str(database.url))
    with database.session(read_only=True) as session:
        table = export_cases(session, config, language="en")
    sheet = load_workbook(io.BytesIO(to_xlsx(table))).active
    assert [cell.value for cell in sheet[1]] == list(table.headers)
    assert all(cell.font.bold for cell in sheet[1])
    assert sheet.freeze_panes == "B2"
    column = {header: index for index, header in enumerate(table.headers)}
    first = sheet[2]
    end = first[column["Period end"]]
    assert end.is_date and end.value.date() == dt.date(2020, 2, 22)
    assert end.number_format == "yyyy-mm-dd"
    received = sheet[3][column["Received"]]
    assert received.is_date and received.value == dt.datetime(2020, 2, 12, 9, 0)
    assert received.number_format == "yyyy-mm-dd hh:mm"
    assert sheet[3][column["Phone"]].data_type == "s"  # a phone stays text, leading zero kept
    assert sheet[3][column["Phone"]].value == "0912345678"


def test_formulas_stay_text() -> None:
    table = Export(
        keys=("ref", "full_name", "phone"),
        headers=("Ref", "Name", "Phone"),
        rows=(("QN-0007", '=HYPERLINK("http://x","y")', "0905"),),
    )
    assert b"'=HYPERLINK" in to_csv(table)
    sheet = load_workbook(io.BytesIO(to_xlsx(table))).active
    # In the workbook a text cell is never run: the value is kept exactly as written.
    assert sheet["B2"].data_type == "s"
    assert sheet["B2"].value == '=HYPERLINK("http://x","y")'
    formulas = zipfile.ZipFile(io.BytesIO(to_xlsx(table))).read("xl/worksheets/sheet1.xml")
    assert b"<f>" not in formulas


def test_build_export_without_personal_data(database: Database) -> None:
    config = make_config(str(database.url))
    with database.session(read_only=True) as session:
        cases = list_cases(session)
        table = build_export(cases, config.tracker.timezone, language="en", personal=False)
    assert not {"full_name", "phone", "commune", "district"} & set(table.keys)
    assert "Trần Văn Bình" not in to_csv(table).decode("utf-8-sig")
    assert [row[0] for row in table.rows] == ["QN-0001", "QN-0002"]


def test_cli_writes_a_private_file(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[tracker]\ndatabase = "{database.url}"\nsecret_key = "env:MT_TEST_SECRET"\n'
        '[[units]]\nid = "cdc"\nname = "CDC"\nrole = "lead"\n'
        '[[units]]\nid = "med"\nname = "Med"\nrole = "member"\n',
        encoding="utf-8",
    )
    output = tmp_path / "cases.xlsx"
    status = main(
        [
            "--config",
            str(config_file),
            "export",
            "--format",
            "xlsx",
            "--unit",
            "med",
            "-o",
            str(output),
        ]
    )
    assert status == 0
    assert "1 case(s) written" in capsys.readouterr().err
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    sheet = load_workbook(output).active
    assert [row[0] for row in sheet.iter_rows(min_row=2, values_only=True)] == ["QN-0002"]
    assert main(["--config", str(config_file), "export", "--format", "csv", "--unit", "nope"]) == 2
    status = main(["--config", str(config_file), "export", "--format", "csv", "--status", "new"])
    assert status == 0
    out = capsys.readouterr().out
    assert "QN-0002" in out and "QN-0001" not in out
