"""Processing in batches: one transaction per batch, capped; a backlog parsed by workers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from store_support import make_config, notification

from mailtracker.config import Config
from mailtracker.parsing.message import ParsedMessage
from mailtracker.parsing.pool import ParsePool
from mailtracker.services import ingest
from mailtracker.services.ingest import Ingestor
from mailtracker.store.db import Database
from mailtracker.store.models import Case, CaseEvent, CaseSource, Message

NOW = dt.datetime(2020, 2, 12, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def config(database_url: str) -> Config:
    return make_config(database_url)


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

    def counting(self: Ingestor, ids: Sequence[int], *args: Any) -> object:
        done, result = process_batch(self, ids, *args)
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


def test_a_stop_leaves_the_batches_not_started_pending(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH", 4)
    stop = threading.Event()

    def stop_at_the_first_case(
        session: Session, case: Case, message: Message, created: bool, now: dt.datetime
    ) -> None:
        stop.set()

    ingestor = Ingestor(database, config, case_handler=stop_at_the_first_case)
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(10), now=NOW)
    first = ingestor.process_pending(now=NOW, stop=stop)
    assert (first.processed, counts(database)) == (4, (4, 4, 4, 6))
    rest = Ingestor(database, config).process_pending(now=NOW)
    assert (rest.processed, counts(database)) == (6, (10, 10, 10, 0))


# -- a backlog parsed by worker processes -------------------------------------------------------


def with_workers(config: Config, workers: int) -> Config:
    return dataclasses.replace(
        config, tracker=dataclasses.replace(config.tracker, parse_workers=workers)
    )


def parsing_here_fails(raw: bytes) -> ParsedMessage:
    raise AssertionError("parsed in the main process")


def test_a_backlog_is_parsed_by_the_workers_with_the_same_cases(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH", 4)
    monkeypatch.setattr(ingest, "PARSE_AHEAD_MIN", 1)
    ingestor = Ingestor(database, with_workers(config, 2))
    ingestor.parse = parsing_here_fails  # every message must come parsed from a worker
    repeated = [(uid + 10, raw) for uid, raw in people(3)]  # the same people again: merged
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(10) + repeated, now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.processed, result.failed, result.quarantined) == (13, 0, 0)
    assert sorted(result.created) == [f"QN-{n:04d}" for n in range(1, 11)]
    assert sorted(result.merged) == ["QN-0001", "QN-0002", "QN-0003"]
    assert counts(database) == (10, 13, 13, 0)


def test_a_small_backlog_is_parsed_in_the_main_process(database: Database, config: Config) -> None:
    ingestor = Ingestor(database, with_workers(config, 2))
    ingestor.parse = parsing_here_fails
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(3), now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert (result.processed, result.failed) == (0, 3)  # below PARSE_AHEAD_MIN: no workers


def test_when_the_workers_are_killed_the_main_process_parses_the_rest(
    database: Database, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "PROCESS_BATCH", 5)
    monkeypatch.setattr(ingest, "PARSE_AHEAD_MIN", 1)
    killed: list[int] = []
    submit = ParsePool.submit

    def submit_then_kill(pool: ParsePool, messages: Sequence[tuple[int, bytes]]) -> None:
        submit(pool, messages)
        if messages[0][0] > 5 and not killed:  # the second batch: its workers die
            for process in list(pool._executor._processes.values()):  # type: ignore[union-attr]
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)

    monkeypatch.setattr(ParsePool, "submit", submit_then_kill)
    ingestor = Ingestor(database, with_workers(config, 2))
    ingestor.store_batch(config.units[0].mailboxes[0], 1, people(15), now=NOW)
    result = ingestor.process_pending(now=NOW)
    assert killed
    assert (result.processed, len(result.created), result.failed) == (15, 15, 0)
    assert counts(database) == (15, 15, 15, 0)
