"""Every sample e-mail of the shared corpus gives exactly its expected ``parse --json`` object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailtracker.parsing.message import parse_message

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FOLDERS = ("notifications", "replies")

if not CORPUS.is_dir():
    pytest.skip(f"sample corpus not found at {CORPUS}", allow_module_level=True)

SAMPLES = sorted(path for folder in FOLDERS for path in (CORPUS / folder).glob("*.eml"))


def test_corpus_is_not_empty() -> None:
    assert {path.parent.name for path in SAMPLES} == set(FOLDERS)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_sample_gives_expected_json(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    parsed = parse_message(path.read_bytes())
    assert parsed.to_json(path.name) == expected
    assert parsed.error is None


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_sample_header_facts(path: Path) -> None:
    parsed = parse_message(path.read_bytes())
    assert parsed.message_id and "<" not in parsed.message_id
    assert parsed.date is not None and parsed.date.tzinfo is not None
    assert parsed.sender and parsed.sender == parsed.sender.lower() and "@" in parsed.sender
    assert parsed.subject and "\n" not in parsed.subject and "\r" not in parsed.subject
    assert parsed.recipients and all("@" in address for address in parsed.recipients)
    if parsed.kind == "reply":
        assert parsed.in_reply_to and all("<" not in ref for ref in parsed.in_reply_to)


def test_reply_headers_in_detail() -> None:
    parsed = parse_message((CORPUS / "replies" / "01-gmail-vi-digest.eml").read_bytes())
    assert parsed.subject == "Re: [QN] Bản tin 14/02/2020: 3 quá hạn, 5 mới"
    assert parsed.sender == "epi@example.org"
    assert parsed.in_reply_to == ("digest.cdc.20200214.x1@mailtracker.example.org",)
    assert parsed.recipients == ("cdc-inbox+t.abc123xyz@example.org", "cdc-inbox@example.org")
    assert parsed.date is not None and parsed.date.isoformat() == "2020-02-14T08:15:42+07:00"
