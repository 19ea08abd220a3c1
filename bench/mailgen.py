"""Generated notification mail for the benchmarks, in the layouts of the sample corpus.

Every person has a distinct report id and phone number derived from one integer, so each
generated report opens a case of its own. About three quarters of the messages are labelled
lines (quoted-printable, base64, without diacritics, forwarded inline) and one quarter tables:
a two-column HTML table, a multi-row HTML table, an ``.xlsx`` or a ``.csv`` attachment.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import unicodedata
from collections.abc import Iterator
from email.charset import BASE64, QP, Charset
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime

from openpyxl import Workbook

FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Huỳnh", "Phan", "Võ", "Đặng", "Bùi", "Đỗ")
MIDDLE = ("Văn", "Thị", "Hữu", "Minh", "Ngọc", "Quang", "Thanh")
GIVEN = ("An", "Bình", "Chi", "Dũng", "Hà", "Khánh", "Lan", "Nam", "Phúc", "Tâm", "Sơn", "Vy")
COMMUNES = (
    ("xã Tịnh Khê", "huyện Sơn Tịnh"),
    ("phường Trần Phú", "TP Quảng Ngãi"),
    ("xã Nghĩa Trung", "huyện Tư Nghĩa"),
    ("xã Bình Trị", "huyện Bình Sơn"),
    ("xã Đức Lợi", "huyện Mộ Đức"),
)
SYMPTOMS = ("Sốt, ho", "Không", "Ho, đau họng", "Không có", "Mệt mỏi", "Sốt")
ORIGINS = ("Vũ Hán, Trung Quốc", "Quảng Châu, Trung Quốc", "Hàn Quốc", "")
SENDER = "Sức khỏe Việt Nam <thongbao@suckhoetoandan.vn>"
TZ = dt.timezone(dt.timedelta(hours=7))
START = dt.datetime(2020, 2, 10, 7, 0, tzinfo=TZ)
COLUMNS = (
    "Họ và tên",
    "Số điện thoại",
    "Năm sinh",
    "Giới tính",
    "Địa chỉ",
    "Triệu chứng",
    "Đi về từ",
    "Ngày về",
    "Mã khai báo",
)
PEOPLE_PER_TABLE = 3
LAYOUTS = (
    # (layout, weight out of 20): 15/20 labelled lines, 5/20 tables or attachments
    ("labels_qp", 6),
    ("labels_base64", 3),
    ("labels_ascii", 2),
    ("labels_upper", 1),
    ("forward_inline", 3),
    ("html_table", 2),
    ("html_multi", 1),
    ("xlsx", 1),
    ("csv", 1),
)
CYCLE = tuple(layout for layout, weight in LAYOUTS for _ in range(weight))
TABLE_LAYOUTS = frozenset({"html_table", "html_multi", "xlsx", "csv"})

_QP = Charset("utf-8")
_QP.body_encoding = QP
_B64 = Charset("utf-8")
_B64.body_encoding = BASE64


def person_name(number: int) -> str:
    family = FAMILY[number % len(FAMILY)]
    middle = MIDDLE[(number // len(FAMILY)) % len(MIDDLE)]
    given = GIVEN[(number // (len(FAMILY) * len(MIDDLE))) % len(GIVEN)]
    return f"{family} {middle} {given}"


def report_id(number: int) -> str:
    return f"SKVN-2020-{number:07d}"


def phone(number: int) -> str:
    """A distinct 10-digit mobile number (09x prefix) for ``number`` below 10**8."""
    return f"09{number:08d}"


def person(number: int) -> dict[str, str]:
    """The labelled fields of person ``number``."""
    commune, district = COMMUNES[number % len(COMMUNES)]
    origin = ORIGINS[number % len(ORIGINS)]
    arrival = (START - dt.timedelta(days=1 + number % 9)).strftime("%d/%m/%Y")
    fields = {
        "Họ và tên": person_name(number),
        "Số điện thoại": phone(number),
        "Năm sinh": str(1950 + number % 55),
        "Giới tính": "Nam" if number % 2 else "Nữ",
        "Địa chỉ": f"Thôn {1 + number % 9}, {commune}, {district}, tỉnh Quảng Ngãi",
        "Triệu chứng": SYMPTOMS[number % len(SYMPTOMS)],
        "Đi về từ": origin,
        "Ngày về": arrival if origin else "",
        "Mã khai báo": report_id(number),
    }
    return fields


def _fold_ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _label_lines(fields: dict[str, str], *, ascii_only: bool = False, upper: bool = False) -> str:
    lines = []
    for label, value in fields.items():
        if ascii_only:
            label, value = _fold_ascii(label), _fold_ascii(value)
        if upper:
            label = label.upper()
        lines.append(f"{label}: {value}")
    return "\n".join(lines)


INTRO = (
    "Hệ thống Sức khỏe Việt Nam thông báo trường hợp khai báo y tế có nguy cơ trên địa bàn "
    "tỉnh Quảng Ngãi như sau:\n\n"
)
OUTRO = (
    "\n\nĐề nghị đơn vị khẩn trương xác minh và xử lý theo hướng dẫn của Bộ Y tế.\n"
    "Trân trọng.\n\n--\nThư này được gửi tự động từ hệ thống Sức khỏe Việt Nam.\n"
)


def _headers(message: EmailMessage | MIMEMultipart | MIMEText, number: int, to: str) -> None:
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = "[Sức khỏe Việt Nam] Thông báo trường hợp có nguy cơ"
    message["Date"] = format_datetime(START + dt.timedelta(seconds=7 * number))
    message["Message-ID"] = f"<bench-{number}@suckhoetoandan.vn>"


def _text(body: str, charset: Charset) -> MIMEText:
    part = MIMEText("", "plain")
    part.set_payload(body, charset)
    return part


def _html_table(people: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(p[c])}</td>" for c in COLUMNS) + "</tr>\n"
        for p in people
    )
    return f"<table>\n<tr>{head}</tr>\n{rows}</table>"


def _html_page(inner: str) -> str:
    return (
        '<html><head><meta charset="utf-8"><style>td,th{border:1px solid #999}</style></head>'
        f"<body><p>{html.escape(INTRO)}</p>\n{inner}\n<p>{html.escape(OUTRO)}</p></body></html>"
    )


def _xlsx(people: list[dict[str, str]]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(list(COLUMNS))
    for p in people:
        sheet.append([p[c] for c in COLUMNS])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _csv(people: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for p in people:
        writer.writerow([p[c] for c in COLUMNS])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def notification(number: int, layout: str, to: str = "cdc-inbox@example.org") -> bytes:
    """One notification in ``layout`` about person ``number`` (tables: ``number`` and the
    next :data:`PEOPLE_PER_TABLE` - 1, except the two-column table, which holds one)."""
    fields = person(number)
    message: MIMEMultipart | MIMEText
    if layout in ("labels_qp", "labels_base64", "labels_ascii", "labels_upper"):
        body = INTRO + _label_lines(
            fields, ascii_only=layout == "labels_ascii", upper=layout == "labels_upper"
        )
        message = _text(body + OUTRO, _B64 if layout == "labels_base64" else _QP)
    elif layout == "forward_inline":
        forwarded = (
            "Anh/chị bên CDC xác minh giúp trường hợp này nhé.\n\n"
            "---------- Forwarded message ---------\n"
            f"From: {SENDER}\nDate: Mon, Feb 10, 2020 at 9:41 AM\n"
            "Subject: [Sức khỏe Việt Nam] Thông báo trường hợp có nguy cơ\n"
            "To: <soyte.quangngai@example.org>\n\n\n"
        )
        message = _text(forwarded + INTRO + _label_lines(fields) + OUTRO, _QP)
    elif layout == "html_table":
        rows = "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>\n"
            for k, v in fields.items()
        )
        message = MIMEText("", "html")
        message.set_payload(_html_page(f"<table>\n{rows}</table>"), _QP)
    else:
        people = [person(number + offset) for offset in range(PEOPLE_PER_TABLE)]
        if layout == "html_multi":
            message = MIMEText("", "html")
            message.set_payload(_html_page(_html_table(people)), _QP)
        else:
            message = MIMEMultipart("mixed")
            message.attach(_text("Danh sách các trường hợp trong file đính kèm.\nTrân trọng.", _QP))
            if layout == "xlsx":
                subtype, data, name = (
                    "vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    _xlsx(people),
                    "danh_sach.xlsx",
                )
            else:
                subtype, data, name = "octet-stream", _csv(people), "danh_sach.csv"
            attachment = MIMEApplication(data, subtype)
            if layout == "csv":
                attachment.replace_header("Content-Type", 'text/csv; charset="utf-8"')
            attachment.add_header("Content-Disposition", "attachment", filename=name)
            message.attach(attachment)
    _headers(message, number, to)
    return message.as_bytes()


def people_in(layout: str) -> int:
    """How many reports a message in ``layout`` carries."""
    return PEOPLE_PER_TABLE if layout in ("html_multi", "xlsx", "csv") else 1


def mailbox(
    count: int, *, first_person: int = 0, to: str = "cdc-inbox@example.org"
) -> Iterator[bytes]:
    """``count`` notifications cycling through the layouts, people numbered from
    ``first_person`` upwards without overlap."""
    number = first_person
    for index in range(count):
        layout = CYCLE[index % len(CYCLE)]
        yield notification(number, layout, to)
        number += people_in(layout)


def reports_in(count: int) -> int:
    """How many reports :func:`mailbox` puts in ``count`` messages."""
    return sum(people_in(CYCLE[index % len(CYCLE)]) for index in range(count))
