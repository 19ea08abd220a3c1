"""Layouts, labels, encodings and kinds the sample corpus does not show, built with ``email``."""

from __future__ import annotations

import datetime as dt
import io
import unicodedata
from email.message import EmailMessage
from email.policy import SMTP

import openpyxl
import pytest
from openpyxl.utils.datetime import CALENDAR_MAC_1904, WINDOWS_EPOCH, to_excel

from mailtracker.domain.reports import Report
from mailtracker.parsing.message import ParsedMessage, parse_message

APP = "Sức khỏe Việt Nam <thongbao@suckhoetoandan.vn>"
LINES = """Kính gửi: Trung tâm Kiểm soát bệnh tật

Ngày khai báo: 14/02/2020
Giới tính: Nữ
Số CMND/CCCD/Hộ chiếu: 212 345 678
Họ tên: Trần Thị Bích
Nghề nghiệp: Giáo viên
Nơi ở hiện nay: Thôn 3, xã Tịnh Khê, TP Quảng Ngãi, tỉnh Quảng Ngãi
Điện thoại: +84 905 111 222
Ngày sinh: 03/04/1990
Biểu hiện: đau họng, sổ mũi
Lịch trình di chuyển: Đà Nẵng
Ngày đến: 12/02/2020
Mã hồ sơ: HS-77

Trân trọng.
"""
EXPECTED = Report(
    full_name="Trần Thị Bích",
    phone="0905111222",
    birth_year=1990,
    gender="female",
    id_number="212345678",
    address="Thôn 3, xã Tịnh Khê, TP Quảng Ngãi, tỉnh Quảng Ngãi",
    commune="Tịnh Khê",
    district="Quảng Ngãi",
    province="Quảng Ngãi",
    symptoms=("sore_throat", "runny_nose"),
    came_from="Đà Nẵng",
    arrival_date=dt.date(2020, 2, 12),
    report_date=dt.date(2020, 2, 14),
    report_id="HS-77",
    risk="high",
)


def cp1258_form(text: str) -> str:
    """Text as Vietnamese Windows writes it in cp1258: base letters with combining tone marks."""
    tones = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}
    out = []
    for char in unicodedata.normalize("NFC", text):
        try:
            char.encode("cp1258")
            out.append(char)
        except UnicodeEncodeError:
            decomposed = unicodedata.normalize("NFD", char)
            base = "".join(mark for mark in decomposed if mark not in tones)
            tone = "".join(mark for mark in decomposed if mark in tones)
            out.append(unicodedata.normalize("NFC", base) + tone)
    return "".join(out)


def mail(
    subject: str = "[Sức khỏe Việt Nam] Thông báo", sender: str = APP, **headers: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "cdc-inbox@example.org"
    message["Subject"] = subject
    message["Date"] = "Fri, 14 Feb 2020 08:00:00 +0700"
    message["Message-ID"] = "<m1@example.org>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


def parse(message: EmailMessage) -> ParsedMessage:
    return parse_message(message.as_bytes(policy=SMTP))


def only_report(parsed: ParsedMessage) -> Report:
    assert parsed.kind == "notification", parsed.error
    assert len(parsed.reports) == 1
    return parsed.reports[0]


def test_other_labels_in_another_order() -> None:
    message = mail()
    message.set_content(LINES)
    assert only_report(parse(message)) == EXPECTED


def test_nfd_unaccented_and_bulleted_labels() -> None:
    text = "\n".join(
        "- "
        + (
            line.split(":")[0].upper()
            if index % 2
            else unicodedata.normalize("NFD", line.split(":")[0])
        )
        + ":"
        + line.split(":", 1)[1]
        for index, line in enumerate(LINES.splitlines()[2:-2])
    )
    message = mail()
    message.set_content(unicodedata.normalize("NFD", text))
    assert only_report(parse(message)) == EXPECTED


@pytest.mark.parametrize("charset", ["utf-8", "cp1258"])
@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_charsets_and_transfer_encodings(charset: str, cte: str) -> None:
    message = mail()
    message.set_content(cp1258_form(LINES), charset=charset, cte=cte)
    assert only_report(parse(message)) == EXPECTED


@pytest.mark.parametrize("encoding", ["utf-8", "cp1258"])
def test_eight_bit_without_charset(encoding: str) -> None:
    head = (
        b"From: thongbao@suckhoetoandan.vn\r\nSubject: tb\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    assert only_report(parse_message(head + cp1258_form(LINES).encode(encoding))) == EXPECTED


def test_two_people_as_label_blocks() -> None:
    message = mail()
    message.set_content("Họ và tên: A Một\nSĐT: 0905000001\n\nHọ và tên: B Hai\nSĐT: 0905000002\n")
    parsed = parse(message)
    assert [(r.full_name, r.phone) for r in parsed.reports] == [
        ("A Một", "0905000001"),
        ("B Hai", "0905000002"),
    ]


def test_wrapped_long_value_is_continued() -> None:
    message = mail()
    message.set_content(
        "Họ và tên: Nguyễn Văn An\n"
        "Địa chỉ: Thôn Phú Lộc Đông, khu dân cư số 4, gần chợ, xã Nghĩa Hà,\n"
        "TP Quảng Ngãi, tỉnh Quảng Ngãi\n"
        "Triệu chứng: Sốt\n"
    )
    report = only_report(parse(message))
    assert report.address == (
        "Thôn Phú Lộc Đông, khu dân cư số 4, gần chợ, xã Nghĩa Hà, TP Quảng Ngãi, tỉnh Quảng Ngãi"
    )
    assert (report.commune, report.district) == ("Nghĩa Hà", "Quảng Ngãi")


def two_column_html(label_tag: str) -> str:
    rows = "".join(
        f"<tr><{label_tag}>{line.split(':')[0]}</{label_tag}><td> {line.split(':', 1)[1]} </td>"
        f"<td>ghi chú</td></tr>"
        for line in LINES.splitlines()[2:-2]
    )
    return f"<html><body><p>Thông báo:</p><table border=1>{rows}</table></body></html>"


@pytest.mark.parametrize("label_tag", ["th", "td"])
def test_two_column_html_table_with_extra_column(label_tag: str) -> None:
    message = mail()
    message.set_content(two_column_html(label_tag), subtype="html")
    assert only_report(parse(message)) == EXPECTED


def test_html_labelled_lines_without_table_or_plain_part() -> None:
    html = (
        "<div>"
        + "<br>".join(
            f"<b>{line.split(':')[0]}:</b>{line.split(':', 1)[1]}" if ":" in line else line
            for line in LINES.splitlines()
        )
        + "</div>"
    )
    message = mail()
    message.set_content(html, subtype="html")
    assert only_report(parse(message)) == EXPECTED


HEADER = [
    "STT",
    "Mã hồ sơ",
    "Ho va ten",
    "SĐT",
    "Email",
    "Năm sinh",
    "Giới tính",
    "Địa chỉ",
    "Phường/Xã",
    "Huyện/Thành phố",
    "Tỉnh/Thành phố",
    "Biểu hiện",
    "Tiền sử tiếp xúc",
    "Về từ vùng dịch",
    "Ngày nhập cảnh",
    "Thời gian khai báo",
    "Mức độ nguy cơ",
]
ROWS = [
    [
        "1",
        "A-1",
        "Nguyễn Văn An",
        "0905 123 456",
        "an@example.com",
        "1985",
        "Nam",
        "Thôn 1",
        "xã Tịnh Khê",
        "TP Quảng Ngãi",
        "Quảng Ngãi",
        "Không",
        "",
        "Vũ Hán",
        "08/02/2020",
        "12/02/2020 10:00",
        "",
    ],
    [
        "2",
        "A-2",
        "Lê Thị Mai",
        "84356781204",
        "",
        "1991",
        "Nữ",
        "Tổ 7",
        "Phường Chánh Lộ",
        "",
        "",
        "ho, sốt",
        "F1 của ca bệnh",
        "",
        "",
        "12/02/2020",
        "Thấp",
    ],
]
EXPECTED_ROWS = [
    Report(
        full_name="Nguyễn Văn An",
        phone="0905123456",
        birth_year=1985,
        gender="male",
        address="Thôn 1",
        commune="Tịnh Khê",
        district="Quảng Ngãi",
        province="Quảng Ngãi",
        came_from="Vũ Hán",
        arrival_date=dt.date(2020, 2, 8),
        report_date=dt.date(2020, 2, 12),
        report_id="A-1",
        risk="medium",
    ),
    Report(
        full_name="Lê Thị Mai",
        phone="0356781204",
        birth_year=1991,
        gender="female",
        address="Tổ 7",
        commune="Chánh Lộ",
        symptoms=("fever", "cough"),
        contact="F1 của ca bệnh",
        report_date=dt.date(2020, 2, 12),
        report_id="A-2",
        risk="low",
    ),
]


def test_header_row_html_table_with_th_and_extra_columns() -> None:
    head = "".join(f"<th>{cell}</th>" for cell in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in ROWS)
    message = mail()
    message.set_content("Danh sách đính kèm trong bản HTML.")
    message.add_alternative(
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", subtype="html"
    )
    assert list(parse(message).reports) == EXPECTED_ROWS


@pytest.mark.parametrize(
    ("delimiter", "encoding"),
    [(";", "utf-8-sig"), (";", "cp1258"), ("\t", "utf-16"), (",", "utf-8"), ("|", "utf-8")],
)
def test_csv_attachment(delimiter: str, encoding: str) -> None:
    def quote(cell: str) -> str:
        return f'"{cell}"' if delimiter in cell or "," in cell else cell

    text = "\r\n".join(delimiter.join(quote(c) for c in row) for row in [HEADER, *ROWS])
    text = cp1258_form(text) if encoding == "cp1258" else text
    message = mail(subject="Danh sách", sender="epi@example.org")
    message.set_content("Gửi danh sách.")
    message.add_attachment(text.encode(encoding), maintype="text", subtype="csv", filename="ds.csv")
    assert list(parse(message).reports) == EXPECTED_ROWS


def xlsx_mail(rows: list[list[object]], *, epoch: dt.datetime = WINDOWS_EPOCH) -> EmailMessage:
    """A forward with ``rows`` as the one sheet of an ``.xlsx`` attachment."""
    workbook = openpyxl.Workbook()
    workbook.epoch = epoch
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    message = mail(subject="Fwd: danh sách", sender="epi@example.org")
    message.set_content("File đính kèm.")
    message.add_attachment(
        buffer.getvalue(), maintype="application", subtype="octet-stream", filename="danh sach.xlsx"
    )
    return message


def test_xlsx_attachment_with_title_row_dates_and_numbers() -> None:
    rows: list[list[object]] = [["DANH SÁCH NGƯỜI VỀ TỪ VÙNG DỊCH"], list(HEADER)]
    for row in ROWS:
        values: list[object] = list(row)
        values[5] = int(row[5])
        values[15] = dt.datetime(2020, 2, 12, 10, 0)
        values[3] = 905123456 if row[0] == "1" else row[3]
        rows.append(values)
    assert list(parse(xlsx_mail(rows)).reports) == EXPECTED_ROWS


@pytest.mark.parametrize("epoch", [WINDOWS_EPOCH, CALENDAR_MAC_1904])
def test_xlsx_dates_kept_as_plain_numbers_are_read_as_dates(epoch: dt.datetime) -> None:
    """A date column whose cells are numbers (not formatted as dates): Excel serials, counted
    from the workbook's own epoch."""
    rows: list[list[object]] = [list(HEADER)]
    for row in ROWS:
        values: list[object] = list(row)
        if row[14]:
            values[14] = int(to_excel(dt.datetime(2020, 2, 8), epoch))
        values[15] = to_excel(dt.datetime(2020, 2, 12, 10, 0), epoch)  # a float: with the time
        rows.append(values)
    assert list(parse(xlsx_mail(rows, epoch=epoch)).reports) == EXPECTED_ROWS


def test_attached_message_with_html_table() -> None:
    inner = mail()
    inner.set_content(two_column_html("td"), subtype="html")
    outer = mail(subject="Fwd: thông báo", sender="duty@example.org")
    outer.set_content("Chuyển anh chị.")
    outer.add_attachment(inner)
    parsed = parse(outer)
    assert only_report(parsed) == EXPECTED
    assert parsed.message_id == "m1@example.org"


def test_outlook_inline_forward_in_html_only() -> None:
    html = (
        "<p>Chuyển CDC.</p><div style='border-top:solid #E1E1E1 1.0pt'>"
        "<p><b>From:</b> Sức khỏe Việt Nam &lt;thongbao@suckhoetoandan.vn&gt;<br>"
        "<b>Sent:</b> Friday, February 14, 2020 7:52 AM<br><b>To:</b> nvy@example.org<br>"
        "<b>Subject:</b> Thông báo</p></div>"
        + "".join(f"<p>{line}</p>" for line in LINES.splitlines())
    )
    message = mail(subject="FW: Thông báo", sender="epi@example.org")
    message.set_content(html, subtype="html")
    assert only_report(parse(message)) == EXPECTED


def test_quoted_inline_forward() -> None:
    message = mail(subject="Fwd: Thông báo", sender="duty@example.org")
    message.set_content("Xem giúp.\n\n> " + "\n> ".join(LINES.splitlines()))
    assert only_report(parse(message)) == EXPECTED


def test_format_flowed_is_unwrapped() -> None:
    raw = (
        "From: thongbao@suckhoetoandan.vn\r\nSubject: tb\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
        "Họ và tên: Nguyễn Văn An\r\n"
        "Địa chỉ: Thôn 1, xã Tịnh Hà, \r\nhuyện Sơn Tịnh, tỉnh Quảng Ngãi\r\n"
    ).encode()
    report = only_report(parse_message(raw))
    assert report.address == "Thôn 1, xã Tịnh Hà, huyện Sơn Tịnh, tỉnh Quảng Ngãi"


# --- kinds -----------------------------------------------------------------------------------


def with_lines(**headers: str) -> EmailMessage:
    message = mail(**headers)
    message.set_content(LINES)
    return message


def plain(body: str = "Chào anh chị, chiều nay họp.", **headers: str) -> EmailMessage:
    message = mail(sender="someone@example.org", **headers)
    message.set_content(body)
    return message


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (plain(), "unknown"),
        (plain(subject="Re: lịch họp"), "reply"),
        (plain(subject="TL: lịch họp"), "reply"),
        (plain(subject="Trả lời: lịch họp"), "reply"),
        (plain(subject="AW: Termin"), "reply"),
        (plain(In_Reply_To="<digest.1@tracker>"), "reply"),
        (plain(References="<a@x> <b@y>"), "reply"),
        (plain(subject="Re: x", Auto_Submitted="auto-replied"), "auto"),
        (plain(subject="Re: x", Auto_Submitted="auto-generated"), "auto"),
        (plain(subject="Re: x", Auto_Submitted="no"), "reply"),
        (plain(subject="Re: x", Precedence="bulk"), "auto"),
        (plain(subject="Re: x", Precedence="junk"), "auto"),
        (plain(subject="Re: x", Precedence="list"), "auto"),
        (plain(subject="Re: x", List_Id="<bcd.lists.example.vn>"), "auto"),
        (plain(subject="Re: x", X_Autoreply="yes"), "auto"),
        (plain(subject="Re: x", X_Autorespond="yes"), "auto"),
        (plain(subject="Re: x", Return_Path="<>"), "auto"),
        (plain(subject="Automatic reply: Bản tin"), "auto"),
        (plain(subject="Out of Office: Bản tin"), "auto"),
        (plain(subject="Trả lời tự động: Bản tin"), "auto"),
        (with_lines(), "notification"),
        (with_lines(subject="Fwd: thông báo"), "notification"),
        (with_lines(subject="Re: thông báo", In_Reply_To="<x@y>"), "notification"),
        (with_lines(Auto_Submitted="auto-generated", Precedence="bulk"), "notification"),
        (with_lines(Auto_Submitted="auto-replied"), "auto"),
        (with_lines(X_Mailtracker_Loop="cdc"), "auto"),
    ],
)
def test_kinds(message: EmailMessage, kind: str) -> None:
    assert parse(message).kind == kind


def test_mailer_daemon_without_dsn_is_a_bounce() -> None:
    message = mail(subject="Delivery failure", sender="MAILER-DAEMON@mx.example.org")
    message.set_content("Your message could not be delivered.")
    assert parse(message).kind == "bounce"


def test_dsn_without_auto_submitted_is_a_bounce_even_with_a_report_inside() -> None:
    original = with_lines()
    message = mail(subject="Undeliverable", sender="postmaster@example.org")
    message.set_content("Delivery has failed.")
    message.add_attachment(original)
    message.set_type("multipart/report")
    message.set_param("report-type", "delivery-status")
    parsed = parse(message)
    assert parsed.kind == "bounce"
    assert parsed.reports == ()


def test_reply_quoting_tracker_mail_with_labels_is_not_a_notification() -> None:
    body = (
        "Đã gọi, ổn.\n\n-- Trả lời phía trên dòng này / Reply above this line --\n"
        "Cảnh báo QN-0061\nHọ và tên: Võ Thị Hạnh\nSố điện thoại: 0905000161\n"
        "Triệu chứng: sốt\n"
    )
    parsed = parse(plain(body, subject="Re: [QN-0061] Cảnh báo", In_Reply_To="<alert@t>"))
    assert parsed.kind == "reply"
    assert parsed.reports == ()


def test_header_facts() -> None:
    message = plain(subject="Re:  Bản\ttin", In_Reply_To="<a@x>", References="<b@y> <a@x>")
    message["Cc"] = "Trực ban <Duty@Example.org>, epi@example.org"
    message["Delivered-To"] = "CDC-inbox@example.org"
    parsed = parse(message)
    assert parsed.subject == "Re: Bản tin"
    assert parsed.sender == "someone@example.org"
    assert parsed.message_id == "m1@example.org"
    assert parsed.in_reply_to == ("a@x", "b@y")
    assert parsed.recipients == (
        "cdc-inbox@example.org",
        "duty@example.org",
        "epi@example.org",
    )
    assert parsed.date == dt.datetime(2020, 2, 14, 1, 0, tzinfo=dt.UTC)
    assert parsed.error is None


def test_missing_headers_are_none() -> None:
    parsed = parse_message(b"\r\n\r\nHello")
    assert (parsed.kind, parsed.message_id, parsed.sender, parsed.date) == (
        "unknown",
        None,
        None,
        None,
    )
    assert parsed.subject == ""
    assert parsed.recipients == () and parsed.in_reply_to == ()


def test_json_shape() -> None:
    document = parse(with_lines()).to_json("x.eml")
    assert list(document) == ["file", "kind", "reports", "commands"]
    assert document["reports"] == [EXPECTED.to_json()]
    assert document["commands"] == []


def test_value_on_the_line_after_its_label_and_marked_labels() -> None:
    html = (
        "<p><b>Họ và tên (*):</b></p><p>Nguyễn Văn An</p>"
        "<p><b>Số điện thoại (di động):</b></p><p>0905 123 456</p>"
        "<p>Tiếp xúc:</p><p>Đi về từ: Vũ Hán</p>"
    )
    message = mail()
    message.set_content(html, subtype="html")
    report = only_report(parse(message))
    assert (report.full_name, report.phone, report.contact, report.came_from) == (
        "Nguyễn Văn An",
        "0905123456",
        None,
        "Vũ Hán",
    )
