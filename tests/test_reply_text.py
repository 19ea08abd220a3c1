"""The new text of a reply: quoted mail, quote headers and signatures are cut away."""

from __future__ import annotations

import datetime

import pytest

from mailtracker.domain.commands import parse_reply
from mailtracker.parsing.reply import MARKER, extract_reply_text, html_to_text

COMMANDS = "QN-0043 cách ly tại nhà 10/02/2020\nQN-44 theo dõi"

DIGEST = """\
Bản tin ngày 14/02/2020 - Trung tâm Kiểm soát bệnh tật tỉnh Quảng Ngãi

QUÁ HẠN (2)
QN-0041  Trần Văn Bảo  0905 000 141  Tịnh Khê  chưa xác minh, hạn 13/02 09:10
QN-0045  Lê Thị Cúc  0905 000 143  Nghĩa Lộ  theo dõi trễ 1 ngày

Cập nhật bằng cách trả lời thư này, mỗi dòng một lệnh, ví dụ:
QN-0043 home
QN-0044 check 37.8 ho nhẹ
QN-0045 clear"""


def quoted(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines())


def reply(*parts: str) -> str:
    return "\n".join(parts)


GMAIL_VI = reply(
    "Chào anh chị,",
    "",
    COMMANDS,
    "",
    "Vào Th 6, 14 thg 2, 2020 lúc 07:00 Mailtracker QN <tracker@example.org> đã viết:",
    "",
    quoted(MARKER + "\n\n" + DIGEST),
)
GMAIL_VI_WRAPPED = reply(
    COMMANDS,
    "",
    "Vào Th 6, 14 thg 2, 2020 lúc 07:00 Mailtracker QN Trung tâm Kiểm soát bệnh tật <",
    "tracker@example.org> đã viết:",
    "",
    MARKER,
    DIGEST,
)
GMAIL_EN = reply(
    "Hi,",
    COMMANDS,
    "Thanks",
    "",
    "On Fri, Feb 14, 2020 at 7:00 AM Mailtracker QN <tracker@example.org> wrote:",
    "",
    DIGEST,
)
GMAIL_EN_WRAPPED = reply(
    COMMANDS,
    "",
    "On Fri, Feb 14, 2020 at 7:00 AM Mailtracker QN - Trung tam Kiem soat benh tat",
    "<tracker@example.org> wrote:",
    DIGEST,
)
OUTLOOK_DESKTOP_EN = reply(
    COMMANDS,
    "",
    "Trân trọng,",
    "",
    "-----Original Message-----",
    "From: Mailtracker QN <tracker@example.org>",
    "Sent: Friday, February 14, 2020 7:00 AM",
    "To: epi@example.org",
    "Subject: [QN] Bản tin 14/02/2020",
    "",
    DIGEST,
)
OUTLOOK_DESKTOP_VI = reply(
    COMMANDS,
    "",
    "-----Thư gốc-----",
    "Từ: Mailtracker QN <tracker@example.org>",
    "Đã gửi: Thứ Sáu, 14 tháng 2, 2020 7:00 SA",
    "Đến: epi@example.org",
    "Chủ đề: [QN] Bản tin 14/02/2020",
    "",
    DIGEST,
)
OUTLOOK_WEB_EN = reply(
    COMMANDS,
    "",
    "________________________________",
    "From: Mailtracker QN <tracker@example.org>",
    "Sent: Friday, February 14, 2020 7:00 AM",
    "To: duty@example.org",
    "Subject: [QN] Bản tin 14/02/2020",
    "",
    MARKER,
    "",
    DIGEST,
)
OUTLOOK_WEB_VI = reply(
    COMMANDS,
    "",
    "Từ: Mailtracker QN <tracker@example.org>",
    "Đã gửi: 14 tháng 2, 2020 7:00",
    "Đến: duty@example.org",
    "Chủ đề: [QN] Bản tin 14/02/2020",
    "",
    DIGEST,
)
OUTLOOK_BOLD_ONE_LINE = reply(
    COMMANDS,
    "*From:* Mailtracker QN <tracker@example.org> *Sent:* Friday, February 14, 2020 7:00 AM",
    DIGEST,
)
APPLE_EN = reply(
    COMMANDS,
    "",
    "Sent from my iPhone",
    "",
    "On 14 Feb 2020, at 10:20, Mailtracker QN <tracker@example.org> wrote:",
    "",
    quoted(MARKER + "\n" + DIGEST),
)
APPLE_VI = reply(
    COMMANDS,
    "",
    "Gửi từ iPhone của tôi",
    "",
    "Vào lúc 10:20, ngày 14 thg 2, 2020, Mailtracker QN <tracker@example.org> đã viết:",
    "",
    quoted(DIGEST),
)
APPLE_VI_NO_DEVICE_LINE = reply(
    COMMANDS,
    "Vào lúc 10:20, ngày 14 thg 2, 2020, Mailtracker QN <tracker@example.org> đã viết:",
    quoted(DIGEST),
)
MARKER_UNQUOTED = reply(COMMANDS, "", MARKER, "", DIGEST)
MARKER_QUOTED_ONLY = reply(COMMANDS, quoted(MARKER), DIGEST)
MARKER_WRAPPED = reply(
    COMMANDS,
    "-- Trả lời phía trên dòng này / Reply above",
    "this line --",
    DIGEST,
)
MARKER_REFORMATTED = reply(COMMANDS, "TRA LOI PHIA TREN DONG NAY / REPLY ABOVE THIS LINE", DIGEST)
MARKER_HALF_WRAPPED = reply(COMMANDS, "-- Trả lời phía trên dòng", "này / Reply above this line --")
SIGNATURE = reply(COMMANDS, "-- ", "Lê Văn Dũng", "Trực dịch - CDC Quảng Ngãi", "QN-0099 clear")
SIGNATURE_NO_SPACE = reply(COMMANDS, "--", "Lê Văn Dũng", "QN-0099 clear")
QUOTED_LINES = reply(COMMANDS, quoted(DIGEST))
CRLF = reply(COMMANDS, "", MARKER, DIGEST).replace("\n", "\r\n")


PLAIN_REPLIES = {
    "gmail-vi": GMAIL_VI,
    "gmail-vi-wrapped": GMAIL_VI_WRAPPED,
    "gmail-en": GMAIL_EN,
    "gmail-en-wrapped": GMAIL_EN_WRAPPED,
    "outlook-desktop-en": OUTLOOK_DESKTOP_EN,
    "outlook-desktop-vi": OUTLOOK_DESKTOP_VI,
    "outlook-web-en": OUTLOOK_WEB_EN,
    "outlook-web-vi": OUTLOOK_WEB_VI,
    "outlook-bold-one-line": OUTLOOK_BOLD_ONE_LINE,
    "apple-en": APPLE_EN,
    "apple-vi": APPLE_VI,
    "apple-vi-no-device-line": APPLE_VI_NO_DEVICE_LINE,
    "marker-unquoted": MARKER_UNQUOTED,
    "marker-quoted-only": MARKER_QUOTED_ONLY,
    "marker-wrapped": MARKER_WRAPPED,
    "marker-reformatted": MARKER_REFORMATTED,
    "marker-half-wrapped": MARKER_HALF_WRAPPED,
    "signature": SIGNATURE,
    "signature-no-space": SIGNATURE_NO_SPACE,
    "quoted-lines": QUOTED_LINES,
    "crlf": CRLF,
}


@pytest.mark.parametrize("body", PLAIN_REPLIES.values(), ids=PLAIN_REPLIES.keys())
def test_plain_replies_keep_only_the_new_text(body: str) -> None:
    text = extract_reply_text(body, None)
    assert COMMANDS in text
    assert "QN-0041" not in text and "QN-0045" not in text and "QN-0099" not in text
    assert "tracker@example.org" not in text
    assert "Reply above" not in text and "Trả lời phía trên" not in text


@pytest.mark.parametrize(
    "device_line",
    [
        "Sent from my iPhone",
        "Sent from my Samsung Galaxy smartphone.",
        "Sent from Mail for Windows",
        "Get Outlook for Android",
        "Gửi từ iPhone của tôi",
        "Gửi từ điện thoại Samsung Galaxy",
        "Gửi từ thiết bị di động",
    ],
)
def test_device_lines_end_the_new_text(device_line: str) -> None:
    assert extract_reply_text(reply(COMMANDS, "", device_line, "QN-0099 clear"), None) == COMMANDS


def test_exact_cut_keeps_greeting_and_thanks() -> None:
    assert extract_reply_text(GMAIL_EN, None) == "Hi,\n" + COMMANDS + "\nThanks"
    assert extract_reply_text(OUTLOOK_DESKTOP_EN, None) == COMMANDS + "\n\nTrân trọng,"
    assert extract_reply_text(APPLE_VI, None) == COMMANDS


def test_quoted_digest_references_are_never_commands() -> None:
    today = datetime.date(2020, 2, 14)
    for body in (GMAIL_VI, OUTLOOK_WEB_EN, APPLE_EN, MARKER_UNQUOTED):
        parsed = parse_reply(
            extract_reply_text(body, None), subject="Re: [QN] Bản tin", prefix="QN", today=today
        )
        assert [command.ref for command in parsed.commands] == ["QN-0043", "QN-0044"]
        assert parsed.errors == ()


def test_words_like_the_headers_inside_the_new_text_are_kept() -> None:
    body = reply(
        "QN-0043 ghi chú từ: 10/02 chị ấy ở nhà",
        "QN-44 ghi chú On site visit done",
        "Vào ngày mai sẽ gọi lại",
        "QN-45 ghi chú gửi từ trạm y tế xã Tịnh Khê hôm qua, đã xác minh đủ thông tin",
        "QN-46 ghi chú 1 -- 2",
        "Gửi từ trạm y tế xã Tịnh Khê",
        "Sent from the district office",
    )
    assert extract_reply_text(body, None) == body


GMAIL_HTML = (
    '<div dir="ltr"><div>QN-0043 cách ly tại nhà 10/02/2020</div><div>QN-44&nbsp;theo dõi</div>'
    "<div><br></div><div>Em cảm ơn!</div></div><br>"
    '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">Vào Th 7, 15 thg 2, 2020 lúc '
    '07:00 Mailtracker QN &lt;<a href="mailto:tracker@example.org">tracker@example.org</a>&gt; '
    'đã viết:<br></div><blockquote class="gmail_quote" style="margin:0px"><div>'
    + MARKER
    + "<br>"
    + DIGEST.replace("\n", "<br>\n")
    + "</div></blockquote></div>"
)
GMAIL_HTML_SIGNATURE = (
    '<div dir="ltr"><div>QN-0043 cách ly tại nhà 10/02/2020</div><div>QN-44 theo dõi</div>'
    '<br clear="all"><div><br></div>-- <br><div class="gmail_signature"><div>Lê Văn Dũng</div>'
    "<div>QN-0099 clear</div></div></div>"
)
OUTLOOK_WEB_HTML = (
    "<html><head><style>p {margin:0}</style></head><body>"
    '<div style="font-family:Calibri">QN-0043 cách ly tại nhà 10/02/2020</div>'
    '<div style="font-family:Calibri">QN-44 theo dõi</div>'
    '<div id="appendonsend"></div><hr style="display:inline-block;width:98%">'
    '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Mailtracker QN '
    "&lt;tracker@example.org&gt;<br><b>Sent:</b> Friday, February 14, 2020 7:00 AM<br>"
    "<b>Subject:</b> [QN] Bản tin</font><div>&nbsp;</div></div>"
    "<div><p>" + DIGEST.replace("\n", "</p><p>") + "</p></div></body></html>"
)
OUTLOOK_DESKTOP_HTML_VI = (
    '<html><body><div class="WordSection1"><p class="MsoNormal">QN-0043 cách ly tại nhà '
    '10/02/2020<o:p></o:p></p><p class="MsoNormal">QN-44 theo dõi<o:p></o:p></p>'
    '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in">'
    '<p class="MsoNormal"><b>Từ:</b> Mailtracker QN &lt;tracker@example.org&gt;<br>'
    "<b>Đã gửi:</b> Thứ Sáu, 14 tháng 2, 2020 7:00 SA<br><b>Đến:</b> epi@example.org</p></div>"
    '<p class="MsoNormal">' + DIGEST.replace("\n", "<br>") + "</p></div></body></html>"
)
APPLE_HTML = (
    '<html><body dir="auto"><div>QN-0043 cách ly tại nhà 10/02/2020</div><div>QN-44 theo dõi'
    '</div><div><br><blockquote type="cite">On 14 Feb 2020, at 10:20, Mailtracker QN wrote:'
    '<br><br></blockquote></div><blockquote type="cite"><div>'
    + DIGEST.replace("\n", "<br>")
    + "</div></blockquote></body></html>"
)


@pytest.mark.parametrize(
    "html",
    [GMAIL_HTML, GMAIL_HTML_SIGNATURE, OUTLOOK_WEB_HTML, OUTLOOK_DESKTOP_HTML_VI, APPLE_HTML],
    ids=["gmail", "gmail-signature", "outlook-web", "outlook-desktop-vi", "apple"],
)
def test_html_only_replies_keep_only_the_new_text(html: str) -> None:
    text = extract_reply_text(None, html)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[:2] == ["QN-0043 cách ly tại nhà 10/02/2020", "QN-44 theo dõi"]
    assert "QN-0041" not in text and "QN-0045" not in text and "QN-0099" not in text
    assert "tracker@example.org" not in text


def test_html_keeps_line_breaks_and_text_after_the_commands() -> None:
    lines = [line.strip() for line in html_to_text(GMAIL_HTML).splitlines() if line.strip()]
    assert lines == ["QN-0043 cách ly tại nhà 10/02/2020", "QN-44 theo dõi", "Em cảm ơn!"]


def test_plain_is_preferred_and_empty_plain_falls_back_to_html() -> None:
    assert extract_reply_text("QN-1 ok", GMAIL_HTML) == "QN-1 ok"
    assert "QN-44" in extract_reply_text(" \n", GMAIL_HTML)


@pytest.mark.parametrize(("plain", "html"), [(None, None), ("", ""), ("", None), (None, " ")])
def test_no_body_is_no_text(plain: str | None, html: str | None) -> None:
    assert extract_reply_text(plain, html) == ""


def test_a_reply_that_is_only_quote_is_empty() -> None:
    assert extract_reply_text(quoted(MARKER + "\n" + DIGEST), None) == ""
    assert extract_reply_text("\n\n" + MARKER + "\n" + DIGEST, None) == ""
