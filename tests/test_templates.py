"""Digest, alert and acknowledgement templates: both languages, marker, escaping, redaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from bs4 import BeautifulSoup

from mailtracker.domain.digest import (
    CaseSnapshot,
    DigestModel,
    EventSnapshot,
    QuarantinedMail,
    build_digest,
)
from mailtracker.domain.notices import AckLine, AckModel, AlertModel
from mailtracker.parsing.reply import MARKER, extract_reply_text
from mailtracker.render import RenderedMail, render_ack, render_alert, render_digest

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = dt.datetime(2020, 2, 14, 0, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
EVIL = 'Nguyễn <script>alert("x")</script> & "Bé"\r\n-- Reply above this line --\r\nQN-0099 clear'


@dataclasses.dataclass(frozen=True)
class Unit:
    id: str
    name: str
    role: str
    language: str


def digest(language: str, role: str = "lead", name: str = "Nguyễn Văn An") -> DigestModel:
    cases = [
        CaseSnapshot(
            "QN-0042", "new", None, "cdc", name, "0905123456", "Tịnh Khê",
            NOW - 30 * HOUR, NOW - 6 * HOUR, None, None, NOW - 30 * HOUR,
        ),
        CaseSnapshot(
            "QN-0043", "home_isolation", None, "cdc", "Trần Thị Bình", "0905000111", "Nghĩa Hành",
            NOW - 300 * HOUR, None, dt.date(2020, 2, 15), NOW + 3 * HOUR, NOW - 300 * HOUR,
        ),
        CaseSnapshot(
            "QN-0044", "monitoring", None, "cdc", "Lê Văn Cường", "0905000222", "Tịnh Sơn",
            NOW - 2 * HOUR, None, None, NOW + 20 * HOUR, NOW - 2 * HOUR,
        ),
    ]  # fmt: skip
    events = [
        EventSnapshot("QN-0044", NOW - HOUR, "epi@example.org", "monitor", "new", "monitoring")
    ]
    quarantined = [QuarantinedMail(NOW - 2 * HOUR, "cdc-inbox@example.org", "no report found")]
    unit = Unit("cdc", "CDC Quảng Ngãi", role, language)
    return build_digest(unit, cases, events, quarantined, now=NOW, tz=TZ, since=NOW - 24 * HOUR)


def alert(language: str, name: str = "Phạm Văn Dũng") -> AlertModel:
    return AlertModel(
        unit_name="CDC Quảng Ngãi",
        language=language,  # type: ignore[arg-type]
        ref="QN-0061",
        reason="symptoms",
        status="home_isolation",
        at=dt.datetime(2020, 2, 14, 8, 30, tzinfo=TZ),
        full_name=name,
        phone="0905333444",
        commune="Tịnh Khê",
        symptoms=("fever", "cough"),
        came_from="Vũ Hán",
        temperature=38.2,
        note="ho nhẹ",
    )


def visible_text(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    return (soup.body or soup).get_text(" ", strip=True)


def first_line(text: str) -> str:
    return text.splitlines()[0]


@pytest.mark.parametrize("language", ["vi", "en"])
def test_digest_renders_every_section_in_its_language(language: str) -> None:
    mail = render_digest(digest(language), prefix="QN")
    assert mail.html is not None
    expected = {
        "vi": ["Quá hạn xác minh", "Hết thời hạn ngày mai", "Mới từ bản tin trước",
               "Cần theo dõi hôm nay", "Thư chưa đọc được", "Thay đổi từ bản tin trước",
               "cách ly tại nhà"],
        "en": ["Verification overdue", "Period ends tomorrow", "New since the last digest",
               "Follow-up due today", "could not be read", "Changes since the last digest",
               "home isolation"],
    }[language]  # fmt: skip
    for text in (mail.text, visible_text(mail.html)):
        for label in expected:
            assert label in text, label
        for value in ("QN-0042", "Nguyễn Văn An", "0905123456", "Tịnh Khê", "15/02/2020"):
            assert value in text
        assert "QN-0042 home 10/02/2020" in text and "QN-0042 check 36,8" in text
    assert "14/02/2020 06:00" in mail.text  # the verify-by deadline, local time
    other = {"vi": "Verification overdue", "en": "Quá hạn xác minh"}[language]
    assert other not in mail.text


@pytest.mark.parametrize("language", ["vi", "en"])
def test_every_mail_starts_with_the_marker(language: str) -> None:
    ack = AckModel(
        language, "CDC", (AckLine("QN-42 home", True, "QN-0042", "home", "home_isolation"),)
    )  # type: ignore[arg-type]
    mails: list[RenderedMail] = [
        render_digest(digest(language), prefix="QN"),
        render_alert(alert(language), prefix="QN"),
        render_ack(ack, prefix="QN"),
    ]
    for mail in mails:
        assert first_line(mail.text) == MARKER
        if mail.html is not None:
            assert visible_text(mail.html).startswith(MARKER)


def test_html_is_single_column_inline_styled_and_self_contained() -> None:
    mail = render_digest(digest("vi"), prefix="QN")
    assert mail.html is not None
    soup = BeautifulSoup(mail.html, "html.parser")
    assert "max-width:640px" in mail.html
    assert soup.find("style") is None and soup.find("link") is None and soup.find("img") is None
    assert soup.find("script") is None
    assert "http://" not in mail.html and "https://" not in mail.html
    assert soup.find("meta", attrs={"name": "viewport"}) is not None


def test_script_in_a_name_is_escaped_in_html_and_flat_in_text() -> None:
    for mail in (
        render_digest(digest("vi", name=EVIL), prefix="QN"),
        render_alert(alert("en", name=EVIL), prefix="QN"),
    ):
        assert mail.html is not None
        assert "<script" not in mail.html
        assert "&lt;script&gt;" in mail.html
        soup = BeautifulSoup(mail.html, "html.parser")
        assert soup.find("script") is None
        assert '<script>alert("x")</script>' in soup.get_text()
        # In the text part the name stays on one line: it cannot forge a marker or a command line.
        lines = mail.text.splitlines()
        assert lines.count(MARKER) == 1
        assert not any(line.strip() == "QN-0099 clear" for line in lines)
        assert not any(line.strip() == "-- Reply above this line --" for line in lines)


def test_reply_quoting_the_digest_yields_only_the_new_text() -> None:
    mail = render_digest(digest("vi"), prefix="QN")
    reply = "QN-0042 home 10/02/2020\n\n" + mail.text
    assert extract_reply_text(reply, None).strip() == "QN-0042 home 10/02/2020"
    assert extract_reply_text(
        None, "<p>QN-0042 home 10/02/2020</p>" + (mail.html or "")
    ).strip() == ("QN-0042 home 10/02/2020")


def test_observer_digest_shows_no_personal_data() -> None:
    mail = render_digest(digest("vi", role="observer"), prefix="QN")
    assert mail.html is not None
    for text in (mail.text, visible_text(mail.html)):
        assert "QN-0042" in text
        for personal in ("Nguyễn Văn An", "0905123456", "Tịnh Khê", "Trần Thị Bình", "Nghĩa Hành"):
            assert personal not in text


@pytest.mark.parametrize(
    ("language", "subject", "words"),
    [
        ("vi", "[QN-0061] Cảnh báo: có triệu chứng khi theo dõi", ["sốt, ho", "38,2 °C", "Vũ Hán"]),
        ("en", "[QN-0061] Alert: symptoms at follow-up", ["fever, cough", "38.2 °C", "Vũ Hán"]),
    ],
)
def test_alert_names_the_case_and_keeps_names_out_of_the_subject(
    language: str, subject: str, words: list[str]
) -> None:
    mail = render_alert(alert(language), prefix="QN")
    assert mail.subject == subject
    assert "Phạm" not in mail.subject
    assert mail.html is not None
    for word in [*words, "Phạm Văn Dũng", "0905333444"]:
        assert word in mail.text
        assert word in visible_text(mail.html)


@pytest.mark.parametrize(
    ("language", "subject", "applied", "refused"),
    [
        ("vi", "[QN] Đã nhận: 1 áp dụng, 1 từ chối", "đã áp dụng", "từ chối: Chưa hết thời hạn"),
        ("en", "[QN] Received: 1 applied, 1 refused", "applied", "refused: Chưa hết thời hạn"),
    ],
)
def test_acknowledgement_lists_each_line(
    language: str, subject: str, applied: str, refused: str
) -> None:
    model = AckModel(
        language,  # type: ignore[arg-type]
        "CDC",
        (
            AckLine(
                "QN-42 home 10/02/2020",
                True,
                "QN-0042",
                "home",
                "home_isolation",
                dt.date(2020, 2, 24),
            ),
            AckLine("QN-43 release", False, "QN-0043", "release", reason="Chưa hết thời hạn"),
        ),
    )
    mail = render_ack(model, prefix="QN")
    assert mail.subject == subject
    assert mail.html is None
    text = mail.text
    assert "✓ QN-42 home 10/02/2020" in text and "24/02/2020" in text
    assert applied in text
    assert "✗ QN-43 release" in text and refused in text


def test_empty_acknowledgement_says_nothing_was_found() -> None:
    mail = render_ack(AckModel("en", "CDC", ()), prefix="QN")
    assert "No command was found" in mail.text
