"""Any bytes at all give a valid, JSON-serialisable ParsedMessage, fast."""

from __future__ import annotations

import base64
import io
import json
import os
import time
import unicodedata
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtracker.parsing.message import ParsedMessage, parse_message

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SAMPLES = sorted(CORPUS.glob("*/*.eml")) if CORPUS.is_dir() else []
FUZZ = settings(
    max_examples=int(os.environ.get("MAILTRACKER_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_MESSAGE = 5.0


def check(raw: bytes) -> ParsedMessage:
    started = time.monotonic()
    parsed = parse_message(raw)
    assert time.monotonic() - started < SECONDS_PER_MESSAGE
    assert isinstance(parsed, ParsedMessage)
    assert parsed.kind in {"notification", "reply", "auto", "bounce", "unknown"}
    document = parsed.to_json("fuzz.eml")
    json.dumps(document, ensure_ascii=False).encode("utf-8")
    assert set(document) == {"file", "kind", "reports", "commands"}
    assert (parsed.kind == "notification") == bool(parsed.reports)
    if parsed.kind != "reply":
        assert parsed.commands == ()
    assert "\n" not in parsed.subject and "\r" not in parsed.subject
    assert parsed.date is None or parsed.date.tzinfo is not None
    return parsed


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text_with_headers(body: str) -> None:
    check(
        ("Content-Type: multipart/mixed; boundary=x\r\nSubject: =?x?q?" + body).encode(
            "utf-8", "surrogatepass"
        )
    )


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """A corpus file with byte flips, truncations, insertions and deletions."""
    buffer = bytearray(draw(st.sampled_from(SAMPLES)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(len(buffer) - 1, 0)))
        if operation == "flip" and buffer:
            buffer[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del buffer[position:]
        elif operation == "insert":
            buffer[position:position] = draw(
                st.binary(min_size=1, max_size=64)
                | st.sampled_from(
                    [
                        b"\r\n--",
                        b"\n\n",
                        b"=?utf-8?b?",
                        b"Content-Type: multipart/mixed;",
                        b"=\n",
                        b"\xff\xfe",
                        b"<table><tr><td>",
                        b"H\xe1\xbb\x8d t\xc3\xaan: ",
                    ]
                )
            )
        elif buffer:
            del buffer[position : position + draw(st.integers(1, 256))]
    return bytes(buffer)


@pytest.mark.skipif(not SAMPLES, reason=f"sample corpus not found at {CORPUS}")
@FUZZ
@given(mutated_samples())
def test_mutated_corpus(raw: bytes) -> None:
    check(raw)


def test_deeply_nested_multipart_finishes_fast() -> None:
    depth = 100
    lines = ["From: a@example.org", "Subject: nested", "MIME-Version: 1.0"]
    for level in range(depth):
        lines += [f'Content-Type: multipart/mixed; boundary="b{level}"', "", f"--b{level}"]
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Họ và tên: Nguyễn Văn An",
        "Số điện thoại: 0905123456",
        "",
    ]
    for level in reversed(range(depth)):
        lines.append(f"--b{level}--")
    parsed = check("\r\n".join(lines).encode("utf-8"))
    assert parsed.kind == "unknown"
    assert parsed.error and "nesting" in parsed.error


def test_many_forwarded_layers_are_bounded() -> None:
    inner = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nHo va ten: A\r\nSDT: 0905123456\r\n"
    for _ in range(60):
        inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
    check(b"Subject: fwd\r\n" + inner)


def _zip_bomb_xlsx() -> bytes:
    """A valid-looking workbook whose sheet inflates to ~200 MB of repeated rows."""
    row = b'<row><c t="inlineStr"><is><t>Nguyen Van An</t></is></c></row>'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(b"<worksheet><sheetData>")
            chunk = row * 10000
            for _ in range(200_000_000 // len(chunk)):
                sheet.write(chunk)
            sheet.write(b"</sheetData></worksheet>")
    return buffer.getvalue()


def _mail_with_attachment(name: str, content_type: str, data: bytes) -> bytes:
    encoded = base64.encodebytes(data)
    return (
        b"From: epi@example.org\r\nSubject: danh sach\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
        b"Content-Type: text/plain\r\n\r\nxem file\r\n--zz\r\n"
        + f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
        + encoded
        + b"\r\n--zz--\r\n"
    )


def test_zip_bomb_xlsx_is_refused_fast() -> None:
    bomb = _zip_bomb_xlsx()
    assert len(bomb) < 2_000_000
    parsed = check(
        _mail_with_attachment(
            "ds.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", bomb
        )
    )
    assert parsed.kind == "unknown"
    assert parsed.error and "xlsx" in parsed.error


def test_large_binary_attachment_is_cheap() -> None:
    blob = bytes(range(256)) * (30_000_000 // 256)
    parsed = check(_mail_with_attachment("scan.pdf", "application/pdf", blob))
    assert parsed.kind == "unknown"


def test_garbage_xlsx_and_csv_attachments() -> None:
    for name, ctype, data in [
        ("a.xlsx", "application/octet-stream", b"PK\x03\x04 not really a zip"),
        ("a.xlsx", "application/octet-stream", b"\x00" * 1000),
        ("a.csv", "text/csv", b"\xff\xfe\x00\x00" + os.urandom(2000)),
        ("a.csv", "text/csv", b'"unterminated,' * 100),
    ]:
        parsed = check(_mail_with_attachment(name, ctype, data))
        assert parsed.kind == "unknown"


# -- charsets, encodings and field normalisation ---------------------------------------------

REPORT_LINES = "Họ và tên: Nguyễn Văn An\nSố điện thoại: 0905123456\nĐi về từ: Vũ Hán\n"


def _plain(body: bytes, charset: str, encoding: str = "8bit", subject: bytes = b"x") -> bytes:
    return (
        b"From: a@example.org\r\nSubject: " + subject + b"\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body
    )


@pytest.mark.parametrize(
    "raw",
    [
        _plain(REPORT_LINES.encode() + b"\xff\xfe\xc3(\xa0\xa1\n", "utf-8"),
        _plain(REPORT_LINES.encode(), "x-unknown-charset"),
        _plain(REPORT_LINES.encode(), '"utf-8"; format=flowed; delsp'),
        _plain(REPORT_LINES.encode("utf-16"), "utf-8"),
        _plain(REPORT_LINES.encode(), "utf-7"),
        _plain(REPORT_LINES.encode(), "utf-8", subject=b"=?x-unknown?B?////?= =?utf-8?Q?=FF=FE?="),
        _plain(REPORT_LINES.encode(), "utf-8", subject=b"\xff\xfe raw 8-bit \xc3\x28"),
        _plain(REPORT_LINES.encode(), "utf-8", encoding="x-uuencode"),
        _plain(b"=E1=BB=\n=ZZ" + REPORT_LINES.encode(), "utf-8", encoding="quoted-printable"),
    ],
    ids=[
        "invalid-utf8",
        "unknown-charset",
        "charset-garbage",
        "utf16-labelled-utf8",
        "utf7",
        "bad-encoded-words",
        "8bit-header",
        "unknown-transfer-encoding",
        "broken-quoted-printable",
    ],
)
def test_invalid_utf8_and_charsets_never_crash(raw: bytes) -> None:
    parsed = check(raw)
    for report in parsed.reports:
        for value in (report.full_name, report.phone, report.came_from):
            assert value is None or value == value.strip()


def test_unknown_charset_still_reads_utf8_reports() -> None:
    parsed = check(_plain(REPORT_LINES.encode(), "x-unknown-charset"))
    assert [report.full_name for report in parsed.reports] == ["Nguyễn Văn An"]


VALUES = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters=":\r\n"), max_size=40
)


@FUZZ
@given(name=VALUES, address=VALUES, came_from=VALUES)
def test_report_text_is_nfc_without_control_characters(
    name: str, address: str, came_from: str
) -> None:
    body = (
        f"Họ và tên: {name}\nSố điện thoại: 0905123456\nĐịa chỉ: {address}\nĐi về từ: {came_from}\n"
    )
    parsed = check(_plain(body.encode("utf-8"), "utf-8"))
    for report in parsed.reports:
        for value in (report.full_name, report.address, report.came_from):
            if value is None:
                continue
            assert value == unicodedata.normalize("NFC", value)
            assert value == value.strip() and "  " not in value
            assert not any(unicodedata.category(ch) == "Cc" for ch in value), repr(value)
