"""The reply grammar: references, every action alias, dates, temperatures, errors, whole replies."""

from __future__ import annotations

import datetime

import pytest

from mailtracker.domain.commands import (
    ALIASES,
    Command,
    LineError,
    ReplyParse,
    normalise_ref,
    parse_command_date,
    parse_command_line,
    parse_reply,
    subject_ref,
)

TODAY = datetime.date(2020, 2, 14)


def parse(line: str, default_ref: str | None = None, prefix: str = "QN") -> Command | LineError:
    result = parse_command_line(line, prefix=prefix, today=TODAY, default_ref=default_ref)
    assert result is not None
    return result


def command(line: str, default_ref: str | None = None, prefix: str = "QN") -> Command:
    result = parse(line, default_ref, prefix)
    assert isinstance(result, Command), result
    return result


def error(line: str, default_ref: str | None = None, prefix: str = "QN") -> LineError:
    result = parse(line, default_ref, prefix)
    assert isinstance(result, LineError), result
    return result


# --- references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("QN-0042", "QN-0042"),
        ("QN-42", "QN-0042"),
        ("QN42", "QN-0042"),
        ("#42", "QN-0042"),
        ("qn-0042", "QN-0042"),
        ("qn42", "QN-0042"),
        ("Qn-7", "QN-0007"),
        ("QN\u201342", "QN-0042"),
        ("  QN-42  ", "QN-0042"),
        ("QN-12345", "QN-12345"),
        ("#10000", "QN-10000"),
        ("QN-00042", "QN-0042"),
    ],
)
def test_normalise_ref_accepts_every_written_form(text: str, expected: str) -> None:
    assert normalise_ref(text, "QN") == expected


@pytest.mark.parametrize(
    "text", ["", "QN", "QN-", "#", "HN-0042", "QN-42a", "QN--42", "42", "QN-0", "#0", "Q N-42"]
)
def test_normalise_ref_refuses_what_is_not_a_reference(text: str) -> None:
    assert normalise_ref(text, "QN") is None


def test_normalise_ref_follows_the_configured_prefix() -> None:
    assert normalise_ref("dn-5", "DN") == "DN-0005"
    assert normalise_ref("#5", "dn") == "DN-0005"
    assert normalise_ref("QN-5", "DN") is None
    assert normalise_ref("A.B-5", "A.B") == "A.B-0005"
    assert normalise_ref("AxB-5", "A.B") is None


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: [QN-0061] Cảnh báo: người có triệu chứng", "QN-0061"),
        ("RE: [qn-61] Cảnh báo", "QN-0061"),
        ("Re: [QN] Bản tin 14/02/2020: 3 quá hạn, 5 mới", None),
        ("Re: QN-0042 and QN-0043", None),
        ("Re: QN-0042 again QN-42", "QN-0042"),
        ("Re: [QN-0061] Cảnh báo, tiếp xúc QN-0041", "QN-0061"),
        ("Re: [QN-0061] [QN-0062]", None),
        ("Fwd: về ca QN42", "QN-0042"),
        ("Re: AQN-0042", None),
        ("Re: QN-00421", "QN-0421"),
        ("", None),
    ],
)
def test_subject_ref_names_only_a_single_case(subject: str, expected: str | None) -> None:
    assert subject_ref(subject, "QN") == expected


@pytest.mark.parametrize("ref", ["QN-0042", "QN-42", "QN42", "#42", "qn-42", "qN42", "[QN-0042]"])
def test_every_reference_form_starts_a_command(ref: str) -> None:
    assert command(f"{ref} release") == Command("QN-0042", "release", {}, f"{ref} release")


def test_reference_may_carry_a_colon() -> None:
    assert command("QN-42: hospital").ref == "QN-0042"


# --- actions ----------------------------------------------------------------------------


ALL_ALIASES = [
    ("monitor", "monitor"),
    ("theo dõi", "monitor"),
    ("giám sát", "monitor"),
    ("home", "home"),
    ("cách ly tại nhà", "home"),
    ("cách ly nhà", "home"),
    ("facility", "facility"),
    ("cách ly tập trung", "facility"),
    ("hospital", "hospital"),
    ("chuyển viện", "hospital"),
    ("nhập viện", "hospital"),
    ("clear", "clear"),
    ("không nguy cơ", "clear"),
    ("loại trừ", "clear"),
    ("release", "release"),
    ("kết thúc", "release"),
    ("hoàn thành cách ly", "release"),
    ("positive", "positive"),
    ("dương tính", "positive"),
    ("transfer", "transfer"),
    ("chuyển", "transfer"),
    ("lost", "lost"),
    ("mất dấu", "lost"),
    ("check", "check"),
    ("ok", "check"),
    ("bình thường", "check"),
    ("missed", "missed"),
    ("không liên lạc được", "missed"),
    ("note", "note"),
    ("ghi chú", "note"),
]
NEEDS_ARGUMENT = {"transfer", "note"}
ARGLESS_ARGS = {
    "monitor": {"date": None},
    "home": {"date": None},
    "facility": {"date": None},
    "hospital": {},
    "clear": {"note": None},
    "release": {},
    "positive": {},
    "lost": {},
    "check": {"temperature": None, "note": None},
    "missed": {"note": None},
}


def test_the_alias_table_is_the_briefs() -> None:
    from mailtracker.domain.text import fold

    assert {fold(alias): action for alias, action in ALL_ALIASES} == ALIASES


@pytest.mark.parametrize(("alias", "action"), ALL_ALIASES)
@pytest.mark.parametrize("spelling", ["as_written", "upper", "folded", "nfd", "title"])
def test_every_alias_in_every_spelling(alias: str, action: str, spelling: str) -> None:
    import unicodedata

    from mailtracker.domain.text import fold

    written = {
        "as_written": alias,
        "upper": alias.upper(),
        "folded": fold(alias),
        "nfd": unicodedata.normalize("NFD", alias),
        "title": alias.title(),
    }[spelling]
    suffix = " Đà Nẵng" if action in NEEDS_ARGUMENT else ""
    result = command(f"QN-0042 {written}{suffix}")
    assert result.ref == "QN-0042"
    assert result.action == action
    if action not in NEEDS_ARGUMENT:
        assert result.args == ARGLESS_ARGS[action]


@pytest.mark.parametrize(("alias", "action"), ALL_ALIASES)
def test_every_alias_without_reference_applies_to_the_subject_case(alias: str, action: str) -> None:
    suffix = " Đà Nẵng" if action in NEEDS_ARGUMENT else ""
    result = command(f"{alias}{suffix}", default_ref="QN-0061")
    assert (result.ref, result.action) == ("QN-0061", action)


def test_longest_alias_wins() -> None:
    assert command("QN-1 chuyển viện").action == "hospital"
    assert command("QN-1 chuyển viện tỉnh").args == {}
    transfer = command("QN-1 chuyển Bệnh viện Đà Nẵng")
    assert (transfer.action, transfer.args) == ("transfer", {"to": "Bệnh viện Đà Nẵng"})
    assert command("QN-1 cách ly tại nhà").action == "home"
    assert command("QN-1 cach ly nha").action == "home"


def test_action_may_end_with_punctuation() -> None:
    assert command("QN-1 OK.").action == "check"
    assert command("QN-1 ghi chú: đã lấy mẫu").args == {"note": "đã lấy mẫu"}
    assert command("QN-1 transfer - Đà Nẵng").args == {"to": "Đà Nẵng"}


def test_argless_actions_keep_the_whole_line_but_take_no_arguments() -> None:
    result = command("QN-0049 dương tính   (test lần 2)")
    assert result.args == {}
    assert result.line == "QN-0049 dương tính   (test lần 2)"


def test_line_is_stripped_but_otherwise_as_written() -> None:
    result = command("   QN57 Theo dõi 12/02  \t")
    assert result.line == "QN57 Theo dõi 12/02"


# --- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("10/02/2020", "2020-02-10"),
        ("1/2/2020", "2020-02-01"),
        ("01/2/2020", "2020-02-01"),
        ("12/2/2020", "2020-02-12"),
        ("10/02/20", "2020-02-10"),
        ("10-02-2020", "2020-02-10"),
        ("10.02.2020", "2020-02-10"),
        ("2020-02-12", "2020-02-12"),
        ("2020-2-3", "2020-02-03"),
        ("12/02", "2020-02-12"),
        ("3/2", "2020-02-03"),
        ("today", "2020-02-14"),
        ("Today", "2020-02-14"),
        ("hôm nay", "2020-02-14"),
        ("Hôm Nay", "2020-02-14"),
        ("hom nay", "2020-02-14"),
        ("yesterday", "2020-02-13"),
        ("hôm qua", "2020-02-13"),
        ("từ 10/02", "2020-02-10"),
        ("từ ngày 10/02/2020", "2020-02-10"),
        ("ngày 10/02", "2020-02-10"),
        ("from 10/02", "2020-02-10"),
        ("since 2020-02-10", "2020-02-10"),
        ("29/02/2020", "2020-02-29"),
        ("10/02/2020.", "2020-02-10"),
    ],
)
def test_every_date_form(written: str, expected: str) -> None:
    for alias in ("home", "monitor", "facility", "theo dõi", "cách ly tập trung"):
        assert command(f"QN-42 {alias} {written}").args == {"date": expected}


@pytest.mark.parametrize(
    ("today", "written", "expected"),
    [
        (datetime.date(2020, 1, 2), "31/12", datetime.date(2019, 12, 31)),
        (datetime.date(2020, 1, 2), "2/1", datetime.date(2020, 1, 2)),
        (datetime.date(2019, 12, 31), "02/01", datetime.date(2020, 1, 2)),
        (datetime.date(2020, 3, 1), "29/02", datetime.date(2020, 2, 29)),
        (datetime.date(2021, 3, 1), "29/02", None),
        (datetime.date(2020, 2, 14), "31/02", None),
        (datetime.date(2020, 2, 14), "31/01", datetime.date(2020, 1, 31)),
        (datetime.date(2020, 7, 1), "30/06", datetime.date(2020, 6, 30)),
        (datetime.date(2020, 1, 1), "today", datetime.date(2020, 1, 1)),
        (datetime.date(2020, 1, 1), "hôm qua", datetime.date(2019, 12, 31)),
        (datetime.date(2020, 3, 1), "yesterday", datetime.date(2020, 2, 29)),
    ],
)
def test_dates_across_month_and_year_ends(
    today: datetime.date, written: str, expected: datetime.date | None
) -> None:
    assert parse_command_date(written, today) == expected


def test_dates_at_the_ends_of_the_calendar_are_refused_not_raised() -> None:
    assert parse_command_date("hôm qua", datetime.date.min) is None
    assert parse_command_date("01/01", datetime.date.max) is None
    assert parse_command_date("25/12", datetime.date.max) == datetime.date(9999, 12, 25)
    assert parse_command_date("31/12", datetime.date.min) is None
    assert parse_command_date("02/01", datetime.date.min) == datetime.date(1, 1, 2)


@pytest.mark.parametrize(
    "written",
    [
        "31/02/2020",
        "32/01",
        "00/01",
        "10/13",
        "10/02/202",
        "tomorrow",
        "mai",
        "hôm kia",
        "2020-13-01",
        "10/02 theo yêu cầu",
        "10/02/2020 10/03/2020",
        "thêm vài ngày",
    ],
)
def test_bad_dates_are_refused_with_a_reason(written: str) -> None:
    result = error(f"QN-42 home {written}")
    assert result.reason == "bad_date"
    assert result.line == f"QN-42 home {written}"
    assert written in result.message_en
    assert written in result.message_vi


@pytest.mark.parametrize(
    ("written", "temperature", "note"),
    [
        ("check", None, None),
        ("check 37.8 ho nhẹ", 37.8, "ho nhẹ"),
        ("check 38.2 sốt, đau đầu", 38.2, "sốt, đau đầu"),
        ("ok 36,9", 36.9, None),
        ("bình thường 36,5", 36.5, None),
        ("check 37", 37.0, None),
        ("check 37,5°C", 37.5, None),
        ("check 37.5 °C ho", 37.5, "ho"),
        ("check 37,5 độ ho", 37.5, "ho"),
        ("check 37,5độ", 37.5, None),
        ("check 38,2, sốt", 38.2, "sốt"),
        ("check ho nhẹ", None, "ho nhẹ"),
        ("ok   đã   gọi", None, "đã gọi"),
        ("check 30", 30.0, None),
        ("check 45.0", 45.0, None),
    ],
)
def test_check_temperature_and_note(
    written: str, temperature: float | None, note: str | None
) -> None:
    result = command(f"#59 {written}")
    assert result.action == "check"
    assert result.args == {"temperature": temperature, "note": note}
    if temperature is not None:
        assert isinstance(result.args["temperature"], float)


@pytest.mark.parametrize("written", ["98.6", "29.9", "45.1", "3.78", "37..5", "37,5,5", "2 lần"])
def test_bad_temperatures_are_refused(written: str) -> None:
    result = error(f"QN-1 check {written}")
    assert result.reason == "bad_temperature"
    assert written.split()[0] in result.message_en


def test_clear_missed_note_transfer_arguments() -> None:
    assert command("#46 clear không có yếu tố dịch tễ").args == {"note": "không có yếu tố dịch tễ"}
    assert command("#46 loại trừ").args == {"note": None}
    assert command("QN-0060 không liên lạc được").args == {"note": None}
    assert command("QN-0067 missed thuê bao  tắt máy").args == {"note": "thuê bao tắt máy"}
    assert command("QN-64 transfer Đà Nẵng").args == {"to": "Đà Nẵng"}
    assert command("QN65 chuyển TTYT huyện Bình Sơn").args == {"to": "TTYT huyện Bình Sơn"}
    assert command("#66 ghi chú đã lấy mẫu lần 1").args == {"note": "đã lấy mẫu lần 1"}


def test_arguments_are_nfc() -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "QN-1 ghi chú đã lấy mẫu")
    result = command(nfd)
    assert result.args == {"note": "đã lấy mẫu"}
    assert result.line == "QN-1 ghi chú đã lấy mẫu"


@pytest.mark.parametrize("line", ["QN-1 transfer", "QN-1 chuyển", "QN-1 ghi chú", "QN-1 note :"])
def test_missing_arguments_are_refused(line: str) -> None:
    assert error(line).reason == "missing_argument"


# --- errors and free text ---------------------------------------------------------------


def test_reference_without_known_action_is_an_error_not_a_note() -> None:
    result = error("QN-0042 hom 10/02", default_ref="QN-0061")
    assert result.reason == "unknown_action"
    assert "QN-0042" in result.message_en and "QN-0042" in result.message_vi
    assert error("QN-0042").reason == "unknown_action"


def test_foreign_reference_before_an_action_is_refused() -> None:
    result = error("HN-0042 home", default_ref="QN-0061")
    assert result.reason == "unknown_ref"
    assert "HN-0042" in result.message_en


def test_action_without_reference_or_subject_case() -> None:
    result = error("theo dõi 12/02")
    assert result.reason == "no_case"
    assert result.message_vi and result.message_en


def test_free_text_is_a_note_on_the_subject_case() -> None:
    assert command("Chị ấy đã về quê", default_ref="QN-0061") == Command(
        "QN-0061", "note", {"note": "Chị ấy đã về quê"}, "Chị ấy đã về quê"
    )


def test_free_text_without_subject_case_is_not_understood() -> None:
    result = error("Chào anh chị,")
    assert result.reason == "not_understood"
    assert result.line == "Chào anh chị,"


@pytest.mark.parametrize("line", ["", "   ", "\t", "--", "-- ", "_____", "***", ">"])
def test_lines_without_words_are_skipped(line: str) -> None:
    assert parse_command_line(line, prefix="QN", today=TODAY, default_ref="QN-1") is None


@pytest.mark.parametrize("bullet", ["- ", "* ", "• ", "1. ", "2) ", "10. ", "– "])
def test_list_bullets_are_tolerated(bullet: str) -> None:
    result = command(f"{bullet}QN-42 home 10/02")
    assert (result.ref, result.action, result.args) == ("QN-0042", "home", {"date": "2020-02-10"})
    assert result.line == f"{bullet}QN-42 home 10/02".strip()
    assert command(f"{bullet}ok 36,9", default_ref="QN-0061").args["temperature"] == 36.9


def test_numbers_that_are_not_bullets_stay() -> None:
    assert error("12.02 home").reason == "not_understood"


def test_other_prefix_is_configurable() -> None:
    assert command("dn-7 home", prefix="DN").ref == "DN-0007"
    assert error("QN-7 home", prefix="DN").reason == "unknown_ref"


# --- whole replies ----------------------------------------------------------------------


def test_parse_reply_each_line_stands_alone() -> None:
    text = "\n".join(
        [
            "Chào anh chị,",
            "",
            "QN-0043 cách ly tại nhà 10/02/2020",
            "QN-44 theo dõi 31/02",
            "QN-45 xyz",
            "ok",
            "#46 clear",
            "Cảm ơn.",
        ]
    )
    result = parse_reply(text, subject="Re: [QN] Bản tin 14/02/2020", prefix="QN", today=TODAY)
    assert result.commands == (
        Command("QN-0043", "home", {"date": "2020-02-10"}, "QN-0043 cách ly tại nhà 10/02/2020"),
        Command("QN-0046", "clear", {"note": None}, "#46 clear"),
    )
    assert [(item.line, item.reason) for item in result.errors] == [
        ("QN-44 theo dõi 31/02", "bad_date"),
        ("QN-45 xyz", "unknown_action"),
        ("ok", "no_case"),
    ]
    assert result.not_understood == ("Chào anh chị,", "Cảm ơn.")


def test_parse_reply_on_an_alert_notes_free_text() -> None:
    text = "cách ly tập trung hôm nay\nghi chú đã báo TTYT\nCảm ơn anh\nQN-0069 bình thường\n"
    result = parse_reply(text, subject="Re: [QN-0061] Cảnh báo", prefix="QN", today=TODAY)
    assert [command.to_json() for command in result.commands] == [
        {"ref": "QN-0061", "action": "facility", "args": {"date": "2020-02-14"},
         "line": "cách ly tập trung hôm nay"},
        {"ref": "QN-0061", "action": "note", "args": {"note": "đã báo TTYT"},
         "line": "ghi chú đã báo TTYT"},
        {"ref": "QN-0061", "action": "note", "args": {"note": "Cảm ơn anh"}, "line": "Cảm ơn anh"},
        {"ref": "QN-0069", "action": "check", "args": {"temperature": None, "note": None},
         "line": "QN-0069 bình thường"},
    ]  # fmt: skip
    assert result.errors == () and result.not_understood == ()


def test_parse_reply_of_nothing() -> None:
    assert parse_reply("", subject="", prefix="QN", today=TODAY) == ReplyParse((), (), ())
