"""Generated notification e-mails, shaped like the health-declaration app's, for IMAP tests."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime

FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Huỳnh", "Phan", "Võ", "Đặng")
MIDDLE = ("Văn", "Thị", "Hữu", "Minh", "Ngọc")
GIVEN = ("An", "Bình", "Chi", "Dũng", "Hà", "Khánh", "Lan", "Nam", "Phúc", "Tâm")


def person_name(number: int) -> str:
    """A distinct Vietnamese full name for each ``number`` below 400."""
    return (
        f"{FAMILY[number % len(FAMILY)]} {MIDDLE[(number // len(FAMILY)) % len(MIDDLE)]} "
        f"{GIVEN[(number // (len(FAMILY) * len(MIDDLE))) % len(GIVEN)]}"
    )


def report_id(number: int) -> str:
    return f"SKVN-2020-{7_000_000 + number:07d}"


def phone(number: int) -> str:
    return f"0905{number:06d}"


def notification(
    number: int,
    *,
    message_id: str | None = None,
    to: str = "cdc@example.org",
    body_extra: str = "",
) -> bytes:
    """One report about person ``number`` (name, phone and report id derived from it)."""
    message = EmailMessage()
    message["From"] = "Sức khỏe Việt Nam <no-reply@suckhoe.example.vn>"
    message["To"] = to
    message["Subject"] = f"Thông báo khai báo y tế {report_id(number)}"
    message["Date"] = format_datetime(
        dt.datetime(2020, 2, 12, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))
        + dt.timedelta(minutes=number)
    )
    message["Message-ID"] = message_id or f"<report-{number}@suckhoe.example.vn>"
    message.set_content(
        "Thông tin khai báo y tế:\n\n"
        f"Họ và tên: {person_name(number)}\n"
        f"Số điện thoại: {phone(number)}\n"
        "Năm sinh: 1985\n"
        "Giới tính: Nam\n"
        "Địa chỉ: Thôn 1, xã Tịnh Khê, huyện Sơn Tịnh, tỉnh Quảng Ngãi\n"
        "Triệu chứng: Sốt, ho\n"
        "Đi về từ: Vũ Hán, Trung Quốc\n"
        "Ngày về: 08/02/2020\n"
        f"Mã khai báo: {report_id(number)}\n" + body_extra
    )
    return message.as_bytes()
