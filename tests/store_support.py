"""Test support for the store, ingest and case-listing tests: configs and messages.

The databases themselves come from the ``database_url`` fixture (tests/conftest.py): each test
that takes it runs twice, on a fresh SQLite file and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from mailtracker.config import Config, config_from_dict

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOTIFICATIONS = CORPUS / "notifications"
ENVIRON = {"MT_TEST_SECRET": "s3cret", "MT_TEST_IMAP": "imap-password"}
HO_CHI_MINH = dt.timezone(dt.timedelta(hours=7))


def config_data(database: str) -> dict[str, Any]:
    """A configuration with a lead unit ``cdc`` and a member unit ``med``, one mailbox each."""

    def unit(unit_id: str, role: str) -> dict[str, Any]:
        return {
            "id": unit_id,
            "name": f"Unit {unit_id}",
            "role": role,
            "staff": [f"staff@{unit_id}.example.org"],
            "digest_to": [f"staff@{unit_id}.example.org"],
            "mailboxes": [
                {
                    "host": "127.0.0.1",
                    "port": 1143,
                    "security": "none",
                    "username": f"{unit_id}-inbox@example.org",
                    "password": "env:MT_TEST_IMAP",
                }
            ],
        }

    return {
        "tracker": {"database": database, "secret_key": "env:MT_TEST_SECRET"},
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none", "from": "t@example.org"},
        "units": [unit("cdc", "lead"), unit("med", "member")],
    }


def make_config(database: str, *, max_message_bytes: int | None = None) -> Config:
    data = config_data(database)
    if max_message_bytes is not None:
        data["tracker"]["max_message_bytes"] = max_message_bytes
    return config_from_dict(data, environ=ENVIRON)


def notification(
    *,
    name: str = "Nguyễn Thị Hoa",
    phone: str = "0905 111 222",
    report_id: str | None = "SKVN-2020-0090001",
    address: str | None = None,
    symptoms: str = "Không",
    came_from: str | None = "Vũ Hán, Trung Quốc",
    arrival: str | None = "08/02/2020",
    date: dt.datetime | None = None,
    to: str = "cdc-inbox@example.org",
) -> bytes:
    """A notification e-mail in the app's labelled-lines layout."""
    lines = ["Hệ thống Sức khỏe Việt Nam thông báo trường hợp khai báo y tế có nguy cơ:", ""]
    if report_id is not None:
        lines.append(f"Mã khai báo: {report_id}")
    lines += [f"Họ và tên: {name}", "Năm sinh: 1980", "Giới tính: Nữ", f"Số điện thoại: {phone}"]
    if address is not None:
        lines.append(f"Địa chỉ: {address}")
    lines.append(f"Triệu chứng: {symptoms}")
    if came_from is not None:
        lines.append(f"Đi về từ: {came_from}")
    if arrival is not None:
        lines.append(f"Ngày về: {arrival}")
    message = EmailMessage()
    message["From"] = "Sức khỏe Việt Nam <thongbao@suckhoetoandan.vn>"
    message["To"] = to
    message["Subject"] = "[Sức khỏe Việt Nam] Thông báo trường hợp có nguy cơ"
    message["Date"] = format_datetime(date or dt.datetime(2020, 2, 12, 8, 0, tzinfo=HO_CHI_MINH))
    message["Message-ID"] = make_msgid(domain="suckhoetoandan.vn")
    message.set_content("\n".join(lines))
    return message.as_bytes()


def personal_mail() -> bytes:
    """Ordinary mail that is neither a notification nor a reply."""
    message = EmailMessage()
    message["From"] = "Friend <friend@example.net>"
    message["To"] = "cdc-inbox@example.org"
    message["Subject"] = "Lunch on Friday?"
    message["Date"] = format_datetime(dt.datetime(2020, 2, 12, 9, 0, tzinfo=HO_CHI_MINH))
    message["Message-ID"] = make_msgid(domain="example.net")
    message.set_content("Shall we have lunch on Friday at noon?")
    return message.as_bytes()
