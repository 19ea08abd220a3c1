"""Processing in batches: one transaction per batch, a savepoint per message, capped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from store_support import make_config, notification

from mailtracker.config import Config
from mailtracker.services import ingest
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseEvent, CaseSource, Message

NOW = dt.datetime(2020, 2, 12, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def config(database_url: str) -> Config:
    return make_config(database_url)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = open_database(database_url)
    yield db
    db.dispose()


def people(total: int) -> list[tuple[int, bytes]]:
    return [
        (uid, notification(report_id=f"SKVN-{uid}", phone=f"09{uid:08d}"))
        for uid in range(1, total + 1)
    ]


def counts(db: Database) -> tuple[int, int, int, int]:
    """(cases, sources, events, messages still pending)."""
    with db.session(read_only=True) as session:
        return (
            session.scalar(select(func.count()).select_from(Case)) or 0,
            session.scalar(select(func.count()).select_from(CaseSource)) or 0,
            session.scalar(select(func.count()).select_from(CaseEvent)) or 0,
            session.scalar(select(func.count()).where(Message.processed_at.is_(None))) or 0,
        )


def failing_on(uids: set[int]) -> ingest.CaseHandler:
    def handler(
        session: Session, case: Case, message: Message, created: bool, now: dt.datetime
    ) -> None:
        if message.uid in uids:
            raise RuntimeError("outbox unavailable")

    return handler


def test_a_failing_message_in_a_batch_is_quarantined_and_the_others_commit(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH", 4)
    ingestor = Ingestor(database, config, case_handler=failing_on({3, 6}))
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(10), now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.processed, len(result.created), result.failed) == (8, 8, 2)
    assert counts(database) == (8, 8, 8, 0)
    with database.session(read_only=True) as session:
        rows = session.execute(select(Message.uid, Message.quarantined, Message.error)).all()
    failed = {uid: error for uid, quarantined, error in rows if quarantined}
    assert failed == {3: "processing failed: RuntimeError", 6: "processing failed: RuntimeError"}


def test_a_batch_cut_short_by_its_time_cap_leaves_the_rest_pending_for_the_next(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH_SECONDS", 0.0)
    ingestor = Ingestor(database, config)
    batches: list[int] = []
    process_batch = Ingestor._process_batch

    def counting(self: Ingestor, ids: Sequence[int], now: dt.datetime) -> object:
        done, result = process_batch(self, ids, now)
        batches.append(done)
        return done, result

    monkeypatch.setattr(Ingestor, "_process_batch", counting)
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(5), now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert batches == [1, 1, 1, 1, 1]  # one message each: nothing else was claimed for good
    assert sorted(result.created) == [f"QN-{n:04d}" for n in range(1, 6)]
    assert counts(database) == (5, 5, 5, 0)


def test_when_a_batch_transaction_fails_its_messages_are_processed_one_by_one(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor = Ingestor(database, config)
    sources_of = Ingestor._sources_of
    calls: list[int] = []

    def failing_once(session: Session, ids: Sequence[int]) -> object:
        calls.append(len(ids))
        if len(calls) == 1:
            session.flush()
            raise ConnectionError("server closed the connection")
        return sources_of(session, ids)

    monkeypatch.setattr(Ingestor, "_sources_of", staticmethod(failing_once))
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(3), now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert calls == [3, 1, 1, 1]
    assert (result.processed, len(result.created), result.failed) == (3, 3, 0)
    assert counts(database) == (3, 3, 3, 0)


def test_batches_are_capped_by_count_and_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH", 3)
    monkeypatch.setattr(ingest, "PROCESS_BATCH_BYTES", 100)
    pending = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 95), (6, 500), (7, 5), (8, 5)]
    assert list(Ingestor._batches(pending)) == [[1, 2, 3], [4], [5], [6], [7, 8]]
