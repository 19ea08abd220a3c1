"""Rotating ``secret_key``: with the old key in ``previous_secret_keys``, replies to mail sent
before the rotation are still accepted until their tokens expire; without it they are refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from reply_support import EPI, NOW, SENT, case, config_data, outbox, reply, seed_cases

from mailtracker.config import Config, ConfigError, config_from_dict
from mailtracker.services.digest import DigestService
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import open_database

ENVIRON = {"OLD_KEY": "old-secret", "NEW_KEY": "new-secret", "MT_TEST_IMAP": "pw"}


def config(url: str, key: str, previous: list[str] | None = None) -> Config:
    data: dict[str, Any] = config_data(url)
    data["tracker"]["secret_key"] = f"env:{key}"
    if previous is not None:
        data["tracker"]["previous_secret_keys"] = previous
    return config_from_dict(data, environ=ENVIRON)


@pytest.mark.parametrize(
    ("previous", "status", "refusal"),
    [
        (["env:OLD_KEY"], "home_isolation", None),
        (None, "new", "token_bad_signature"),
        (["env:MT_TEST_IMAP"], "new", "token_bad_signature"),
    ],
)
def test_replies_to_mail_signed_with_the_previous_key(
    tmp_path: Path, previous: list[str] | None, status: str, refusal: str | None
) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    db = open_database(url)
    before = config(url, "OLD_KEY")
    seed_cases(Ingestor(db, before))
    assert DigestService(before, db).send("cdc", NOW.date(), NOW)
    (digest,) = outbox(db, "digest:")
    rotated = config(url, "NEW_KEY", previous)
    answer = reply(digest.raw, "QN-0001 home", sender=EPI, date=SENT)
    later = NOW + dt.timedelta(hours=1)
    ingestor = Ingestor(db, rotated, reply_handler=ReplyService(rotated))
    ingestor.import_messages("cdc", [("reply", answer)], now=later)
    ingestor.process_pending(now=later)
    found = case(db, "QN-0001")
    db.dispose()
    assert found.status == status
    codes = [event.details.get("code") for event in found.events if event.action == "refused"]
    assert codes == ([refusal] if refusal else [])


def test_an_old_token_still_expires_after_reply_token_days(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    db = open_database(url)
    before = config(url, "OLD_KEY")
    seed_cases(Ingestor(db, before))
    assert DigestService(before, db).send("cdc", NOW.date(), NOW)
    (digest,) = outbox(db, "digest:")
    rotated = config(url, "NEW_KEY", ["env:OLD_KEY"])
    late = NOW + dt.timedelta(days=15)
    ingestor = Ingestor(db, rotated, reply_handler=ReplyService(rotated))
    ingestor.import_messages("cdc", [("reply", reply(digest.raw, "QN-0001 home"))], now=late)
    ingestor.process_pending(now=late)
    found = case(db, "QN-0001")
    db.dispose()
    assert found.status == "new"
    assert [e.details.get("code") for e in found.events if e.action == "refused"] == [
        "token_expired"
    ]


def test_previous_secret_keys_must_be_an_array_of_references() -> None:
    with pytest.raises(ConfigError, match="previous_secret_keys"):
        config("sqlite://", "NEW_KEY", "env:OLD_KEY")  # type: ignore[arg-type]
    literal = config("sqlite://", "NEW_KEY", ["an-old-literal-key"])
    assert any("previous_secret_keys.0" in warning for warning in literal.warnings)
    assert [s.reveal() for s in literal.tracker.previous_secret_keys] == ["an-old-literal-key"]
